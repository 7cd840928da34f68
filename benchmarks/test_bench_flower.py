"""Query latency over Flower's deployment runtime next to fedlink's own gRPC transport, in the same run.

The same he+dp query (``COUNT(*)`` and a clamped ``SUM`` by region over the homelessness charity's two
branches, epsilon 0.5 per node per query) from the analyst's side, end to end:

- ``grpc``: fedlink's transport; the coordinator and both nodes as processes (``fedlink coordinator
  serve`` / ``fedlink node serve``), mTLS gRPC on loopback; the analyst's ``Federation.query``.
- ``flower``: a SuperLink and two SuperNodes as processes on loopback (insecure mode, as in the e2e
  test), fedlink's ServerApp and ClientApp; the analyst's ``FlowerFederation.query``, which hands the
  request to ``flwr run`` and reads the streamed answer. Flower starts a ServerApp process per run and
  a ClientApp process per message, which is where its seconds go.

Both answer with the same encrypted protocol (TenSEAL BFV/CKKS, DP noise added by the nodes), so the
ratio flower / grpc is the cost of the transport and its process model. The demo federation's
synthetic population (3,000 people by default, ``FEDLINK_BENCH_FLOWER_PEOPLE``) is made once per
run. Flower's SuperNodes pull messages every 3 s and its ServerApp polls for replies every 3 s, and a
query takes three Grid rounds (catalogue, reserve, execute), so a Flower query costs tens of seconds:
the quick set times one Flower query, ``FEDLINK_BENCH_LARGE=1`` five after a warm-up::

    pytest benchmarks/test_bench_flower.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_flower.py --benchmark-only
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from federation import REPORT
from timing import timed

pytest.importorskip("flwr", reason="Flower is not installed (pip install 'fedlink[flower]')")

import fedlink
from fedlink_tools.demo import ANALYST, LocalFederation, federation_dir, prepare_demo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.flower_deploy import FlowerDeployment

PEOPLE = int(os.environ.get("FEDLINK_BENCH_FLOWER_PEOPLE", "3000"))
NODES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
SQL = "SELECT region, COUNT(*) AS n, SUM(duration_days) AS days FROM support_episodes GROUP BY region"
#: Large enough to clear the privacy-loss floor at 3,000 people (which refuses 0.05), small enough that all
#: the rounds fit the demo caps (rho 5: 17 queries at rho 0.125 each).
EPSILON = 0.5
LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
#: (rounds, warm-up rounds) per transport: a Flower query takes tens of seconds, so the quick set times one
ROUNDS = {"grpc": (10, 1), "flower": (5, 1) if LARGE else (1, 0)}
_MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench-flower") / "federation"
    prepare_demo(folder, people=PEOPLE, seed=7)
    return folder


@pytest.fixture(scope="module")
def over_grpc(workdir: Path) -> Iterator[fedlink.Federation]:
    federation = LocalFederation(workdir, federation_dir(), NODES)
    federation.start()
    try:
        pki = workdir / "pki"
        yield fedlink.connect(
            federation.address,
            cert=pki / f"analyst-{ANALYST}.crt",
            key=pki / f"analyst-{ANALYST}.key",
            ca=pki / "ca.crt",
            project=PROJECT,
        )
    finally:
        federation.stop()


@pytest.fixture(scope="module")
def over_flower(workdir: Path) -> Iterator[Any]:
    from fedlink.flower import FlowerFederation

    with FlowerDeployment(workdir / "flower", workdir, NODES) as deployment:
        yield FlowerFederation(
            deployment.superlink,
            analyst=ANALYST,
            projects=federation_dir() / "coordinator" / "projects.toml",
            register=deployment.root / "coordinator" / "register.jsonl",
            insecure=True,
        )


@pytest.mark.parametrize("transport", ["grpc", "flower"])
def test_query_latency(transport: str, request: pytest.FixtureRequest, benchmark: Any) -> None:
    client = request.getfixturevalue(f"over_{transport}")
    benchmark.group = "transport: he+dp query round trip"
    benchmark.extra_info.update(
        {"transport": transport, "pet": "he+dp", "nodes": len(NODES), "people": PEOPLE, "epsilon": EPSILON}
    )
    rounds, warmup = ROUNDS[transport]
    result = benchmark.pedantic(
        lambda: client.query(SQL, project=PROJECT, epsilon=EPSILON), rounds=rounds, warmup_rounds=warmup
    )
    # a real answer, not an error: every region the charity's branches serve, each with its interval
    rows = result.rows()
    assert len(rows) >= 5 and result.privacy_loss == {n: {"epsilon": EPSILON, "rho": 0.0} for n in NODES}
    assert all(r["n"] is None or r["n"] >= 0 for r in rows)
    if (stats := timed(benchmark)) is None:
        return
    _MEDIANS[transport] = stats.median
    if len(_MEDIANS) == 2:
        ratio = _MEDIANS["flower"] / _MEDIANS["grpc"]
        benchmark.extra_info["flower_over_grpc"] = ratio
        REPORT.lines.append(
            f"Query round trip over Flower {_MEDIANS['flower']:.2f} s vs fedlink's gRPC "
            f"{_MEDIANS['grpc']:.3f} s (median; {ratio:.0f}x)"
        )
