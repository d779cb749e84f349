"""Check credentials out of a configuration, for readers that may not see them. Pure.

ldirectord's check directives ``login``, ``passwd`` and ``secret`` hold the credentials the
health checks log in with (FTP, IMAP, MySQL, RADIUS, ...). The coordinator serves configurations
to every principal that may read the log; :func:`redact` is what it serves to those that neither
run the checks nor publish configurations (readers, the witness): each credential that is set is
replaced by :data:`REDACTED`, every other value is left as it is. An unset credential stays unset,
so a reader still sees which services log in.

Digests are computed on the configuration as published and never on a redacted copy: the
``ConfigApplied`` digest (of the source text) and the table digest (credentials do not reach the
table) are the same for every reader.
"""

from __future__ import annotations

import dataclasses

from lvs_events.domain.config import CheckSettings, Config
from lvs_events.domain.state import State

REDACTED = "<redacted>"


def _hide(value: str | None) -> str | None:
    return None if value is None else REDACTED


def _names_credentials(check: CheckSettings) -> bool:
    return check.login is not None or check.passwd is not None or check.secret is not None


def _check(check: CheckSettings) -> CheckSettings:
    if not _names_credentials(check):
        return check
    return dataclasses.replace(
        check, login=_hide(check.login), passwd=_hide(check.passwd), secret=_hide(check.secret)
    )


def has_credentials(config: Config) -> bool:
    """Whether any virtual service's check names a credential."""
    return any(_names_credentials(v.check) for v in config.virtuals)


def redact(config: Config) -> Config:
    """``config`` with every set credential replaced by :data:`REDACTED` (the same object when
    there is none)."""
    if not has_credentials(config):
        return config
    virtuals = tuple(
        dataclasses.replace(v, check=_check(v.check)) if _names_credentials(v.check) else v
        for v in config.virtuals
    )
    return dataclasses.replace(config, virtuals=virtuals)


def redact_state(state: State) -> State:
    """``state`` with its configuration in force redacted (:func:`redact`)."""
    if state.config is None:
        return state
    config = redact(state.config)
    return state if config is state.config else dataclasses.replace(state, config=config)
