"""The health-check seam.

A :class:`HealthChecker` watches the folded state (for the configuration in force) and reports
verdict *transitions* through a :class:`HealthReporter`; the agent turns them into
``RealServerHealth`` events observed by this node. The real checkers (connect, negotiate, ping,
external, ...) come in their own issue; this module ships the interface and
:class:`StaticChecker`, which knows only ``checktype=on`` (always up) and ``checktype=off``
(always down).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from lvs_events.domain.config import Config
from lvs_events.domain.events import RealServerHealth
from lvs_events.domain.state import RealKey, State

__all__ = ["HealthChecker", "HealthReporter", "PublisherReporter", "StaticChecker", "static_transitions"]


class HealthReporter(Protocol):
    def report(
        self, virtual: str, real: str, up: bool, *, checktype: str, detail: str = "", latency_ms: float = 0.0
    ) -> bool:
        """Publish one verdict; False when it could not be queued (the checker should resync later)."""
        ...


class HealthChecker(Protocol):
    def observe(self, state: State) -> None:
        """Called by the apply loop after it folded new items (the config may have changed)."""
        ...

    def resync(self) -> None:
        """Report the current verdict of every checked server again (after dropped reports)."""
        ...

    async def run(self, reporter: HealthReporter) -> None:
        """Check until cancelled, reporting transitions."""
        ...


class _Submit(Protocol):
    node: str

    def submit(self, payload: RealServerHealth, reason: str = "", term: int = 0) -> object | None: ...


class PublisherReporter:
    """A :class:`HealthReporter` over the agent's :class:`agent.publisher.Publisher`."""

    def __init__(self, publisher: _Submit) -> None:
        self.publisher = publisher

    def report(
        self, virtual: str, real: str, up: bool, *, checktype: str, detail: str = "", latency_ms: float = 0.0
    ) -> bool:
        payload = RealServerHealth(
            virtual=virtual,
            real=real,
            up=up,
            observer=self.publisher.node,
            checktype=checktype,
            detail=detail,
            latency_ms=latency_ms,
        )
        return (
            self.publisher.submit(payload, reason=f"check {checktype}: {'up' if up else 'down'}") is not None
        )


def static_verdicts(config: Config | None) -> dict[RealKey, tuple[bool, str]]:
    """The verdicts known without checking: ``on`` servers are up, ``off`` servers down."""
    out: dict[RealKey, tuple[bool, str]] = {}
    if config is None:
        return out
    for v in config.virtuals:
        ct = v.check.checktype
        if ct in ("on", "off"):
            for r in v.reals:
                out[(v.key, r.key)] = (ct == "on", ct)
    return out


def static_transitions(state: State, node: str, sent: dict[RealKey, bool]) -> list[tuple[RealKey, bool, str]]:
    """Pure: the verdicts this node must report, i.e. those that differ from both what the log
    records for this node and what it already sent."""
    out: list[tuple[RealKey, bool, str]] = []
    for key, (up, ct) in static_verdicts(state.config).items():
        views = state.health.get(key)
        logged = views.get(node) if views is not None else None
        if logged is not None and logged.up == up:
            continue
        if sent.get(key) == up:
            continue
        out.append((key, up, ct))
    return out


class StaticChecker:
    """``checktype=on`` / ``off`` only: reports those verdicts when the config brings them in."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._state = State()
        self._sent: dict[RealKey, bool] = {}
        self._wake = asyncio.Event()

    def observe(self, state: State) -> None:
        if state.config is not self._state.config or state.health is not self._state.health:
            self._state = state
            self._wake.set()

    def resync(self) -> None:
        self._sent.clear()
        self._wake.set()

    async def run(self, reporter: HealthReporter) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for key, up, ct in static_transitions(self._state, self.node, self._sent):
                if reporter.report(key[0], key[1], up, checktype=ct, detail=f"checktype={ct}"):
                    self._sent[key] = up
