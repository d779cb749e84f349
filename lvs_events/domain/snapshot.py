"""Folded states as readers of the log receive them: a snapshot standing in for a prefix of the
log, and the state with its rendered table at a revision. Pure values."""

from __future__ import annotations

from dataclasses import dataclass

from lvs_events.domain.state import State
from lvs_events.domain.table import Table

__all__ = ["Snapshot", "StateView"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A folded state standing in for every event up to ``revision`` (sent when the requested
    start of a subscription was compacted away, or made by an agent's own resync)."""

    revision: int
    state: State
    table_digest: str


@dataclass(frozen=True, slots=True)
class StateView:
    """The folded state and its rendered table at ``revision`` (``GetState``), with the log's
    bounds when it was read."""

    revision: int
    state: State
    table: Table
    table_digest: str
    head_revision: int
    first_revision: int
