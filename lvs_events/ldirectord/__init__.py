"""ldirectord.cf, unchanged: a verdict-compatible parser, a printer and explicit name resolution.

* :func:`parse_text` / :func:`parse_file` turn ldirectord.cf into a
  :class:`lvs_events.domain.config.Config`, or raise :class:`ConfigError` at the line where
  ldirectord itself refuses the file;
* :func:`format_config` writes a ``Config`` back as ldirectord.cf (``parse_text(format_config(c))
  == c``);
* :class:`Resolver` is how host and service names are resolved: :class:`SystemResolver` (what
  ldirectord does) or :class:`StaticResolver` (tables, no I/O, for tests).
"""

from __future__ import annotations

from .errors import ConfigError, ConfigWarning
from .parser import MAX_RANGE, SERVICES, derived_service, parse_file, parse_text
from .printer import format_config
from .resolve import Resolver, StaticResolver, SystemResolver, numeric_host

__all__ = [
    "MAX_RANGE",
    "SERVICES",
    "ConfigError",
    "ConfigWarning",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
    "derived_service",
    "format_config",
    "numeric_host",
    "parse_file",
    "parse_text",
]
