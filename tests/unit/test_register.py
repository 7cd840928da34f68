"""The transparency register: the hash chain round-trips, every kind of tampering is caught, appends
stay chained under concurrency, and the public export is complete and escaped."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlink.errors import BadInput, Fault
from fedlink.governance import Register, RegisterEntry, export_register, read_register, verify_register
from fedlink.transparency.register import GENESIS, canonical, entry_hash, head_path

SCRIPT_QUERY = "SELECT fsm, COUNT(*) FROM pupils WHERE note = '</code><script>alert(\"x\")</script>' GROUP BY fsm"
PURPOSE = "Does early family support improve attainment at 16?"


def stepping_clock(start: datetime, step: timedelta) -> Callable[[], datetime]:
    """A clock that moves on by ``step`` each time it is read, so entries get distinct, spread-out times."""
    now = [start]

    def clock() -> datetime:
        now[0] += step
        return now[0]

    return clock


def build_federation_registers(root: Path) -> list[tuple[str, Path]]:
    """A coordinator's and three nodes' registers as the query path writes them: a project, a startup,
    a test-mode notice, and released, refused and failed queries (one with ``<script>`` in its text)."""
    clock = stepping_clock(datetime(2025, 3, 1, 9, 0, tzinfo=UTC), timedelta(hours=7))
    coordinator = Register(root / "coordinator" / "register.jsonl", "coordinator", clock=clock)
    nodes = {name: Register(root / name / "register.jsonl", name, clock=clock) for name in ("dfe", "dwp", "nhs")}
    project = {
        "id": "p-early-support",
        "title": "Early support & outcomes",
        "purpose": PURPOSE,
        "analysts": ["alice", "bob"],
        "datasets": ["dfe.pupils", "dwp.claims", "nhs.diagnoses"],
    }
    coordinator.append("startup", {"version": "0.1.0", "nodes": sorted(nodes)})
    coordinator.append("project", project)
    for register in nodes.values():
        register.append("project", project)
    nodes["nhs"].append("test_mode", {"enabled": False})
    queries = [
        ("q-1", "SELECT region, COUNT(*) FROM support_episodes GROUP BY region", {"dfe": 0.5, "dwp": 0.25}, "released"),
        ("q-2", SCRIPT_QUERY, {"dfe": 1.0}, "released"),
        ("q-3", "SELECT COUNT(*) FROM pupils WHERE first_name = 'x'", {"dfe": 0.2}, "refused"),
        ("q-4", "SELECT benefit, COUNT(*) FROM claims GROUP BY benefit", {"dwp": 0.5, "nhs": 0.75}, "released"),
        ("q-5", "SELECT AVG(age_at_diagnosis) FROM diagnoses", {"nhs": 0.5}, "failed"),
    ]
    for query_id, sql, epsilons, status in queries:
        loss = {node: {"epsilon": eps, "rho": 0.0} for node, eps in epsilons.items()}
        released = None
        if status == "released":
            released = {"columns": ["group", "count"], "rows": [["North", 1235], ["<b>South</b>", None]]}
        fields = {
            "query_id": query_id,
            "analyst": "alice",
            "project": "p-early-support",
            "purpose": PURPOSE,
            "query": sql,
            "pet": "he+dp" if len(loss) > 1 else "dp",
            "privacy_loss": loss,
            "status": status,
            "reason": None if status == "released" else f"{status} for a reason",
            "released": released,
        }
        coordinator.append("query", fields)
        for node in loss:
            nodes[node].append("query", {**fields, "privacy_loss": {node: loss[node]}, "released": None})
    return [("coordinator", coordinator.path), *((name, r.path) for name, r in nodes.items())]


def fill(register: Register, count: int) -> list[RegisterEntry]:
    return [register.append("query", {"n": i, "query": f"SELECT {i}", "loss": {"dfe": i / 10}}) for i in range(count)]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


def forged(seq: int, prev_hash: str, party: str = "coordinator", fields: dict[str, Any] | None = None) -> bytes:
    """A line with a correct hash of its own, as someone who knows the format would forge it."""
    fields = fields or {"query": "SELECT 'forged'"}
    time = "2030-01-01T00:00:00.000000Z"
    digest = entry_hash(seq, time, party, "query", fields, prev_hash)
    entry = RegisterEntry(seq, time, party, "query", fields, prev_hash, digest)
    return canonical(entry.to_json()) + b"\n"


@pytest.fixture
def register(tmp_path: Path) -> Register:
    return Register(tmp_path / "state" / "register.jsonl", "coordinator")


def test_append_entries_verify_round_trip(register: Register) -> None:
    written = fill(register, 5)
    written.append(register.append("project", {"id": "p1", "analysts": ("alice",), "purpose": "naïve — ünïcode"}))
    assert register.path.parent.is_dir()
    assert register.entries() == written
    assert [e.seq for e in written] == [1, 2, 3, 4, 5, 6]
    assert written[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in pairwise(written))
    for e in written:
        assert e.hash == entry_hash(e.seq, e.time, e.party, e.kind, e.fields, e.prev_hash)
        assert e.party == "coordinator"
        assert datetime.fromisoformat(e.time).tzinfo is not None
    assert written[-1].fields["analysts"] == ["alice"]  # stored as it reads back, so the hash recomputes
    assert json.loads(head_path(register.path).read_text()) == {"seq": 6, "hash": written[-1].hash}
    assert register.verify().ok and register.verify().entries == 6
    assert verify_register(register.path).problems == ()
    assert verify_register(register.path, "coordinator").ok
    entries, report = read_register(register.path)
    assert list(entries) == written and report.ok


def test_new_register_is_empty_and_valid(register: Register) -> None:
    assert register.entries() == []
    assert register.verify().ok and register.verify().entries == 0


def test_returned_entry_cannot_change_the_register(register: Register) -> None:
    entry = register.append("query", {"loss": {"dfe": 1.0}})
    entry.fields["loss"]["dfe"] = 0.0
    assert register.entries()[0].fields == {"loss": {"dfe": 1.0}}


@pytest.mark.parametrize(
    "fields",
    [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}, {1: "not a string key"}, ["not", "a", "mapping"]],
)
def test_fields_must_be_json_values(register: Register, fields: Any) -> None:
    with pytest.raises(BadInput):
        register.append("query", fields)
    assert not register.path.exists()


def test_bad_kind_or_party_is_refused(register: Register) -> None:
    for kind in ("", "Query", "query kind", "query\n"):
        with pytest.raises(BadInput):
            register.append(kind, {})
    with pytest.raises(BadInput):
        Register(register.path, " ")


def _edited(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1")
    assert isinstance(value, dict)
    return {**value, "n": -1}


@pytest.mark.parametrize("key", ["seq", "time", "party", "kind", "fields", "prev_hash", "hash"])
@pytest.mark.parametrize("line", [1, 3, 5])
def test_editing_any_field_of_any_line_is_detected(register: Register, key: str, line: int) -> None:
    fill(register, 5)
    content = lines(register.path)
    entry = json.loads(content[line - 1])
    entry[key] = _edited(entry[key])
    content[line - 1] = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    rewrite(register.path, content)
    report = register.verify()
    assert not report.ok
    assert any(p.startswith(f"line {line}:") for p in report.problems), report.problems


def test_edited_field_is_reported_as_such_and_only_on_its_line(register: Register) -> None:
    fill(register, 5)
    content = lines(register.path)
    content[2] = content[2].replace(b"SELECT 2", b"SELECT 9")
    rewrite(register.path, content)
    assert register.verify().problems == ("line 3: hash mismatch: the entry was edited",)


def test_rehashed_edit_breaks_the_next_link(register: Register) -> None:
    fill(register, 5)
    content = lines(register.path)
    entry = json.loads(content[2])
    content[2] = forged(entry["seq"], entry["prev_hash"])
    rewrite(register.path, content)
    problems = register.verify().problems
    assert problems and problems[0].startswith("line 4: prev_hash does not match line 3"), problems


def test_deleted_middle_line_is_detected(register: Register) -> None:
    fill(register, 5)
    content = lines(register.path)
    del content[2]
    rewrite(register.path, content)
    problems = register.verify().problems
    assert any(p.startswith("line 3: seq 4 where 3 was expected") for p in problems), problems
    assert any(p.startswith("line 3: prev_hash does not match line 2") for p in problems), problems


def test_swapped_lines_are_detected(register: Register) -> None:
    fill(register, 5)
    content = lines(register.path)
    content[1], content[3] = content[3], content[1]
    rewrite(register.path, content)
    problems = register.verify().problems
    assert {p.split(":")[0] for p in problems} >= {"line 2", "line 3", "line 4", "line 5"}, problems


def test_inserted_line_is_detected(register: Register) -> None:
    entries = fill(register, 5)
    content = lines(register.path)
    content.insert(2, forged(3, entries[1].hash))
    rewrite(register.path, content)
    problems = register.verify().problems
    assert any(p.startswith("line 4: seq 3 where 4 was expected") for p in problems), problems


def test_truncated_tail_is_detected_by_the_head_file(register: Register) -> None:
    fill(register, 5)
    rewrite(register.path, lines(register.path)[:-1])
    problems = register.verify().problems
    assert len(problems) == 1 and problems[0].startswith("head: the last entry is seq 4"), problems
    assert problems[0].endswith("entries were removed from the end")


def test_emptied_log_is_detected(register: Register) -> None:
    fill(register, 2)
    register.path.write_bytes(b"")
    assert register.verify().problems == (
        "head: the log has no entries but its head file names seq 2: the log was emptied",
    )


def test_line_cut_short_is_malformed(register: Register) -> None:
    fill(register, 5)
    data = register.path.read_bytes()
    register.path.write_bytes(data[:-40])
    problems = register.verify().problems
    assert problems[0].startswith("line 5: malformed: no newline at the end"), problems


def test_forged_line_appended_is_detected(register: Register) -> None:
    entries = fill(register, 5)
    with register.path.open("ab") as handle:
        handle.write(forged(6, entries[-1].hash))
    problems = register.verify().problems
    assert len(problems) == 1 and "entries were added to the end without updating the head" in problems[0]


def test_garbage_line_appended_is_detected(register: Register) -> None:
    fill(register, 2)
    with register.path.open("ab") as handle:
        handle.write(b'{"seq": 3}\n')
    assert register.verify().problems[0].startswith("line 3: malformed: not an entry")


def test_missing_or_broken_head_file_is_detected(register: Register) -> None:
    fill(register, 2)
    head_path(register.path).write_text("{not json")
    assert register.verify().problems == ("head: the head file register.jsonl.head is not valid JSON",)
    head_path(register.path).unlink()
    assert register.verify().problems[0].startswith("head: the head file is missing")


def test_register_that_fails_its_head_check_refuses_appends(register: Register) -> None:
    fill(register, 3)
    rewrite(register.path, lines(register.path)[:-1])
    with pytest.raises(Fault, match="does not match its head file"):
        register.append("query", {"n": 99})
    register.path.write_bytes(register.path.read_bytes()[:-5])
    with pytest.raises(Fault, match="partial line"):
        register.append("query", {"n": 99})


def test_a_register_is_kept_by_one_party(register: Register) -> None:
    fill(register, 2)
    with pytest.raises(BadInput, match="kept by 'coordinator'"):
        Register(register.path, "dfe").append("query", {})
    assert Register(register.path, "dfe").verify().problems[0] == (
        "line 1: kept by 'coordinator' in a register kept by 'dfe'"
    )


def test_entries_refuses_a_damaged_register(register: Register) -> None:
    fill(register, 3)
    content = lines(register.path)
    content[1] = b"garbage\n"
    rewrite(register.path, content)
    with pytest.raises(Fault, match="line 2 is not a valid entry"):
        register.entries()
    entries, report = read_register(register.path)  # the export still reads what it can
    assert [e.seq for e in entries] == [1, 3] and not report.ok


def test_verify_register_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no register at"):
        verify_register(tmp_path / "missing.jsonl")


def test_concurrent_appends_from_threads_keep_the_chain(register: Register) -> None:
    def work(worker: int) -> None:
        mine = Register(register.path, "coordinator")  # separate objects, as separate services would hold
        for i in range(25):
            mine.append("query", {"worker": worker, "i": i})

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    report = register.verify()
    assert report.ok, report.problems
    assert report.entries == 200
    seen = {(e.fields["worker"], e.fields["i"]) for e in register.entries()}
    assert seen == {(w, i) for w in range(8) for i in range(25)}


def test_concurrent_appends_from_processes_keep_the_chain(register: Register) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from fedlink.governance import Register
        r = Register(Path(sys.argv[1]), "coordinator")
        for i in range(40):
            r.append("query", {"worker": sys.argv[2], "i": i})
        """
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(register.path), str(w)]) for w in range(3)]
    fill(register, 20)  # and this process at the same time
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    report = register.verify()
    assert report.ok, report.problems
    assert report.entries == 3 * 40 + 20


