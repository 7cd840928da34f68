"""Bad input is refused before anything is reserved: a privacy loss too small to tell anything (or not
a finite positive number), query text over the size limit or not valid text, out-of-range numbers,
nesting too deep to read, clashing column names, a scenario without its chart package. Each is a
one-line BadInput, and no node's ledger holds a reservation for it (not even a released one) nor its
register an entry.

Some requests are sent as raw messages, past the analyst client's own checks, so that the
coordinator's checks are tested too (a modified client must meet the same refusals)."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fedlink
from fedlink.language.sql import MAX_QUERY_CHARS
from fedlink.protocol import rpc
from fedlink.protocol.tasks import ModelRequest, PrivacyLoss, QueryRequest
from fedlink_tools.scenarios import run_scenario

from ..conftest import InProcessFederation, connect_analyst, node_config, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
NODES = ["charity_north", "charity_south", "dwp", "nhs"]
PROJECT = "homelessness-outcomes"
COUNT = "SELECT outcome, COUNT(*) AS n FROM support_episodes GROUP BY outcome"
LINKED = "SELECT COUNT(*) AS n FROM support_episodes LINK dwp.claims"
FORMULA = "outcome = 'housed' ~ duration_days"


@pytest.fixture(scope="module")
def federation() -> Iterator[InProcessFederation]:
    fed = start_federation(NODES)
    yield fed
    fed.stop()


def _state(fed: InProcessFederation) -> dict[str, tuple[int, int]]:
    """Per node: every reservation its ledger ever made (any state) and its register's entries."""
    out = {}
    for name in NODES:
        config = node_config(name, fed.address, fed.state)
        with sqlite3.connect(config.ledger_path()) as db:
            reservations = db.execute("SELECT COUNT(*) FROM reservation").fetchone()[0]
        out[name] = (reservations, len(config.register_path().read_text().splitlines()))
    return out


def _raw(client: fedlink.Federation, kind: str, body: str) -> None:
    """Send a request as a modified client could, skipping the analyst client's checks."""
    client._call(kind, body.encode())


def _cases(client: fedlink.Federation) -> list[tuple[str, object, str]]:
    """(what, call, the refusal's text): every call must be refused with a BadInput naming the problem."""
    deep = "SELECT COUNT(*) FROM support_episodes WHERE " + "NOT " * 3000 + "start_year = 2019"
    huge = "SELECT COUNT(*) FROM support_episodes WHERE " + " OR ".join(["start_year = 2019"] * 6000)
    assert len(huge) > MAX_QUERY_CHARS
    q = lambda sql, **kw: lambda: client.query(sql, project=PROJECT, **kw)  # noqa: E731
    return [
        ("epsilon 1e-6", q(COUNT, epsilon=1e-6), "too small to tell anything"),
        ("epsilon 1e-9", q(COUNT, epsilon=1e-9), "too small to tell anything"),
        ("epsilon 1e-300", q(COUNT, epsilon=1e-300), "too small to tell anything"),
        ("rho 1e-300", q(COUNT, rho=1e-300), "too small to tell anything"),
        ("dp epsilon 1e-6", q(COUNT, epsilon=1e-6, pet="dp"), "too small to tell anything"),
        ("linked epsilon 1e-9", q(LINKED, epsilon=1e-9), "too small to tell anything"),
        (
            "model rho 1e-300",
            lambda: client.fit(FORMULA, table="support_episodes", project=PROJECT, rho=1e-300),
            "too small to tell anything",
        ),
        ("epsilon nan", q(COUNT, epsilon=float("nan")), "positive, finite number"),
        ("epsilon inf", q(COUNT, epsilon=float("inf")), "positive, finite number"),
        ("epsilon -1", q(COUNT, epsilon=-1.0), "positive, finite number"),
        (
            "model rho nan",
            lambda: client.fit(FORMULA, table="support_episodes", project=PROJECT, rho=float("nan")),
            "positive, finite number",
        ),
        ("oversize query", q(huge, epsilon=1.0), "more than the limit"),
        ("not text", q("SELECT COUNT(*) FROM support_episodes WHERE region = '\udcff'", epsilon=1.0), "not valid"),
        ("1e400", q("SELECT COUNT(*) FROM support_episodes WHERE start_year > 1e400", epsilon=1.0), "out of range"),
        ("1e309", q("SELECT AVG(duration_days) FROM support_episodes WHERE start_year < 1e309", epsilon=1.0), "range"),
        ("deep", q(deep, epsilon=1.0), "nests"),
        ("same name", q("SELECT COUNT(*) AS a, SUM(duration_days) AS a FROM support_episodes", epsilon=1.0), "named"),
        (
            "model 1e400",
            lambda: client.fit("outcome = 1e400 ~ duration_days", table="support_episodes", project=PROJECT, rho=0.5),
            "out of range",
        ),
        (
            "raw oversize query",
            lambda: _raw(client, rpc.QUERY, json.dumps({"sql": huge, "project": PROJECT, "loss": {"epsilon": 1.0}})),
            "more than the limit",
        ),
        (
            "raw epsilon 1e-9",
            lambda: _raw(
                client,
                rpc.QUERY,
                QueryRequest(sql=COUNT, project=PROJECT, loss=PrivacyLoss(epsilon=1e-9), pet="dp").model_dump_json(),
            ),
            "too small to tell anything",
        ),
        (
            "raw model rho 1e-300",
            lambda: _raw(
                client,
                rpc.MODEL,
                ModelRequest(
                    formula=FORMULA, table="support_episodes", project=PROJECT, loss=PrivacyLoss(rho=1e-300)
                ).model_dump_json(),
            ),
            "too small to tell anything",
        ),
    ]


def test_bad_input_is_refused_before_anything_is_reserved(federation: InProcessFederation, workdir: Path) -> None:
    client = connect_analyst(federation.address, workdir)
    before = _state(federation)
    for what, call, text in _cases(client):
        with pytest.raises(fedlink.BadInput) as refused:
            call()  # type: ignore[operator]
        assert text in refused.value.message, (what, refused.value.message)
        assert len(refused.value.message) < 400 and "\n" not in refused.value.message, what
        assert _state(federation) == before, f"{what} reached a node's ledger or register"


def test_the_floor_lets_a_useful_loss_through(federation: InProcessFederation, workdir: Path) -> None:
    """The refusal names a loss that clears the floor, and a query at that loss is answered."""
    client = connect_analyst(federation.address, workdir)
    with pytest.raises(fedlink.BadInput, match=r"declare epsilon (\S+) or more") as refused:
        client.query(COUNT, project=PROJECT, epsilon=1e-4)
    least = float(refused.value.message.rsplit("declare epsilon ", 1)[1].split()[0])
    assert 1e-4 < least < 1.0
    res = client.query(COUNT, project=PROJECT, epsilon=least)
    assert res.privacy_loss["charity_north"]["epsilon"] == least


def test_a_scenario_missing_its_chart_package_spends_nothing(
    federation: InProcessFederation, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, `fedlink scenario` once linked and queried (spending at every node) and then
    failed to draw; now it names the extra before its first query."""
    client = connect_analyst(federation.address, workdir)
    before = _state(federation)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(fedlink.BadInput, match=r"needs matplotlib, .* pip install 'fedlink\[charts\]'"):
        run_scenario(client, "homelessness", tmp_path)
    assert _state(federation) == before
