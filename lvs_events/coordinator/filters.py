"""A Subscribe request at the edge: its filter on protobuf events, and where ``since`` starts.

The matching rule is the domain's (:class:`lvs_events.domain.filters.EventFilter`); this module
only applies it to the log's protobuf events: the type is checked on the message (no decoding),
and only an event of a wanted type is converted to its domain value and matched.
"""

from __future__ import annotations

from collections.abc import Callable

from lvs_events import wire
from lvs_events.coordinator.stores import EventStore
from lvs_events.domain.events import PAYLOAD_TYPES
from lvs_events.domain.filters import EventFilter
from lvs_events.errors import Compacted, InvalidEvent
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import events_pb2 as pb

__all__ = ["first_revision_since", "request_filter", "wire_matcher"]

# oneof field name -> type name
_TYPE_OF_FIELD = {field: PAYLOAD_TYPES[tp] for tp, field in wire.PAYLOAD_FIELDS.items()}


def request_filter(request: cpb.SubscribeRequest) -> EventFilter:
    """The request's filter; raises :class:`~lvs_events.domain.filters.InvalidFilter`."""
    return EventFilter(
        types=request.types, nodes=request.nodes, virtuals=request.virtuals, reals=request.reals
    )


def _everything(_msg: pb.Event) -> bool:
    return True


def wire_matcher(wanted: EventFilter) -> Callable[[pb.Event], bool]:
    """``wanted`` as a predicate on protobuf events. An event that does not decode matches
    nothing but an empty filter (it is in the log: a reader without filters gets it all)."""
    if wanted.everything:
        return _everything

    def match(msg: pb.Event) -> bool:
        which = msg.WhichOneof("payload")
        if which is None or not wanted.wants_type(_TYPE_OF_FIELD[which]):
            return False
        try:
            event = wire.event_from_pb(msg)
        except InvalidEvent:
            return False
        return wanted(event)

    return match


async def _wall_time(store: EventStore, revision: int) -> float | None:
    """The wall time of the event at ``revision``; None when it is no longer (or not yet) kept."""
    try:  # read to its end (one item): the reader is closed before we return
        items = [item async for item in store.read(revision, follow=False, to_revision=revision)]
    except Compacted:
        return None
    return items[0].event.wall_time if items else None


async def first_revision_since(store: EventStore, since: float, from_revision: int = 1) -> int:
    """The first revision at or after ``from_revision`` whose event's wall time is ``since`` or
    later; the head + 1 when no kept event is that recent.

    A binary search over the dense revisions, reading one event per step (O(log n) reads).
    Wall times are the publishers' clocks, so the log is only nearly ordered by them: the
    search assumes it is ordered, and the revision it finds is where a reader starts (every
    later event is sent, whatever its wall time). A revision trimmed away during the search
    counts as older than ``since``.
    """
    bounds = await store.bounds()
    lo, hi = max(from_revision, bounds.first, 1), bounds.head + 1
    while lo < hi:  # invariant: every revision below lo is older than since; hi's is not (or hi = head + 1)
        mid = (lo + hi) // 2
        wall = await _wall_time(store, mid)
        if wall is None or wall < since:
            lo = mid + 1
        else:
            hi = mid
    return lo
