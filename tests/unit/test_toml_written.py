"""TOML that fedlink writes (the demo's analyst profile, Flower's config and run config) reads back
exactly, whatever the values hold: quotes, backslashes, newlines, ``#`` and non-ASCII text."""

from __future__ import annotations

import tomllib
from pathlib import Path

from fedlink.flower.analyst import write_flower_config, write_run_config
from fedlink_tools.demo import write_profile

HOSTILE = "a \"quoted\" C:\\path\\ with\nnewline\ttab # not a comment ’ ü \\u0041 'single'"


def test_flower_run_config_round_trips_hostile_values(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    projects, register = tmp_path / 'projects "x".toml', tmp_path / "reg\\ister\n.jsonl"
    write_run_config(path, HOSTILE, projects, register, test_mode=True)
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {
        "fedlink-request": HOSTILE,
        "fedlink-projects": str(projects),
        "fedlink-register": str(register),
        "fedlink-test-mode": True,
    }


def test_flower_config_round_trips_hostile_values(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    write_flower_config(path, "[::1]:9093", insecure=False, root_certificates=Path(HOSTILE))
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {
        "superlink": {"default": "fedlink", "fedlink": {"address": "[::1]:9093", "root-certificates": HOSTILE}}
    }
    write_flower_config(path, "127.0.0.1:9093", insecure=True, root_certificates=None)
    assert tomllib.loads(path.read_text(encoding="utf-8"))["superlink"]["fedlink"] == {
        "address": "127.0.0.1:9093",
        "insecure": True,
    }


def test_demo_profile_round_trips_a_hostile_address(tmp_path: Path) -> None:
    written = tomllib.loads(write_profile(tmp_path, HOSTILE).read_text(encoding="utf-8"))
    assert written["coordinator"] == HOSTILE
    assert written["ca"] == "pki/ca.crt"
