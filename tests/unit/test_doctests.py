"""Every docstring example in the source runs: those that need no federation here, the analyst
client's and results' against a live test federation in tests/integration/test_api.py."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import fedlink

#: The source folder: the library and any package beside it (the tools).
SRC = Path(fedlink.__file__).parent.parent
#: Their examples call a connected federation (``fed``); tests/integration/test_api.py runs them.
NEED_A_FEDERATION = frozenset({"fedlink.analyst.client", "fedlink.analyst.result"})


def modules_with_examples() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_examples_are_found() -> None:
    found = set(modules_with_examples())
    assert found >= NEED_A_FEDERATION, "a module whose examples need a federation has none any more"
    assert len(found - NEED_A_FEDERATION) >= 10


@pytest.mark.parametrize("name", sorted(set(modules_with_examples()) - NEED_A_FEDERATION))
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    outcome = doctest.testmod(module, optionflags=flags, report=True)
    assert outcome.attempted > 0, f"{name} has '>>>' in its source but doctest found no example"
    assert outcome.failed == 0
