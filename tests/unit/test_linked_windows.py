"""A linked query's chain run over the spine a window at a time gives exactly the cells of the chain run
over the whole spine at once, decrypted (no noise); windows out of order or twice are refused, since a
window counted twice would count its people twice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlink.errors import Fault
from fedlink.language.linked_query import plan_linked
from fedlink.node.linked_query import ChainCarry, NodeVectors, run_step
from fedlink.pets.chain import ChainKeys, ChainParams
from fedlink.plan.linked_query import LinkedPlan
from fedlink.protocol.tasks import LinkedOutput, LinkedStep, PrivacyLoss

from .test_linked_sql import CAT

SQL = (
    "SELECT dfe.pupils.region, COUNT(*) AS n, SUM(dfe.pupils.score) AS total FROM dfe.pupils LINK dwp.claims "
    "GROUP BY dfe.pupils.region"
)


def _vectors(size: int, seed: int) -> dict[str, NodeVectors]:
    rng = np.random.default_rng(seed)
    score = np.where(rng.random(size) < 0.9, rng.uniform(0, 90, size), np.nan)
    pupils = NodeVectors(
        present=(rng.random(size) < 0.6).astype(np.int64),
        cell=rng.integers(-1, 3, size),
        values={"dfe.pupils.score": score},
    )
    claims = NodeVectors(present=(rng.random(size) < 0.5).astype(np.int64))
    return {"dfe": pupils, "dwp": claims}


def _chain(
    plan: LinkedPlan, keys: ChainKeys, vectors: dict[str, NodeVectors], size: int, window_chunks: int
) -> tuple[dict[str, list[int]], dict[str, float]]:
    params = ChainParams.for_chain(plan.multiplications, sums=plan.sums)
    windows = math.ceil(math.ceil(size / params.slots) / window_chunks) if window_chunks else 1
    carries = {node: ChainCarry() for node in plan.nodes}
    output, blobs = LinkedOutput(streams={}, chunks=0), []
    for window in range(windows):
        output, blobs = LinkedOutput(streams={}, chunks=0), []
        for position, node in enumerate(plan.nodes):
            step = LinkedStep(
                query_id="q",
                role="first" if position == 0 else "last" if position == len(plan.nodes) - 1 else "middle",
                public_key=keys.public_key(),
                spine_id="s",
                spine_size=size,
                streams=output.streams,
                chunks=output.chunks,
                units=output.units,
                window=window,
                windows=windows,
                window_chunks=window_chunks,
            )
            output, blobs = run_step(plan, node, step, vectors[node], blobs, PrivacyLoss(), True, carries[node])
    totals, at = {}, 0
    for key, count in output.streams.items():
        totals[key] = [keys.total(blob) for blob in blobs[at : at + count]]
        at += count
    return totals, dict(output.units)


def test_a_chain_run_window_by_window_gives_the_cells_of_the_whole_spine() -> None:
    plan = plan_linked(SQL, CAT)
    params = ChainParams.for_chain(plan.multiplications, sums=plan.sums)
    size = 3 * params.slots + 1234  # four ciphertexts per stream, the last one part full
    vectors = _vectors(size, seed=5)
    keys = ChainKeys(params)
    whole, units = _chain(plan, keys, vectors, size, window_chunks=0)
    for window_chunks in (1, 3):
        assert _chain(plan, keys, vectors, size, window_chunks) == (whole, units)
    # and both are the plaintext totals: per region, people present at both nodes, and their scores
    pupils, claims = vectors["dfe"], vectors["dwp"]
    both = (pupils.present * claims.present).astype(bool)
    assert whole["rows:*"] == [int((both & (pupils.cell == g)).sum()) for g in range(3)]
    score = pupils.values["dfe.pupils.score"]
    scaled = np.where(np.isnan(score), 0, np.rint(np.nan_to_num(score) / units["sum:dfe.pupils.score"]))
    assert whole["sum:dfe.pupils.score"] == [int(scaled[both & (pupils.cell == g)].sum()) for g in range(3)]
    assert sum(whole["rows:*"]) > 1000


@pytest.mark.parametrize("windows_sent", [[1], [0, 0], [0, 2]], ids=["skipped", "twice", "out-of-order"])
def test_a_window_out_of_order_or_twice_is_refused(windows_sent: list[int]) -> None:
    plan = plan_linked(SQL, CAT)
    params = ChainParams.for_chain(plan.multiplications, sums=plan.sums)
    size = 3 * params.slots
    keys = ChainKeys(params)
    vectors = _vectors(size, seed=6)
    carry = ChainCarry()
    for i, window in enumerate(windows_sent):
        step = LinkedStep(
            query_id="q",
            role="first",
            public_key=keys.public_key(),
            spine_id="s",
            spine_size=size,
            window=window,
            windows=3,
            window_chunks=1,
        )
        if i < len(windows_sent) - 1:
            run_step(plan, "dfe", step, vectors["dfe"], [], PrivacyLoss(), True, carry)
        else:
            with pytest.raises(Fault, match="a window is run once, in order"):
                run_step(plan, "dfe", step, vectors["dfe"], [], PrivacyLoss(), True, carry)
