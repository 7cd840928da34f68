"""Inputs that gave `internal error:` (a bug's catch-all) now give the one-line error of bad input:
files that are not what they should be (a key where a certificate belongs, bytes that are not UTF-8,
a file that is not PEM), folders that cannot be written, names that are not text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlink import pki
from fedlink.cli.common import with_flags
from fedlink.errors import BadInput
from fedlink.transparency.register import Register


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlink", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    pki.init_ca(root / "pki")
    pki.issue(root / "pki", "analyst", "alice")
    (root / "not-pem.crt").write_text("this is not a certificate\n")
    (root / "latin1.toml").write_bytes(b'coordinator = "caf\xe9:1"\n')
    (root / "a-file").write_text("")
    Register(root / "state" / "coordinator" / "register.jsonl", "coordinator").append("project", {"id": "p"})
    profile = root / "key-as-cert.toml"
    profile.write_text(
        f'coordinator = "127.0.0.1:1"\ncert = "{root}/pki/ca.key"\nkey = "{root}/pki/analyst-alice.key"\n'
        f'ca = "{root}/pki/ca.crt"\n'
    )
    return root


ALICE = ("--coordinator", "127.0.0.1:1", "--ca", "{root}/pki/ca.crt", "--cert", "{root}/pki/analyst-alice.crt",
         "--key", "{root}/pki/analyst-alice.key")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            ("pki", "revoke", "--dir", "{root}/pki", "--cert", "{root}/not-pem.crt"),
            "not-pem.crt is not a PEM certificate",
        ),
        (("pki", "init", "--dir", "{root}/a-file/pki"), "cannot create the CA folder"),
        (("catalog", "--profile", "{root}/latin1.toml"), "is not UTF-8 text"),
        (("catalog", "--profile", "{root}/key-as-cert.toml"), "ca.key is not a PEM certificate"),
        (("register", "export", "{root}/state", "--out", "{root}/a-file/site"), "cannot write the export into"),
        (("query", "SELECT 1", "--project", "\udcff", *ALICE), "the project name holds a character that is not"),
    ],
)
def test_what_was_an_internal_error_is_one_line_of_bad_input(files: Path, args: tuple[str, ...], text: str) -> None:
    proc = _cli(*(a.format(root=files) for a in args))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and text in lines[0], proc.stderr


def test_library_errors_name_parameters_and_the_cli_names_its_flags(files: Path) -> None:
    with pytest.raises(BadInput) as raised:
        pki.init_ca(files / "pki")  # a CA is there already
    assert raised.value.message.endswith("use another `pki_dir` or delete it deliberately")
    proc = _cli("pki", "init", "--dir", str(files / "pki"))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("use another --dir or delete it deliberately")


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("declare `epsilon=E` (pure DP) or `rho=R` (zCDP)", "declare --epsilon E (pure DP) or --rho R (zCDP)"),
        ("at least two input files (`inputs`)", "at least two input files (--input)"),
        ("pass `source=FILE`", "pass --from FILE"),
        # a command to run, and a name the command line has no flag for, stay as written
        ("run `fedlink link --project p` first", "run `fedlink link --project p` first"),
        ("column `region` is unknown", "column `region` is unknown"),
    ],
)
def test_the_cli_spells_parameters_as_flags(message: str, shown: str) -> None:
    assert with_flags(message) == shown
