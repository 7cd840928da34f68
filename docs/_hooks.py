"""MkDocs hooks for fedlink's docs: pages made from files that live elsewhere in the repository.

- ``reference/cli.md``: the marker ``<!-- fedlink-cli -->`` becomes the reference of every command,
  rendered from the Typer app by Typer's own ``typer MODULE utils docs`` (the module is the one the
  ``fedlink`` console script names in pyproject.toml, so the page follows the code wherever it moves).
- ``developers.md``: DEVELOPERS.md at the repository root, its ``docs/`` links made site-relative.
- ``benchmarks/REPORT.md`` and its plots: the benchmark report as ``fedlink bench report`` writes it.

Each stays one file in the repository; the site only shows it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CLI_MARKER = "<!-- fedlink-cli -->"


def _cli_module() -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    return str(scripts["fedlink"]).partition(":")[0]


def _cli_reference() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "typer", _cli_module(), "utils", "docs", "--name", "fedlink"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rendering the CLI reference failed: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    # The page has its own title: drop Typer's top heading (`# fedlink`), keep the rest as it is.
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines)


def on_files(files: Files, config: Any) -> Files:
    extra = [("developers.md", ROOT / "DEVELOPERS.md"), ("benchmarks/REPORT.md", ROOT / "benchmarks" / "REPORT.md")]
    extra += [(f"benchmarks/plots/{png.name}", png) for png in sorted((ROOT / "benchmarks" / "plots").glob("*.png"))]
    for uri, path in extra:
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    uri = page.file.src_uri
    if uri == "reference/cli.md" and CLI_MARKER in markdown:
        return markdown.replace(CLI_MARKER, _cli_reference())
    if uri == "developers.md":
        return re.sub(r"\]\(docs/", "](", markdown)
    return markdown
