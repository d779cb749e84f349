"""``autoreload=yes``: the active agent watches its ldirectord.cf and applies changes through the log.

ldirectord re-reads its file when it changes; here the change becomes a ``ConfigApplied`` event,
so the standby gets it too (no ``callback=`` rsync). A file that does not parse, or that the log
would refuse, keeps the config in force and is recorded once as a ``ConfigRejected`` event with
the error (file:line:column). Only the active agent publishes; a standby watches nothing.

The decision is pure (:func:`decide`); the task around it stats the file every ``interval``
seconds (the config's ``checkinterval``, as ldirectord checks between rounds) and parses in a
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import structlog

from lvs_events.domain.config import Config
from lvs_events.domain.config_diff import removal
from lvs_events.domain.events import ConfigApplied, ConfigRejected, Payload
from lvs_events.domain.validate import validate_config
from lvs_events.errors import InvalidEvent
from lvs_events.ldirectord import ConfigError, parse_text

__all__ = ["AutoReloader", "Loaded", "decide", "load"]

# The blast-radius guard: a reloaded file removing every virtual service or real server in force,
# or more than this share of either, is refused (recorded); an operator applies it on purpose
# with ``lvs-events config apply --yes``.
MAX_REMOVAL = 0.5


@dataclass(frozen=True, slots=True)
class Loaded:
    """One read of the file: the config, or the error that refused it."""

    digest: str
    config: Config | None
    error: str = ""


def load(path: Path) -> Loaded:
    """Read and parse (blocking: call in a thread)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        cfg = parse_text(data.decode("utf-8", "surrogateescape"), str(path))
        validate_config(cfg)
    except (ConfigError, InvalidEvent) as e:
        return Loaded(digest, None, str(e))
    return Loaded(digest, cfg)


def _same(a: Config | None, b: Config | None) -> bool:
    if a is None or b is None:
        return a is b
    return replace(a, source="") == replace(b, source="")


def decide(in_force: Config | None, loaded: Loaded, source: str, last_rejected: str) -> Payload | None:
    """What to publish for a (changed) file: nothing, the new config, or the refusal."""
    if loaded.config is None:
        if loaded.digest == last_rejected:
            return None  # already recorded
        return ConfigRejected(source, loaded.error[:4096], loaded.digest)
    if _same(in_force, loaded.config):
        return None
    cut = removal(in_force, loaded.config)
    if cut.exceeds(MAX_REMOVAL):
        if loaded.digest == last_rejected:
            return None
        why = f"{source} {cut.describe()}: not reloaded; apply it with lvs-events config apply --yes"
        return ConfigRejected(source, why, loaded.digest)
    return ConfigApplied(replace(loaded.config, source=source), loaded.digest)


class _Submit(Protocol):
    def submit(self, payload: Payload, reason: str = "", term: int = 0) -> object | None: ...


class AutoReloader:
    def __init__(
        self,
        path: Path,
        publisher: _Submit,
        *,
        in_force: Callable[[], Config | None],
        is_active: Callable[[], bool],
        term: Callable[[], int] = lambda: 0,
        min_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.publisher = publisher
        self.in_force = in_force
        self.is_active = is_active
        self.term = term
        self.min_interval = min_interval
        self.last_rejected = ""
        self._seen: tuple[int, int] | None = None
        # the file as it was when the agent started: not a change (publishing the file at start
        # is --publish-config's decision, which never replaces a config published elsewhere)
        self._started_with: tuple[int, int] | None = None
        self.log = structlog.get_logger("lvs_events.agent.autoreload").bind(path=str(path))

    def interval(self) -> float:
        cfg = self.in_force()
        every = cfg.globals.checkinterval if cfg is not None else 5.0
        return max(self.min_interval, min(every, 60.0))

    async def poll_once(self) -> Payload | None:
        """Check the file once; publish and return what changed (None: nothing to do)."""
        cfg = self.in_force()
        if cfg is None or not cfg.globals.autoreload or not self.is_active():
            self._seen = None  # look again when we become active or autoreload is turned on
            return None
        try:
            st = await asyncio.to_thread(os.stat, self.path)
        except OSError as e:
            self.log.warning("autoreload.stat_failed", error=str(e))
            return None
        seen = (st.st_mtime_ns, st.st_size)
        if seen in (self._seen, self._started_with):
            return None
        try:
            loaded = await asyncio.to_thread(load, self.path)
        except OSError as e:
            self.log.warning("autoreload.read_failed", error=str(e))
            return None
        self._seen = seen
        payload = decide(self.in_force(), loaded, str(self.path), self.last_rejected)
        if payload is None:
            return None
        if isinstance(payload, ConfigRejected):
            self.last_rejected = loaded.digest
            self.log.error("autoreload.refused", error=loaded.error)
            reason = "autoreload: file refused, config in force kept"
        else:
            self.last_rejected = ""
            self.log.info("autoreload.changed", digest=loaded.digest)
            reason = "autoreload: file changed"
        self.publisher.submit(payload, reason=reason, term=self.term())
        return payload

    async def run(self) -> None:
        try:
            st = await asyncio.to_thread(os.stat, self.path)
            self._started_with = (st.st_mtime_ns, st.st_size)
        except OSError as e:
            self.log.warning("autoreload.stat_failed", error=str(e))
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval())
