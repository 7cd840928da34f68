"""A Griffe extension for fedlink's API reference: docstrings are written in reStructuredText's manner,
with doctest examples (``>>>`` lines and their expected output, which Markdown would read as quotes and
links) and Sphinx roles. Each doctest block becomes a fenced ``pycon`` block, shown exactly as the
doctests run it, and each role plain code."""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

# Sphinx cross-reference roles (:class:`Result`) read as code.
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc):`~?([^`]+)`")


def fence_doctests(text: str) -> str:
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        starts = line.lstrip().startswith(">>>")
        if starts and not in_block:
            out.append("```pycon")
            in_block = True
        elif in_block and not line.strip():
            out.append("```")
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


def plain_roles(text: str) -> str:
    return _ROLE.sub(r"`\1`", text)


class DoctestFences(Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(plain_roles(obj.docstring.value))
