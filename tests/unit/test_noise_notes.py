"""What noise and suppression did, said in one line where it matters: suppressed cells (how many and
why, never their values), match rates that noise pushed to 0 or "—" (with the noise's scale), quality
rows the noise swamps; and the demo's second-shell commands."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

import fedlink
from fedlink.cli import render
from fedlink.plan.aggregate import Aggregate, AggregatePlan, GroupKey
from fedlink.plan.disclosure import DisclosurePolicy
from fedlink.protocol.linkage import EstimatedCounts, EstimatedPair, EstimatedQuality, LinkageQuality, PairMatch
from fedlink.protocol.results import build_result
from fedlink.protocol.tasks import PrivacyLoss
from fedlink_tools.demo import SECOND_SHELL_QUERY, second_shell

NOTE = re.compile(
    r"^(\d+) of (\d+) cells suppressed by disclosure control: their group's noisy count is below 10; "
    r"no value is shown for them$"
)


def _printed(draw: object) -> str:
    console = render.console()
    console.file = io.StringIO()
    console.width = 400
    draw(console)  # type: ignore[operator]
    return console.file.getvalue()


def _released(counts: list[float], with_mean: bool = False) -> fedlink.Result:
    """A release of these noisy per-group counts (and means of 50) through disclosure control."""
    groups = tuple(f"group{i}" for i in range(len(counts)))
    aggregates = [Aggregate(func="count", label="n")]
    if with_mean:
        aggregates.append(Aggregate(func="avg", column="x", label="mean", lower=0.0, upper=100.0))
    plan = AggregatePlan(
        table="t",
        nodes=("a",),
        aggregates=tuple(aggregates),
        group_by=(GroupKey(column="g", categories=groups),),
        sql="SELECT g, COUNT(*) AS n FROM t GROUP BY g",
    )
    noisy = np.array(counts)
    raw = build_result(
        plan,
        {"rows:*": noisy, "count:x": noisy, "sum:x": noisy * 50},
        query_id="q",
        project="p",
        pet="dp",
        noise={},
        noiseless=False,
        privacy_loss={"a": PrivacyLoss(epsilon=1.0)},
        policy=DisclosurePolicy(),
    )
    return fedlink.Result(raw)


def test_one_line_says_how_many_cells_were_suppressed_and_why_and_shows_none_of_them() -> None:
    res = _released([500.0, 7.0, 3.0, 250.0])
    shown = _printed(lambda c: render.result(c, res, "table"))
    notes = [line for line in shown.splitlines() if NOTE.match(line)]
    assert [NOTE.match(n).groups() for n in notes] == [("2", "4")]  # type: ignore[union-attr]
    suppressed_lines = [line for line in shown.splitlines() if "group1" in line or "group2" in line]
    assert len(suppressed_lines) == 2
    for line in suppressed_lines:  # no digit but the group's name and the threshold
        assert "suppressed (noisy count below 10)" in line
        assert not re.search(r"\d", re.sub(r"group\d|below 10", "", line)), line
    cells = [cell for row in res.to_dict()["rows"] for cell in [row["n"]] if cell["suppressed"]]
    assert cells == [{"value": None, "lower": None, "upper": None, "suppressed": "noisy count below 10"}] * 2
    assert "2 of 4 cells suppressed (see .notes)" in repr(res)


def test_the_count_covers_every_aggregate_of_a_suppressed_group() -> None:
    res = _released([400.0, 2.0], with_mean=True)
    assert [NOTE.match(n).groups() for n in res.notes if NOTE.match(n)] == [("2", "4")]  # type: ignore[union-attr]
    assert res.suppressed_cells() == 2


def test_no_suppression_note_when_nothing_is_suppressed() -> None:
    res = _released([500.0, 60.0, 12.0])
    shown = _printed(lambda c: render.result(c, res, "table"))
    assert "suppressed" not in shown and "suppressed" not in repr(res)
    assert res.suppressed_cells() == 0


def test_a_whole_result_below_the_minimum_cohort_says_so_in_one_line() -> None:
    res = _released([4.0, 3.0])
    assert res.suppressed_cells() == 2
    [note] = [n for n in res.notes if "suppressed" in n]
    assert note == (
        "all cells suppressed by disclosure control: the cohort's noisy count is below the minimum of 10; "
        "no value is shown"
    )


def _quality(people: dict[str, float], pairs: list[PairMatch], scale: float = 80.0) -> LinkageQuality:
    return LinkageQuality(spine_id="s", epsilon=0.1, scale=scale, people=people, pairs=tuple(pairs), note="DP counts")


def test_match_rates_that_noise_pushed_to_zero_get_a_note_with_the_noise_scale() -> None:
    quality = _quality(
        {"charity": 0.0, "dwp": 5800.0, "nhs": 14983.0},
        [
            PairMatch(a="charity", b="dwp", rate_a=None, rate_b=92 / 5800, overlap=92.0),
            PairMatch(a="charity", b="nhs", rate_a=None, rate_b=0.0, overlap=0.0),
            PairMatch(a="dwp", b="nhs", rate_a=4364 / 5800, rate_b=4364 / 14983, overlap=4364.0),
        ],
    )
    shown = _printed(lambda c: render.match_rates(c, quality))
    [note] = [line for line in shown.splitlines() if line.startswith("note:")]
    assert note.startswith("note: 3 of 6 match rates read 0.0% or —; ")
    assert "Laplace noise of scale 80 on each count (95% of draws within ±240)" in note
    summary = _linked(quality).linkage_summary()
    assert "charity->nhs —, nhs->charity 0%" in summary and "scale 80" in summary


def test_match_rates_clear_of_the_noise_get_no_note() -> None:
    quality = _quality(
        {"dwp": 5800.0, "nhs": 14983.0},
        [PairMatch(a="dwp", b="nhs", rate_a=4364 / 5800, rate_b=4364 / 14983, overlap=4364.0)],
        scale=8.0,
    )
    assert "note:" not in _printed(lambda c: render.match_rates(c, quality))
    assert "scale" not in _linked(quality).linkage_summary()


def _linked(quality: LinkageQuality) -> fedlink.Result:
    res = _released([500.0])
    return fedlink.Result(res.raw.model_copy(update={"linkage": quality}))


def test_quality_rows_the_noise_swamps_are_counted_in_one_note() -> None:
    def counts(links: float) -> EstimatedCounts:
        return EstimatedCounts(links=links, false_links=0.0, missed_links=0.0, precision=1.0, recall=1.0, f1=1.0)

    estimated = EstimatedQuality(
        epsilon=0.5,
        scale=240.0,
        overall=counts(4669.0),
        pairs=(
            EstimatedPair(a="charity", b="nhs", **counts(81.0).model_dump()),
            EstimatedPair(a="dwp", b="nhs", **counts(4407.0).model_dump()),
        ),
        subgroups={"sex": {"female": counts(2385.0), "(unknown)": counts(0.0)}},
    )
    shown = _printed(lambda c: render.estimated_quality(c, estimated))
    [note] = [line for line in shown.splitlines() if line.startswith("note:")]
    assert note.startswith("note: 2 of 5 rows have fewer links than the noise") and "±719 at 95%" in note


def test_the_second_shell_activates_the_venv_from_the_repository_root(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    profile = repo / ".fedlink" / "analyst.toml"
    project, epsilon, sql = SECOND_SHELL_QUERY
    query = f'fedlink query "{sql}" --project {project} --epsilon {epsilon:g}'
    assert second_shell(profile, repo, repo / ".venv", Path("/usr")) == [
        f"cd {repo}",
        "source .venv/bin/activate",
        query,
    ]
    elsewhere = tmp_path / "my demo" / "analyst.toml"  # another --workdir, a venv outside the folder
    assert second_shell(elsewhere, repo, tmp_path / "env", Path("/usr")) == [
        f"cd {repo}",
        f"source {tmp_path / 'env' / 'bin' / 'activate'}",
        f"export FEDLINK_PROFILE='{elsewhere}'",
        query,
    ]
    assert second_shell(profile, repo, Path("/usr"), Path("/usr")) == [f"cd {repo}", query]  # no venv