# --- the public export -----------------------------------------------------------------------------------------


def test_export_writes_page_and_json(tmp_path: Path) -> None:
    registers = build_federation_registers(tmp_path / "fed")
    page, data = export_register(registers, tmp_path / "public", title="Federation <register>")
    assert (page, data) == (tmp_path / "public" / "index.html", tmp_path / "public" / "register.json")
    html = page.read_text("utf-8")
    assert "<script" not in html.lower()
    assert "&lt;/code&gt;&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;South&lt;/b&gt;" in html and "<b>South" not in html
    assert "<title>Federation &lt;register&gt;</title>" in html
    assert PURPOSE in html and "p-early-support" in html and "dfe.pupils" in html
    # Only released queries spend, charged in rho = epsilon^2 / 2: dfe 0.125 + 0.5 (q-3 was refused),
    # dwp 0.03125 + 0.125, nhs 0.28125 (q-5 failed).
    assert "dfe: 0.625 in 2 queries; dwp: 0.15625 in 2 queries; nhs: 0.28125 in 1 queries" in html
    assert html.count("<polyline") == 3
    assert "agrees" in html and "differs" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html

    document = json.loads(data.read_text("utf-8"))
    assert document["format"] == "fedlink-register-export/1"
    assert document["title"] == "Federation <register>"
    assert [r["party"] for r in document["registers"]] == ["coordinator", "dfe", "dwp", "nhs"]
    for (party, path), published in zip(registers, document["registers"], strict=True):
        live = Register(path, party).entries()
        assert published["verify"] == {"ok": True, "entries": len(live), "problems": []}
        assert published["head"] == {"seq": live[-1].seq, "hash": live[-1].hash}
        assert published["entries"] == [e.to_json() for e in live]
        assert published["file"] == "register.jsonl"
    queries = [e["fields"] for e in document["registers"][0]["entries"] if e["kind"] == "query"]
    assert queries[1]["query"] == SCRIPT_QUERY


