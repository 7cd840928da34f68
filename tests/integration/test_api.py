"""The analyst Python API: its docstring examples run against a real federation, results convert to
pandas, Polars and dicts, and its errors are the ones the CLI reports."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import fedlink

from ..conftest import InProcessFederation, connect_analyst
from ..unit.test_doctests import NEED_A_FEDERATION


@pytest.mark.parametrize("name", sorted(NEED_A_FEDERATION))
def test_docstring_examples_run_against_a_federation(name: str, federation: InProcessFederation, workdir: Path) -> None:
    module = importlib.import_module(name)
    globs = {
        "fedlink": fedlink,
        "fed": connect_analyst(federation.address, workdir),
        "address": federation.address,
        "pki": workdir / "pki",
    }
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    outcome = doctest.testmod(module, extraglobs=globs, optionflags=flags, report=True)
    assert outcome.attempted >= 5 and outcome.failed == 0


def test_results_convert_to_frames_and_dicts(federation: InProcessFederation, workdir: Path) -> None:
    fed = connect_analyst(federation.address, workdir)
    res = fed.query(
        "SELECT region, COUNT(*) AS n, AVG(duration_days) AS days FROM support_episodes GROUP BY region",
        project="homelessness-outcomes",
        epsilon=2.0,
    )
    frame = res.to_pandas()
    assert list(frame.columns) == [
        "region",
        "n",
        "n_lower",
        "n_upper",
        "days",
        "days_lower",
        "days_upper",
        "suppressed",
    ]
    assert len(frame) == 9
    polars = res.to_polars()
    assert polars.shape == (9, 8) and polars.columns == list(frame.columns)
    doc = res.to_dict()
    assert doc["project"] == "homelessness-outcomes" and doc["confidence"] == 0.95
    assert set(doc["privacy_loss"]) == {"charity_north", "charity_south"} and doc["disclosure"]["round_to"] == 5
    html = res._repr_html_()
    assert html.count("<tr>") == 10 and "95%" in html and "ε=2" in html
    budget = fed.budget().to_pandas()
    assert {"node", "project", "dataset", "rho_remaining", "max_epsilon"} <= set(budget.columns)
    queries = fed.register().to_pandas()
    assert queries.iloc[-1]["query"] == res.sql and queries.iloc[-1]["epsilon"] == 4.0


def test_api_errors_are_the_cli_errors(federation: InProcessFederation, workdir: Path) -> None:
    fed = connect_analyst(federation.address, workdir)
    with pytest.raises(fedlink.QueryError) as info:
        fed.query("SELECT * FROM pupils", project="deprivation-mental-health", epsilon=1.0)
    assert isinstance(info.value, fedlink.FedlinkError) and info.value.exit_code == 2
    assert info.value.message.startswith("SELECT * would release rows")
