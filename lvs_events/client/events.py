"""New events, made at the edge: the clock and the random source live here, not in the domain.

Every publisher (the agent, the CLI, the drills, the coordinator's election) makes its events
with :func:`new_event`; the id's encoding is the domain's (:func:`format_event_id`).
"""

from __future__ import annotations

import os
import time

from lvs_events.domain.events import Event, Payload, format_event_id

__all__ = ["new_event", "new_event_id"]


def new_event_id(now: float | None = None) -> str:
    """A fresh event id: milliseconds of ``now`` (default: the clock) then 80 random bits.
    Ids sort by creation time; collisions are negligible."""
    return format_event_id(int((time.time() if now is None else now) * 1000), os.urandom(10))


def new_event(
    payload: Payload,
    *,
    cluster: str,
    origin: str,
    actor: str,
    reason: str = "",
    term: int = 0,
    wall_time: float | None = None,
    event_id: str | None = None,
) -> Event:
    """An :class:`Event` ready to publish: fresh ``event_id``, wall time now, revision 0.

    Keep the returned value to retry it: publishing the same event again is a no-op in the log.
    """
    now = time.time() if wall_time is None else wall_time
    return Event(
        event_id=event_id or new_event_id(now),
        cluster=cluster,
        origin=origin,
        actor=actor,
        reason=reason,
        wall_time=now,
        payload=payload,
        term=term,
    )
