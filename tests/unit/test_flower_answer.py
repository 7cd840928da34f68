"""The analyst's side of fedlink on Flower reads its answer from the run's stored log when the stream closed
before the ServerApp's last lines arrived (Flower ends a stream once a run is marked finished, and a loaded
ServerApp can upload its final log lines just after). A stand-in ``flwr`` executable plays the CLI: the
stream it prints lacks the answer, and ``flwr log RUN --show`` holds it from the second try."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from fedlink.errors import Fault
from fedlink.flower.analyst import FlowerFederation, bundle_dir
from fedlink.flower.apps import RESULT_MARK, pack_json

_FAKE = """#!{python}
import sys
from pathlib import Path
calls = Path({calls!r})
calls.open("a").write(" ".join(sys.argv[1:3]) + "\\n")
if sys.argv[1] == "run":
    print("\\x1b[92mINFO \\x1b[0m:  Successfully started run 4217")
    print("\\x1b[92mINFO \\x1b[0m:  Starting logstream for run_id `4217`")
elif sys.argv[1] == "log" and sys.argv[2] == "4217":
    tries = sum(1 for line in calls.read_text().splitlines() if line.startswith("log"))
    print("INFO :  ServerApp started")
    if tries >= {answer_from}:
        print({line!r})
"""


def _federation(tmp_path: Path, answer_from: int) -> tuple[FlowerFederation, Path]:
    calls = tmp_path / "calls.txt"
    line = RESULT_MARK + pack_json({"ok": True, "kind": "plain", "value": 7})
    fake = tmp_path / "flwr"
    fake.write_text(_FAKE.format(python=sys.executable, calls=str(calls), answer_from=answer_from, line=line))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    federation = FlowerFederation(
        "127.0.0.1:9093",
        analyst="a",
        projects=tmp_path / "projects.toml",
        register=tmp_path / "register.db",
        insecure=True,
        timeout_s=30,
        flwr=str(fake),
    )
    return federation, calls


def test_an_answer_missing_from_the_stream_is_read_from_the_runs_stored_log(tmp_path: Path) -> None:
    federation, calls = _federation(tmp_path, answer_from=2)
    answer = federation.run({"analyst": "a"})
    assert answer == {"ok": True, "kind": "plain", "value": 7}
    assert calls.read_text().splitlines() == [f"run {bundle_dir()}", "log 4217", "log 4217"]


def test_a_run_whose_log_never_holds_an_answer_is_a_fault_naming_the_superlink(tmp_path: Path) -> None:
    federation, calls = _federation(tmp_path, answer_from=99)
    with pytest.raises(Fault, match="gave no fedlink answer"):
        federation.run({"analyst": "a"})
    assert sum(1 for line in calls.read_text().splitlines() if line.startswith("log 4217")) >= 2
