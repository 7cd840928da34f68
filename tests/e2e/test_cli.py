"""The `fedlink` command as a user runs it, against a whole federation of subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import duckdb
import pytest

from fedlink.protocol import audit
from fedlink.transparency.register import verify_register
from fedlink_tools.demo import EXAMPLE_QUERIES, LocalFederation, write_profile

from ..conftest import NODES, ROOT, find_leaks, identifier_values, without_sealed_results

pytestmark = pytest.mark.slow
PROJECT = "homelessness-outcomes"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlink", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], proc.stderr


@pytest.fixture(scope="module")
def running(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, Path, Path]]:
    audit_dir = tmp_path_factory.mktemp("audit")
    federation = LocalFederation(workdir=workdir, root=ROOT, nodes=NODES, env={audit.ENV: str(audit_dir)})
    try:
        federation.start()
        yield federation, write_profile(workdir, federation.address), audit_dir
    finally:
        federation.stop()


def test_catalog_json(running: tuple[LocalFederation, Path, Path]) -> None:
    _, profile, _ = running
    proc = cli("catalog", "--profile", str(profile), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    nodes = json.loads(proc.stdout)["nodes"]
    assert sorted(n["node"] for n in nodes if n["live"]) == NODES


def test_query_formats_agree_with_plaintext(running: tuple[LocalFederation, Path, Path], workdir: Path) -> None:
    _, profile, _ = running
    sql = "SELECT episode_type, COUNT(*) AS n FROM support_episodes WHERE start_year >= 2018 GROUP BY episode_type"
    files = [str(workdir / "data" / n / "support_episodes.parquet") for n in ("charity_north", "charity_south")]
    expected = dict(
        duckdb.sql(
            f"SELECT episode_type, COUNT(*) FROM read_parquet({files}) WHERE start_year >= 2018 GROUP BY 1"
        ).fetchall()
    )
    exact = ("--project", PROJECT, "--noiseless")
    as_json = cli("query", sql, *exact, "--profile", str(profile), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    got = {r["episode_type"]: r["n"]["value"] for r in json.loads(as_json.stdout)["rows"]}
    assert got == {k: expected.get(k, 0) for k in got} and len(got) == 4
    noisy = json.loads(
        cli("query", sql, "--project", PROJECT, "--epsilon", "1", "--profile", str(profile), "--format", "json").stdout
    )
    assert noisy["privacy_loss"] == {n: {"epsilon": 1.0, "rho": 0.0} for n in ("charity_north", "charity_south")}
    assert all({"value", "lower", "upper", "suppressed"} <= set(r["n"]) for r in noisy["rows"])
    as_csv = cli("query", sql, *exact, "--profile", str(profile), "--format", "csv")
    assert as_csv.stdout.splitlines()[0] == "episode_type,n,n_lower,n_upper,suppressed"
    assert len(as_csv.stdout.splitlines()) == 5
    in_clear = cli(
        "query",
        sql,
        "--project",
        PROJECT,
        "--epsilon",
        "1",
        "--pet",
        "dp",
        "--profile",
        str(profile),
        "--format",
        "json",
    )
    assert json.loads(in_clear.stdout)["pet"] == "dp" and noisy["pet"] == "he+dp"
    as_table = cli("query", sql, "--project", PROJECT, "--epsilon", "1", "--profile", str(profile))
    assert as_table.returncode == 0 and "rough_sleeping" in as_table.stdout and "95% interval" in as_table.stdout
    assert "charity_north: ε=1" in as_table.stdout
    budget = json.loads(cli("budget", "--profile", str(profile), "--format", "json").stdout)["lines"]
    spent = {(b["node"], b["project"]): b["rho_spent"] for b in budget}
    assert spent[("charity_south", PROJECT)] == pytest.approx(1.5)  # three queries at epsilon 1


def test_bad_input_gives_one_line_and_exit_2(
    running: tuple[LocalFederation, Path, Path], workdir: Path, tmp_path: Path
) -> None:
    federation, profile, _ = running
    spend = ("--project", "deprivation-mental-health", "--epsilon", "1", "--profile", str(profile))
    assert_one_line_error(cli("query", "SELECT COUNT(* FROM pupils", *spend), 2, "malformed SQL")
    assert_one_line_error(cli("query", "SELECT * FROM pupils", *spend), 2, "would release rows")
    assert_one_line_error(cli("query", "SELECT COUNT(*) FROM nope", *spend), 2, "unknown table")
    assert_one_line_error(cli("query", "SELECT COUNT(*) FROM pupils WHERE height > 3", *spend), 2, "unknown column")
    assert_one_line_error(
        cli("query", "SELECT COUNT(*) FROM pupils", "--profile", str(profile), "--epsilon", "1"), 2, "--project P"
    )
    assert_one_line_error(
        cli(
            "query", "SELECT COUNT(*) FROM pupils", "--profile", str(profile), "--project", "deprivation-mental-health"
        ),
        2,
        "declare the query's privacy loss",
    )
    no_cert = cli("query", "SELECT COUNT(*) FROM pupils", "--coordinator", federation.address, *spend[:4])
    assert_one_line_error(no_cert, 2, "needs cert, key, ca")
    stranger = cli(
        "query",
        "SELECT COUNT(*) FROM pupils",
        *spend[:4],
        "--coordinator",
        federation.address,
        "--cert",
        str(workdir / "other-ca/analyst-demo-analyst.crt"),
        "--key",
        str(workdir / "other-ca/analyst-demo-analyst.key"),
        "--ca",
        str(workdir / "pki/ca.crt"),
    )
    assert_one_line_error(stranger, 2, "was not issued by the CA in")
    broken = tmp_path / "node.toml"
    broken.write_text("[node]\nname = 'dfe'\n")
    assert_one_line_error(cli("node", "serve", "--config", str(broken)), 2, "node.coordinator: Field required")
    assert_one_line_error(cli("node", "serve", "--config", str(tmp_path / "missing.toml")), 2, "does not exist")
    assert_one_line_error(cli("catalog", "--profile", str(tmp_path / "none.toml")), 2, "does not exist")


def test_hostile_input_gives_one_line_and_spends_nothing(running: tuple[LocalFederation, Path, Path]) -> None:
    """The inputs that printed a traceback, an internal error or ran out of memory after the nodes had
    spent: each is now one line on stderr with exit code 2, and every node's budget is as it was."""
    _, profile, _ = running
    spend = ("--project", PROJECT, "--profile", str(profile))
    count = "SELECT outcome, COUNT(*) FROM support_episodes GROUP BY outcome"
    where = "SELECT COUNT(*) FROM support_episodes WHERE "
    formula = ("model", "fit", "outcome = 'housed' ~ duration_days", "--table", "support_episodes", *spend)
    budget = ("budget", "--profile", str(profile), "--format", "json")
    before = json.loads(cli(*budget).stdout)
    cases = [
        (("query", 'SELECT COUNT(*) FROM "[/x]"', *spend, "--epsilon", "1"), "unknown table '[/x]'"),
        (("model", "fit", "outcome = 'housed' ~ [/x]", "--table", "support_episodes", *spend, "--rho", "1"), "[/x]"),
        (("query", count, *spend, "--epsilon", "1e-6"), "too small to tell anything"),
        (("query", count, *spend, "--epsilon", "1e-300"), "too small to tell anything"),
        (("query", count, *spend, "--rho", "1e-9", "--pet", "dp"), "too small to tell anything"),
        ((*formula, "--rho", "1e-300"), "too small to tell anything"),
        (("query", count, *spend, "--epsilon", "nan"), "positive, finite number"),
        ((*formula, "--rho", "inf"), "positive, finite number"),
        (("query", count + " " * 17_000, *spend, "--epsilon", "1"), "more than the limit of 16,384"),
        (("query", where + "start_year > 1e400", *spend, "--epsilon", "1"), "out of range"),
        (("query", where + "NOT " * 2000 + "start_year = 2019", *spend, "--epsilon", "1"), "nests"),
    ]
    for args, text in cases:
        assert_one_line_error(cli(*args), 2, text)
    assert json.loads(cli(*budget).stdout) == before


