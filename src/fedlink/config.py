"""Reading TOML configuration files into validated models, with one-line errors.

Paths in a config file may use ``${VAR}`` or ``${VAR:-default}``; a relative path is taken relative
to the directory of the config file (a relative value of an environment variable, relative to the
current directory), so ``fedlink node serve --config nodes/dfe/node.toml`` works from anywhere.
Secrets are never inline: a config names the file that holds them.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from fedlink.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str, source: Path) -> str:
    """Substitute ``${VAR}`` / ``${VAR:-default}`` in ``value``."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            env_value = os.environ[name]
            looks_like_path = "/" in env_value or env_value.startswith(".")
            return (
                str(Path(env_value).resolve()) if looks_like_path and not Path(env_value).is_absolute() else env_value
            )
        if default is not None:
            return default
        raise ConfigError(f"{source}: environment variable {name} is not set; set it or give ${{{name}:-default}}")

    return _VAR.sub(substitute, value)


def resolve_path(value: str, source: Path) -> Path:
    path = Path(expand(value, source)).expanduser()
    return path if path.is_absolute() else (source.parent / path).resolve()


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def load_model(path: Path, model: type[Model], what: str) -> Model:
    """Read ``path`` as TOML and validate it as ``model``; every failure is a one-line ConfigError."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} config {path} does not exist; pass the path of an existing file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} config {path} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 TOML") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax") from exc
    try:
        return model.model_validate(raw, context={"source": path.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}; fix that entry") from exc


def one_currency(data: object, what: str) -> object:
    """A pydantic ``before`` check for an entry that caps or asks for privacy budget: budgets have one
    currency, rho (zCDP), so an ``epsilon`` there is refused with the conversion to write instead."""
    if isinstance(data, dict) and "epsilon" in data:
        raise ValueError(
            f"{what} gives an epsilon budget; budgets have one currency, rho (zCDP): write rho = R instead (an "
            "epsilon-DP query costs rho = epsilon^2 / 2, so a budget meant for ten queries at epsilon 1 is rho = 5)"
        )
    return data
