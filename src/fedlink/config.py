"""Reading TOML configuration files into validated models, with one-line errors.

Every config model derives from :class:`ConfigModel`, and every file-level model from
:class:`ConfigFile` (which records the file it was read from). Two field types carry the rules that
used to be repeated per config class:

- :data:`ConfigPath`: a path. ``${VAR}``, ``${VAR:-default}`` and ``$VAR`` are replaced by the
  environment, ``~`` by the home folder, and a relative path is taken relative to the folder of the
  config file (a relative value of an environment variable, relative to the current directory), so
  ``fedlink node serve --config examples/federation/nodes/dfe/node.toml`` works
from anywhere.
- :data:`EnvStr`: a setting such as an address, with the same environment references replaced.

An unset variable without a default is a one-line error naming the entry and the variable; ``$$`` is
a literal ``$``. Free text (names, titles, purposes, descriptions) is taken as written. Secrets are
never inline: a config names the file that holds them. :class:`TlsSection` is the one ``[tls]``
model of the coordinator, the nodes and (flat, in its profile) the analyst.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import BeforeValidator, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from fedlink.errors import ConfigError
from fedlink.frozen import Frozen
from fedlink.pki import TlsFiles

Model = TypeVar("Model", bound="ConfigModel")
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
#: The file a model was read from, when it was not read from one (relative paths: the current folder).
_NO_FILE = Path("config.toml")


class _Unset(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _substitute(value: str, paths: bool) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1) or match.group(3), match.group(2)
        if name in os.environ:
            env_value = os.environ[name]
            looks_like_path = paths and ("/" in env_value or env_value.startswith("."))
            return (
                str(Path(env_value).resolve()) if looks_like_path and not Path(env_value).is_absolute() else env_value
            )
        if default is not None:
            return default
        raise _Unset(name)

    return _VAR.sub(one, value)


def expand(value: str, source: Path) -> str:
    """Substitute ``${VAR}`` / ``${VAR:-default}`` / ``$VAR`` in ``value`` from the environment."""
    try:
        return _substitute(value, paths=True)
    except _Unset as unset:
        raise ConfigError(
            f"{source}: environment variable {unset.name} is not set; set it or give ${{{unset.name}:-default}}"
        ) from None


def resolve_path(value: str | Path, source: Path) -> Path:
    """``value`` with environment references replaced, as an absolute path (relative: to ``source``'s folder)."""
    path = Path(expand(str(value), source)).expanduser()
    return path if path.is_absolute() else (source.parent / path).resolve()


def _source(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("source", _NO_FILE))


def _expanded(value: Any, info: ValidationInfo, paths: bool) -> Any:
    if not isinstance(value, str | Path):
        return value  # pydantic reports the wrong type
    try:
        text = _substitute(str(value), paths)
    except _Unset as unset:
        message = f"environment variable {unset.name} is not set; set it or write ${{{unset.name}:-default}}"
        raise PydanticCustomError("unset_variable", message) from None
    if not paths:
        return text
    path = Path(text).expanduser()
    # a string, which pydantic's Path accepts in Python and in JSON mode alike (JSON mode refuses a Path)
    return str(path if path.is_absolute() else (_source(info).parent / path).resolve())


#: A path in a config file: environment references replaced, absolute (relative to the file's folder).
ConfigPath = Annotated[Path, BeforeValidator(lambda value, info: _expanded(value, info, paths=True))]
#: A setting in a config file (an address, a host) with its environment references replaced.
EnvStr = Annotated[str, BeforeValidator(lambda value, info: _expanded(value, info, paths=False))]


class ConfigModel(Frozen):
    """The base of every model read from a config file (immutable, unknown keys refused)."""


class ConfigFile(ConfigModel):
    """A whole config file: ``source`` is the file it was read from (filled in by :func:`load_model`)."""

    source: Path = _NO_FILE

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "source" not in data and isinstance(info.context, dict):
            return {**data, "source": info.context.get("source", _NO_FILE)}
        return data

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, context: Any | None = None, **kwargs: Any) -> Self:
        """Validate ``obj``; a dict built in code that names its ``source`` file has its relative paths
        resolved against that file's folder, as if it had been read from there."""
        if context is None and isinstance(obj, dict) and obj.get("source") is not None:
            context = {"source": Path(str(obj["source"]))}
        return super().model_validate(obj, *args, context=context, **kwargs)

    def resolve(self, value: str) -> Path:
        """A path-or-name value (a table's source) as a path relative to this file's folder."""
        return resolve_path(value, self.source)


class TlsSection(ConfigModel):
    """``[tls]``: a party's certificate, private key and the federation CA, as PEM files."""

    cert: ConfigPath
    key: ConfigPath
    ca: ConfigPath
    #: The coordinator's revocation list (written by `fedlink pki revoke`); nodes take none.
    revoked: ConfigPath | None = None

    def files(self) -> TlsFiles:
        # Path(): a section built with model_copy in code holds what it was given
        return TlsFiles(cert=Path(self.cert), key=Path(self.key), ca=Path(self.ca))


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
