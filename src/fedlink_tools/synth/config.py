"""How often each kind of identifier error happens, and reading that from TOML.

A TOML file has a ``[corruption]`` table of rates and, optionally, ``[corruption.<node>]`` tables
that override some rates at one node::

    [corruption]
    typo = 0.02
    missing_dob = 0.01

    [corruption.charity_north]
    missing_dob = 0.10

Rates left out keep their defaults (the values in ``default_corruption.toml``, shipped with fedlink).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from fedlink.errors import ConfigError
from fedlink_tools.synth.layout import NODES

DEFAULT_CONFIG_RESOURCE: Final = "default_corruption.toml"


@dataclass(frozen=True)
class CorruptionRates:
    """Probabilities, each in [0, 1], that a department records a person's identifiers wrongly.

    A rate applies once per person registered at a department (all of a person's rows in a table share
    the identifiers the department recorded). Rates marked *where possible* apply only to records the
    error can happen to; the others apply to every record. ``overrides`` maps a node name to the rates
    that differ there; :meth:`for_node` resolves them.
    """

    #: A keyboard-neighbour substitution, an insertion, a deletion or a transposition in a name.
    typo: float = 0.02
    #: First name recorded as a nickname (where the name has one).
    nickname: float = 0.05
    #: First and last name recorded in each other's place.
    name_swap: float = 0.005
    #: A double-barrelled surname recorded as one part, or a single one given a second with a hyphen.
    double_barrel: float = 0.01
    #: A different surname, as after marriage (adults only, where possible).
    surname_change: float = 0.02
    #: A different postcode in the same region, as after a move.
    postcode_moved: float = 0.08
    #: Postcode written against the department's habit: space dropped (or added), lower case, or both.
    postcode_format: float = 0.2
    missing_first_name: float = 0.005
    missing_dob: float = 0.01
    missing_postcode: float = 0.02
    missing_sex: float = 0.01
    #: Day and month of birth swapped (where the day is 12 or less and differs from the month).
    dob_day_month_swap: float = 0.01
    #: One digit of the date of birth off by one, still a valid date.
    dob_typo: float = 0.01
    #: Accents dropped from a name ("Zoë" -> "Zoe", where the name has any).
    accent_loss: float = 0.3
    #: Names written all upper case or all lower case.
    case_variation: float = 0.02
    overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in rate_names():
            _check_rate(name, getattr(self, name), "CorruptionRates")
        frozen: dict[str, Mapping[str, float]] = {}
        for node, rates in self.overrides.items():
            if node not in NODES:
                raise ConfigError(f"unknown node {node!r} in corruption overrides; use one of {', '.join(NODES)}")
            for name, value in rates.items():
                if name not in rate_names():
                    raise ConfigError(f"unknown corruption rate {name!r} for node {node}; use one of {_RATE_LIST}")
                _check_rate(name, value, f"overrides for {node}")
            frozen[node] = MappingProxyType(dict(rates))
        object.__setattr__(self, "overrides", MappingProxyType(frozen))

    def for_node(self, node: str) -> CorruptionRates:
        """The rates in force at ``node``: these rates with that node's overrides applied."""
        if node not in NODES:
            raise ConfigError(f"unknown node {node!r}; use one of {', '.join(NODES)}")
        return dataclasses.replace(self, overrides={}, **self.overrides.get(node, {}))

    @classmethod
    def zero(cls) -> CorruptionRates:
        """No corruption at all: every department records every identifier exactly."""
        zeros: dict[str, Any] = dict.fromkeys(rate_names(), 0.0)
        return cls(**zeros)

    def as_dict(self) -> dict[str, Any]:
        """The rates and overrides as plain JSON-ready values."""
        out: dict[str, Any] = {name: getattr(self, name) for name in rate_names()}
        out["overrides"] = {node: dict(rates) for node, rates in self.overrides.items()}
        return out


def rate_names() -> tuple[str, ...]:
    """Names of every corruption rate, in declaration order."""
    return _RATE_NAMES


_RATE_NAMES: Final = tuple(f.name for f in dataclasses.fields(CorruptionRates) if f.name != "overrides")
_RATE_LIST: Final = ", ".join(_RATE_NAMES)


def _check_rate(name: str, value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"corruption rate {name} in {where} must be a number in [0, 1], not {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"corruption rate {name} in {where} is {value}; give a probability in [0, 1]")


def load_corruption_config(path: Path | str) -> CorruptionRates:
    """Read corruption rates from the ``[corruption]`` table of a TOML file; see the module docstring."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"corruption config {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read corruption config {path}: {exc}; check the file") from None
    return _parse(text, str(path))


def default_corruption() -> CorruptionRates:
    """The rates shipped with fedlink (``default_corruption.toml``), per-node overrides included."""
    text = resources.files("fedlink_tools.synth").joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")
    return _parse(text, DEFAULT_CONFIG_RESOURCE)


def _parse(text: str, source: str) -> CorruptionRates:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"corruption config {source} is not valid TOML ({exc}); fix the syntax") from None
    unknown_top = sorted(set(document) - {"corruption"})
    if unknown_top:
        raise ConfigError(f"unknown table {unknown_top[0]!r} in {source}; put the rates under [corruption]")
    section = document.get("corruption")
    if not isinstance(section, dict):
        raise ConfigError(f"{source} has no [corruption] table; add one with the rates to change")
    rates: dict[str, Any] = {}
    overrides: dict[str, dict[str, float]] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            if key not in NODES:
                raise ConfigError(f"unknown node [corruption.{key}] in {source}; use one of {', '.join(NODES)}")
            overrides[key] = {}
            for name, node_value in value.items():
                _check_key(name, f"[corruption.{key}]", source)
                _check_rate(name, node_value, f"[corruption.{key}] of {source}")
                overrides[key][name] = float(node_value)
        else:
            _check_key(key, "[corruption]", source)
            _check_rate(key, value, f"[corruption] of {source}")
            rates[key] = float(value)
    return CorruptionRates(**rates, overrides=overrides)


def _check_key(name: str, table: str, source: str) -> None:
    if name not in rate_names():
        raise ConfigError(f"unknown corruption rate {name!r} in {table} of {source}; use one of {_RATE_LIST}")
