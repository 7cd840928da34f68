"""Optional packages: the features that need them check first, and name the extra that installs them.

fedlink's own dependencies cover the federation; charts (``fedlink scenario``, the benchmark report's
plots) and data frames (``to_pandas()``, ``to_polars()``) need packages a node or a coordinator never
uses, so they are extras. A feature calls :func:`require` before it does anything that costs (a
scenario before its first query, so no budget is spent), and a missing package is one line that
says which extra to install.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from fedlink.errors import BadInput

#: extra (``pip install 'fedlink[EXTRA]'``) -> the package it installs, as imported
EXTRAS = {"charts": "matplotlib", "pandas": "pandas", "polars": "polars"}


def require(extra: str, feature: str) -> ModuleType:
    """The package of ``extra``, imported; a :class:`BadInput` naming the extra if it is missing."""
    package = EXTRAS[extra]
    try:
        return import_module(package)
    except ImportError:
        raise BadInput(
            f"{feature} needs {package}, which is not installed; install it with: pip install 'fedlink[{extra}]'"
        ) from None
