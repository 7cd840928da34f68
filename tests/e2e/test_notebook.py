"""The example notebook runs top to bottom against a federation (outputs are never committed)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fedlink_tools.demo import write_profile

from ..conftest import InProcessFederation

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "analyst.ipynb"
pytestmark = pytest.mark.slow


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_example_notebook_runs(
    federation: InProcessFederation, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile_dir = tmp_path / "profile"
    profile_dir.mkdir()
    (profile_dir / "pki").symlink_to(workdir / "pki")
    monkeypatch.setenv("FEDLINK_PROFILE", str(write_profile(profile_dir, federation.address)))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    html = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any("95%" in h and "homelessness-outcomes" in h for h in html)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "verified" in printed
    assert any("linkage match rates" in h and "dwp" in h for h in html), "the linked result shows its linkage quality"
    assert "linkage match rates (DP" in printed
