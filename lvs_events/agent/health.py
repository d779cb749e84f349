"""The health-check seam.

A :class:`HealthChecker` is given the folded state (:meth:`HealthChecker.on_state`, for the
configuration in force) and reports verdict *transitions* through a :class:`HealthReporter`; the
agent turns them into ``RealServerHealth`` events observed by this node, and the transitions of
the checker's own health (behind schedule, inconclusive checks) into ``CheckerHealth`` events.
The implementation is :class:`lvs_events.agent.checks.Checker` (every ldirectord check type,
``on`` and ``off`` included).
"""

from __future__ import annotations

from typing import Protocol

from lvs_events.domain.events import CheckerHealth, RealServerHealth
from lvs_events.domain.state import State

__all__ = ["HealthChecker", "HealthReporter", "PublisherReporter"]


class HealthReporter(Protocol):
    def report(
        self, virtual: str, real: str, up: bool, *, checktype: str, detail: str = "", latency_ms: float = 0.0
    ) -> bool:
        """Publish one verdict; False when it could not be queued (the checker should resync later)."""
        ...

    def report_checker(self, health: CheckerHealth) -> bool:
        """Publish the checker's own health; False when it could not be queued (tried again later)."""
        ...


class HealthChecker(Protocol):
    def on_state(self, state: State) -> None:
        """The folded state, given by the apply loop after it folded new items: checks follow
        the configuration in it (which may have changed)."""
        ...

    def resync(self) -> None:
        """Report the current verdict of every checked server again (after dropped reports)."""
        ...

    async def run(self, reporter: HealthReporter) -> None:
        """Check until cancelled, reporting transitions."""
        ...

    def status(self) -> dict[str, object]:
        """The checker's own health and counters, for the agent's status file."""
        ...


class _Submit(Protocol):
    node: str

    def submit(
        self, payload: RealServerHealth | CheckerHealth, reason: str = "", term: int = 0
    ) -> object | None: ...


class PublisherReporter:
    """A :class:`HealthReporter` over the agent's :class:`lvs_events.agent.publisher.Publisher`."""

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

    def report_checker(self, health: CheckerHealth) -> bool:
        state = "degraded" if health.degraded else "healthy"
        reason = f"health checker {state}" + (f": {health.detail}" if health.detail else "")
        return self.publisher.submit(health, reason=reason) is not None
