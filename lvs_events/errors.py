"""The exception hierarchy. Every error we raise on purpose is one of these; chain with ``from``."""

from __future__ import annotations


class LvsEventsError(Exception):
    """Base of every lvs-events error."""


class InvalidEvent(LvsEventsError):
    """An event that must not enter the log (malformed, oversized, unknown references)."""


class StoreError(LvsEventsError):
    """The event store (etcd) failed."""


class StoreUnavailable(StoreError):
    """etcd could not be reached within the deadline."""


class Compacted(StoreError):
    """The requested revision is older than the oldest event kept; start from the snapshot."""

    def __init__(self, requested: int, first_available: int) -> None:
        super().__init__(
            f"revision {requested} was compacted away; the log starts at {first_available}: "
            "load the snapshot and replay the tail"
        )
        self.requested = requested
        self.first_available = first_available


class Fenced(LvsEventsError):
    """An event published under a leader term that is no longer current."""


class CoordinatorUnavailable(LvsEventsError):
    """No coordinator endpoint answered within the deadline."""


class DataplaneError(LvsEventsError):
    """The dataplane refused or failed an operation."""