def test_export_reports_a_tampered_register(tmp_path: Path) -> None:
    registers = build_federation_registers(tmp_path / "fed")
    dwp = registers[2][1]
    content = lines(dwp)
    content[1] = content[1].replace(b'"epsilon":0.25', b'"epsilon":0.05')
    rewrite(dwp, content)
    page, data = export_register(registers, tmp_path / "public")
    html = page.read_text("utf-8")
    assert "1 problem</a>" in html and "line 2: hash mismatch: the entry was edited" in html
    assert "differs" in html  # dwp's own record of its epsilon no longer matches the coordinator's
    dwp_published = json.loads(data.read_text("utf-8"))["registers"][2]
    assert dwp_published["verify"]["ok"] is False
    assert dwp_published["verify"]["problems"] == ["line 2: hash mismatch: the entry was edited"]


def test_export_replaces_a_previous_export_and_refuses_other_folders(tmp_path: Path) -> None:
    registers = build_federation_registers(tmp_path / "fed")
    out = tmp_path / "public"
    export_register(registers, out)
    Register(registers[0][1], "coordinator").append("startup", {"version": "0.1.1"})
    export_register(registers, out)
    assert "0.1.1" in (out / "index.html").read_text("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed", "public"]  # no staging folders left behind

    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not a previous register export"):
        export_register(registers, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("someone else's page")
    with pytest.raises(BadInput, match="not a previous register export"):
        export_register(registers, other)
    assert (other / "index.html").read_text() == "someone else's page"
    with pytest.raises(BadInput, match="not a folder"):
        export_register(registers, registers[0][1])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_register(registers, empty)[0].is_file()


def test_export_of_registers_without_queries(tmp_path: Path) -> None:
    register = Register(tmp_path / "r.jsonl", "coordinator")
    register.append("startup", {"version": "0.1.0"})
    page, data = export_register([("coordinator", register.path)], tmp_path / "public")
    html = page.read_text("utf-8")
    assert "No queries recorded." in html and "No projects recorded." in html and "<svg" in html
    assert json.loads(data.read_text("utf-8"))["registers"][0]["head"]["seq"] == 1


def test_export_refuses_bad_register_lists(tmp_path: Path) -> None:
    registers = build_federation_registers(tmp_path / "fed")
    with pytest.raises(BadInput, match="given twice"):
        export_register([registers[0], registers[0]], tmp_path / "public")
    with pytest.raises(BadInput, match="no register at"):
        export_register([("dfe", tmp_path / "nope.jsonl")], tmp_path / "public")
    with pytest.raises(BadInput):
        export_register([], tmp_path / "public")
    assert not (tmp_path / "public").exists()


# --- properties ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
kinds = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True)
appends = st.lists(
    st.tuples(kinds, st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(appends)
def test_any_sequence_of_appends_verifies_and_reads_back(sequence: list[tuple[str, dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        register = Register(Path(folder) / "r.jsonl", "dfe")
        for kind, fields in sequence:
            register.append(kind, fields)
        report = register.verify()
        assert report.ok, report.problems
        assert report.entries == len(sequence)
        read = register.entries()
        assert [(e.kind, e.fields) for e in read] == [(k, json.loads(json.dumps(f))) for k, f in sequence]


def _base_register() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as folder:
        register = Register(Path(folder) / "r.jsonl", "coordinator")
        register.append("project", {"id": "p1", "purpose": "naïve → ünïcode", "loss": 1e16, "n": [1, 2.5, None]})
        fill(register, 3)
        return register.path.read_bytes(), head_path(register.path).read_bytes()


BASE_LOG, BASE_HEAD = _base_register()


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(0, len(BASE_LOG) - 1),
    byte=st.integers(0, 255),
    how=st.sampled_from(["replace", "insert", "delete"]),
)
def test_any_single_byte_change_is_detected(position: int, byte: int, how: str) -> None:
    data = bytearray(BASE_LOG)
    if how == "replace":
        if data[position] == byte:
            byte = (byte + 1) % 256
        data[position] = byte
    elif how == "insert":
        data.insert(position, byte)
    else:
        del data[position]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.jsonl"
        path.write_bytes(bytes(data))
        head_path(path).write_bytes(BASE_HEAD)
        report = verify_register(path)
    assert not report.ok
    assert report.problems
