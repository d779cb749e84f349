"""The agent's periodic drift check: a table changed behind the agent's back (someone ran
``ipvsadm``) is recorded as a ``DataplaneDrift`` event, then repaired.

Invariants:

* **The table compared is the one applied last.** The apply loop and this check share the
  agent's apply lock; every step that reads what the dataplane holds against the applied table
  runs under it, so no apply is half done and ``applied()`` names the table the dataplane should
  hold. A check finds nothing to do while nothing is verified applied (the apply loop's job).
* **Applies are held up for a few services' reads, never for the whole table.** The steps of
  :class:`lvs_events.agent.dataplane.Dataplane`: :meth:`~Dataplane.begin_drift_check` reads the
  whole table with no lock held; :meth:`~Dataplane.snapshot_kernel`, under the lock, reads again
  only what applies touched meanwhile; :meth:`~Dataplane.compare` (the whole table) runs with no
  lock held; a difference found is read again under the lock (:meth:`~Dataplane.recheck`: an
  apply may have overtaken the snapshot), and only what is still different is published and
  repaired.
* **A repair is recorded before it is applied**, with the revision of the table it restores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from lvs_events.agent.dataplane import Dataplane, Drift
from lvs_events.domain.events import DataplaneDrift
from lvs_events.domain.table import Table
from lvs_events.errors import DataplaneError

__all__ = ["MAX_DRIFT_LINES", "DriftChecker"]

MAX_DRIFT_LINES = 500  # per DataplaneDrift event (an event is at most 1 MB)


class DriftChecker:
    """Checks ``dataplane`` against the applied table every ``interval`` seconds (:meth:`run`).

    ``applied()`` returns (the applied revision, the applied table or None when nothing is
    verified applied); ``publish`` queues the event (it never waits)."""

    def __init__(
        self,
        node: str,
        dataplane: Dataplane,
        lock: asyncio.Lock,
        *,
        applied: Callable[[], tuple[int, Table | None]],
        publish: Callable[[DataplaneDrift], object],
        interval: float,
    ) -> None:
        self.node = node
        self.dataplane = dataplane
        self.lock = lock
        self.applied = applied
        self.publish = publish
        self.interval = interval
        self.log = structlog.get_logger("lvs_events.agent.drift").bind(node=node)

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled; a failed check is logged and the
        next one runs on time."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except DataplaneError as e:
                self.log.warning("agent.drift_check_failed", error=str(e))

    async def check(self) -> DataplaneDrift | None:
        """One check; returns the ``DataplaneDrift`` published (None: nothing to repair)."""
        dp = self.dataplane
        if self.applied()[1] is None:
            return None
        since = await dp.begin_drift_check()
        async with self.lock:
            desired = self.applied()[1]
            if desired is None:
                return None
            seen = await dp.snapshot_kernel(desired, since)
        found = await dp.compare(seen, desired)
        if found.clean:
            return None
        async with self.lock:
            revision, desired = self.applied()
            if desired is None:
                return None
            again = await dp.recheck(desired, {op.service.key: op.service for op in found.ops}.values())
            return await self._repair(revision, again, found.foreign)

    async def _repair(self, revision: int, drift: Drift, foreign: tuple[str, ...]) -> DataplaneDrift | None:
        """Publish ``drift`` as ``DataplaneDrift``, then apply its repair; the caller holds the
        apply lock."""
        if drift.clean:
            return None
        lines = drift.lines()
        if len(lines) > MAX_DRIFT_LINES:
            lines = [*lines[: MAX_DRIFT_LINES - 1], f"... and {len(lines) - MAX_DRIFT_LINES + 1} more"]
        payload = DataplaneDrift(self.node, revision, tuple(lines), foreign)
        self.publish(payload)
        self.log.warning("agent.drift", repairs=len(drift.ops), first=lines[0], foreign=len(foreign))
        await self.dataplane.apply(list(drift.ops))
        return payload