def test_model_fit_command(running: tuple[LocalFederation, Path, Path], workdir: Path) -> None:
    """`fedlink model fit` over the running federation: exact coefficients in test mode, the three
    formats, and a bad formula as one line with exit code 2."""
    import numpy as np

    from ..integration.test_models import FORMULA, irls, pooled

    _, profile, _ = running
    base = ("model", "fit", FORMULA, "--table", "support_episodes", "--project", PROJECT, "--profile", str(profile))
    as_json = cli(*base, "--noiseless", "--iterations", "6", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    fit = json.loads(as_json.stdout)
    rows = pooled(
        workdir,
        "SELECT CASE WHEN outcome = 'housed' THEN 1 ELSE 0 END, CASE WHEN episode_type = 'rough_sleeping' "
        "THEN 1 ELSE 0 END, duration_days, start_year FROM DATA",
    )
    np.testing.assert_allclose(fit["coefficients"], irls(rows[:, 1:], rows[:, 0], logistic=True), atol=1e-4, rtol=0)
    assert [r["term"] for r in fit["table_rows"]][1] == "episode_type = 'rough_sleeping'"
    as_table = cli(*base, "--rho", "1.5", "--iterations", "2")
    assert as_table.returncode == 0, as_table.stderr
    assert "episode_type = 'rough_sleeping'" in as_table.stdout and "charity_north rho=1.5" in as_table.stdout
    # the demo's few hundred episodes at this rho: the noise swamps them, and no interval is printed
    assert "no standard errors or intervals: the DP noise swamps" in " ".join(as_table.stdout.split())
    as_csv = cli(*base, "--noiseless", "--iterations", "1", "--format", "csv")
    assert as_csv.stdout.splitlines()[0] == "term,estimate,std_error,noise_error,z,lower,upper"
    bad = cli("model", "fit", "outcome = 'housed' ~ first_name", "--table", "support_episodes", "--project", PROJECT,
              "--rho", "1", "--profile", str(profile))  # fmt: skip
    assert_one_line_error(bad, 2, "identifier")
    flower = cli(*base, "--rho", "1", "--superlink", "127.0.0.1:1")
    assert_one_line_error(flower, 2, "--projects, --register and --analyst")


def test_a_node_down_is_a_fault(running: tuple[LocalFederation, Path, Path]) -> None:
    federation, profile, _ = running
    federation.stop_party("pnc")
    justice = ("--profile", str(profile), "--project", "justice-attainment", "--epsilon", "1")
    assert_one_line_error(
        cli("query", "SELECT disposal, COUNT(*) FROM convictions GROUP BY disposal", *justice),
        1,
        "'pnc' holding table 'convictions' is not connected",
    )
    federation.start_node("pnc")
    again = cli("query", "SELECT COUNT(*) FROM convictions", *justice)
    assert again.returncode == 0, again.stderr


def test_wire_audit_across_processes(running: tuple[LocalFederation, Path, Path], workdir: Path) -> None:
    """Runs after the queries above: everything every process sent or received is on record."""
    _, _, audit_dir = running
    messages = without_sealed_results(audit.read_folder(audit_dir))
    assert len(messages) > 20
    assert find_leaks(messages, identifier_values(workdir)) == []


def test_register_verify_and_export(running: tuple[LocalFederation, Path, Path], tmp_path: Path) -> None:
    federation, _, _ = running
    config = str(ROOT / "coordinator" / "coordinator.toml")
    verified = cli("register", "verify", str(federation.state), "--config", config)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count("chain intact") == len(NODES) + 1
    agreed = verified.stdout.splitlines()[-1]  # "cross-check: N queries; the registers agree on N (...)"
    queries = int(agreed.split()[1])
    assert agreed.startswith(f"cross-check: {queries} queries; the registers agree on {queries} (")
    exported = cli("register", "export", str(federation.state), "--out", str(tmp_path / "site"))
    assert exported.returncode == 0, exported.stderr
    page = (tmp_path / "site" / "index.html").read_text()
    assert "homelessness-outcomes" in page and "<script" not in page
    copy = tmp_path / "coordinator" / "register.jsonl"
    copy.parent.mkdir()
    original = (federation.state / "coordinator" / "register.jsonl").read_text().splitlines()
    copy.write_text("\n".join(original[:1] + original[2:]) + "\n")  # one entry deleted
    (copy.parent / "register.jsonl.head").write_text(
        (federation.state / "coordinator" / "register.jsonl.head").read_text()
    )
    tampered = cli("register", "verify", str(copy))
    assert tampered.returncode == 1 and "TAMPERED" in tampered.stdout
    assert tampered.stderr.strip().startswith("error: 1 register(s) failed verification")
    # a node's register and head deleted: the coordinator's register records that node joining
    state = tmp_path / "state"
    for party in ("coordinator", *NODES[1:]):
        for name in ("register.jsonl", "register.jsonl.head"):
            (state / party).mkdir(parents=True, exist_ok=True)
            (state / party / name).write_bytes((federation.state / party / name).read_bytes())
    deleted = cli("register", "verify", str(state))
    assert deleted.returncode == 1 and f"MISSING  {NODES[0]}: no register" in deleted.stdout, deleted.stdout
    assert deleted.stderr.strip() == (
        "error: 1 register(s) missing; see the lines above, and compare with the published copies"
    )


def test_synth_and_pki_commands(tmp_path: Path) -> None:
    proc = cli("synth", "--people", "500", "--seed", "3", "--out", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data/dfe/pupils.parquet").exists() and (tmp_path / "data/truth").is_dir()
    again = cli("synth", "--people", "500", "--seed", "3", "--out", str(tmp_path / "data"))
    assert_one_line_error(again, 2, "not empty")
    assert cli("pki", "init", "--dir", str(tmp_path / "pki")).returncode == 0
    issued = cli("pki", "issue", "--dir", str(tmp_path / "pki"), "--role", "node", "--name", "dfe")
    assert issued.returncode == 0 and (tmp_path / "pki/node-dfe.crt").exists()
    assert_one_line_error(
        cli("pki", "issue", "--dir", str(tmp_path / "pki"), "--role", "god", "--name", "x"), 2, "unknown role"
    )


def ledger_rows(state: Path) -> dict[str, dict[str, int]]:
    """Per party with a ledger under ``state``, how many of its rows are in each state."""
    out = {}
    for ledger in sorted(state.glob("*/ledger.sqlite")):
        with closing(sqlite3.connect(ledger)) as db:
            out[ledger.parent.name] = dict(db.execute("SELECT state, COUNT(*) FROM reservation GROUP BY state"))
    return out


SUPPRESSED_NOTE = re.compile(
    r"^(\d+) of (\d+) cells suppressed by disclosure control: their group's noisy count is below 10; "
    r"no value is shown for them$"
)
RELEASED = re.compile(r"│\s*-?[\d,.]+ \[-?[\d,.]+, -?[\d,.]+\]\s*│")


def demo_examples(stdout: str) -> list[tuple[list[str], list[str]]]:
    """Per example query the demo ran, in order: its table's rows and the lines under the table."""
    lines = stdout.splitlines()
    captions = [i for i, line in enumerate(lines) if line.startswith("project ")]
    first = next(i for i, line in enumerate(lines) if line.startswith(EXAMPLE_QUERIES[0][2][:40]))
    out = []
    for n, caption in enumerate(captions):
        rows = [line for line in lines[(captions[n - 1] if n else first) : caption] if line.startswith("│")]
        end = next(i for i in range(caption, len(lines)) if lines[i].startswith("intervals:"))
        out.append((rows, lines[caption : end + 1]))
    return out


def assert_examples_show_numbers_and_say_what_was_suppressed(stdout: str) -> None:
    """Every example returns at least one released number; the note on suppressed cells appears
    exactly when cells are suppressed, counts them, and holds no number but the counts and threshold."""
    examples = demo_examples(stdout)
    assert len(examples) == len(EXAMPLE_QUERIES)
    for rows, notes in examples:
        assert any(RELEASED.search(row) for row in rows), rows
        suppressed = sum(row.count("suppressed (noisy count below 10)") for row in rows)
        counted = [SUPPRESSED_NOTE.match(line) for line in notes if "suppressed" in line]
        if suppressed:
            assert len(counted) == 1 and counted[0] is not None, notes
            assert int(counted[0].group(1)) == suppressed and int(counted[0].group(2)) == len(rows), notes
        else:
            assert counted == [], notes


def second_shell_env() -> dict[str, str]:
    """A fresh shell's environment: without this interpreter's virtual environment on PATH."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FEDLINK_PROFILE")}
    return {**env, "PATH": os.pathsep.join(path), "COLUMNS": "200"}


def test_demo_runs_end_to_end_and_no_command_wipes_its_federation(tmp_path: Path) -> None:
    """The demo as the README runs it, at its default size, from a folder of its own (``.fedlink/``
    under the current folder). Its examples show numbers and say what disclosure control suppressed.
    While it serves, the banner's second-shell commands work as printed, a second `fedlink demo` is
    refused and `fedlink scenario` (no --profile) runs in a folder of its own, leaving the demo's CA,
    ledgers and registers alone; the next demo run uses the same federation again, its spent budgets
    included."""
    demo = (sys.executable, "-m", "fedlink", "demo")
    env = {**os.environ, "COLUMNS": "200"}
    serving = subprocess.Popen(
        [*demo, "--serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert serving.stderr is not None
        for line in serving.stderr:  # waits on the demo's own word that the federation serves
            if line.startswith(b"federation running"):
                break
        else:
            raise AssertionError(f"the demo ended before serving (exit {serving.wait()})")
        banner = []
        for line in serving.stderr:  # the second shell's commands, the query last
            banner.append(line.decode().strip())
            if banner[-1].startswith("fedlink query "):
                break
        in_venv = sys.prefix != sys.base_prefix  # scripts/env.sh's .venv: activated in the second shell
        expected = [f"cd {tmp_path}", *([f"source {Path(sys.prefix, 'bin', 'activate')}"] if in_venv else [])]
        assert banner[:-1] == expected, banner  # cd: a shell opened anywhere
        folder = tmp_path / ".fedlink"
        ca = (folder / "pki" / "ca.crt").read_bytes()
        registers = {p: p.read_bytes() for p in folder.glob("state/*/register.jsonl")}
        spent = ledger_rows(folder / "state")
        assert len(registers) == len(NODES) + 1 and spent["charity_north"]["committed"] >= 2

        assert_one_line_error(cli("demo", cwd=tmp_path), 2, f"the demo federation in {folder} is in use")
        scenario = cli("scenario", "homelessness", "--people", "2000", "--out", "out", "--format", "json", cwd=tmp_path)
        assert scenario.returncode == 0, scenario.stderr[-2000:]
        assert all(v > 0 for v in json.loads(scenario.stdout)["spent"].values())
        assert (tmp_path / ".fedlink-scenario" / "pki" / "ca.crt").read_bytes() != ca  # a federation of its own
        assert (folder / "pki" / "ca.crt").read_bytes() == ca
        assert {p: p.read_bytes() for p in registers} == registers and ledger_rows(folder / "state") == spent

        # a second shell, as printed: `fedlink` is on PATH only once the venv is activated
        shell = "\n".join([*banner[:-1], "command -v fedlink", banner[-1]])
        second = subprocess.run(
            ["bash", "-c", shell], cwd="/", env=second_shell_env(), capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines()[0] == str(Path(sys.prefix, "bin", "fedlink"))
        assert RELEASED.search(second.stdout) and "suppressed" not in second.stdout, second.stdout
    finally:
        serving.send_signal(signal.SIGTERM)
        out, err = serving.communicate(timeout=120)
    assert serving.returncode == 0, err.decode()[-2000:]
    text = out.decode()
    assert "support_episodes" in text and "HISTOGRAM(sentence_months)" in text
    assert_examples_show_numbers_and_say_what_was_suppressed(text)
    assert "link spine built for project homelessness-outcomes" in text
    assert "federation stopped" in err.decode()

    again = cli("demo", cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "using the demo federation in" in again.stderr
    assert_examples_show_numbers_and_say_what_was_suppressed(again.stdout)
    assert (folder / "pki" / "ca.crt").read_bytes() == ca
    for path, before in registers.items():  # every register kept its history and went on from it
        assert path.read_bytes().startswith(before) and verify_register(path).ok
    rows = ledger_rows(folder / "state")
    # spent on top, not reset: two demo runs, and the second shell's query at each charity node
    assert rows["charity_north"]["committed"] == 2 * spent["charity_north"]["committed"] + 1
    assert_one_line_error(
        cli("demo", "--people", "3000", cwd=tmp_path), 2, "holds another demo federation's CA, budgets and registers"
    )
