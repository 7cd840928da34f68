"""An analyst's connection profile (``analyst.toml``): where the coordinator is and which
certificate to use. ``fedlink demo`` writes one into its working directory."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from fedlink.config import ConfigFile, ConfigPath, EnvStr, TlsSection, load_model
from fedlink.errors import ConfigError
from fedlink.pki import TlsFiles

PROFILE_ENV = "FEDLINK_PROFILE"
DEFAULT_PROFILE = Path(".fedlink") / "analyst.toml"


class AnalystProfile(ConfigFile):
    """The profile keeps the TLS files at its top level (``cert``, ``key``, ``ca``), not in ``[tls]``."""

    coordinator: EnvStr
    cert: ConfigPath
    key: ConfigPath
    ca: ConfigPath
    coordinator_name: str | None = None
    project: str | None = None
    #: Seconds to wait for the coordinator's answer to one call (up to a week).
    timeout_s: float = Field(default=120.0, gt=0, le=604_800, allow_inf_nan=False)

    @property
    def address(self) -> str:
        return self.coordinator

    def tls_files(self) -> TlsFiles:
        return TlsSection(cert=self.cert, key=self.key, ca=self.ca).files()


def find_profile(path: Path | None = None) -> Path:
    """The profile to use: an explicit path, else ``$FEDLINK_PROFILE``, else ``./.fedlink/analyst.toml``."""
    if path is not None:
        return path
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV])
    if DEFAULT_PROFILE.exists():
        return DEFAULT_PROFILE
    raise ConfigError(
        "no analyst profile; pass `profile=FILE`, set FEDLINK_PROFILE, or pass `coordinator` with `cert`, "
        "`key` and `ca` (`fedlink demo --serve` writes one)"
    )


def load_profile(path: Path) -> AnalystProfile:
    return load_model(path, AnalystProfile, "analyst profile")
