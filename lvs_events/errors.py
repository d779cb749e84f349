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


class DeadlinePassed(StoreUnavailable):
    """The caller's deadline passed before an append was sent (``sent`` False: nothing of it
    can land) or before it could be retried (``sent`` True: an attempt went out and its outcome
    is unknown; a retry with the same event ids is idempotent)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


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
