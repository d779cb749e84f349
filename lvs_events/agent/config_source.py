"""Where the agent's desired configuration comes from.

``--config FILE`` is an ldirectord.cf, read by ``lvs_events.ldirectord.parse_file``;
``--config-json FILE`` is a :class:`Config` in canonical JSON (``lvs_events.domain.codec``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from lvs_events.domain import codec
from lvs_events.domain.config import Config
from lvs_events.errors import LvsEventsError
from lvs_events.ldirectord import ConfigError, parse_file

__all__ = ["ConfigSourceError", "LoadedConfig", "load_config_json", "load_ldirectord", "same_config"]


class ConfigSourceError(LvsEventsError):
    """The configuration file could not be read or understood."""


class LoadedConfig:
    def __init__(self, config: Config, digest: str) -> None:
        self.config = config
        self.digest = digest  # sha256 of the source text


def load_ldirectord(path: Path) -> LoadedConfig:
    text = _read(path)
    try:
        cfg = parse_file(path)
    except ConfigError as e:
        raise ConfigSourceError(str(e)) from e
    return LoadedConfig(cfg, hashlib.sha256(text).hexdigest())


def load_config_json(path: Path) -> LoadedConfig:
    text = _read(path)
    try:
        cfg = codec.loads(Config, text)
    except ValueError as e:
        raise ConfigSourceError(f"{path}: not a configuration in canonical JSON: {e}") from e
    if not cfg.source:
        cfg = replace(cfg, source=str(path))
    return LoadedConfig(cfg, hashlib.sha256(text).hexdigest())


def same_config(a: Config | None, b: Config | None) -> bool:
    """Equal apart from ``source`` (where it was read from is informative only)."""
    if a is None or b is None:
        return a is b
    return replace(a, source="") == replace(b, source="")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigSourceError(f"cannot read {path}: {e.strerror}") from e
