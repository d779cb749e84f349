"""The log's hash chain: every event carries the hash of the one before it. Pure.

``hash(n) = sha256(hash(n - 1) || body(n))`` where ``body(n)`` is the event at revision ``n``
as stored, revision included, with its two chain fields (``prev_hash``, ``hash``) unset; the
chain starts from :func:`genesis` of the cluster. Each stored event carries ``prev_hash`` (the
hash of its predecessor) and ``hash`` (its own), ``head`` in etcd carries the newest hash and a
snapshot the hash at its revision, so a reader can check the log from the start, from a
snapshot, or from any event it trusts.

What the chain detects: an entry changed, removed or put in behind the coordinators' back
(anything not done by rewriting every later entry and ``head`` as well). It is not a signature:
whoever can write etcd can rebuild a consistent chain from the edit on; the hashes a reader
remembers (an agent's last verified hash, a snapshot's head) are what pin the past.

Bytes only (the protobuf encoding is the caller's, :func:`lvs_events.wire.chain_link`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

HASH_BYTES = 32


def genesis(cluster: str) -> bytes:
    """The chain's value before revision 1: a constant per cluster."""
    return hashlib.sha256(b"lvs-events chain genesis\0" + cluster.encode()).digest()


def link_hash(prev: bytes, body: bytes) -> bytes:
    """The hash of an event whose predecessor's hash is ``prev`` and whose body is ``body``."""
    return hashlib.sha256(prev + body).digest()


@dataclass(frozen=True, slots=True)
class Link:
    """One stored event as the chain sees it: its revision, its body (see the module docstring)
    and the two hashes it carries."""

    revision: int
    body: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place the chain does not hold: at ``revision``, ``what`` should be ``expected``
    and is ``found``."""

    revision: int
    what: str  # "prev_hash": not linked to the event before; "hash": the body was changed
    expected: bytes
    found: bytes

    def describe(self) -> str:
        return (
            f"revision {self.revision}: {self.what} is {self.found.hex() or '(none)'},"
            f" the chain expects {self.expected.hex()}"
        )


def check_link(prev: bytes | None, link: Link) -> ChainBreak | None:
    """Check one event. ``prev``: the hash its predecessor has (None: unknown, only the event's
    own hash is checked)."""
    if prev is not None and link.prev_hash != prev:
        return ChainBreak(link.revision, "prev_hash", prev, link.prev_hash)
    computed = link_hash(link.prev_hash, link.body)
    if link.hash != computed:
        return ChainBreak(link.revision, "hash", computed, link.hash)
    return None


def verify(start: bytes | None, links: Iterable[Link]) -> tuple[ChainBreak | None, bytes | None, int]:
    """Check a run of consecutive events after a point whose hash is ``start`` (None: unknown).

    Returns (the first break or None, the hash after the last event checked, the number of
    events checked). Revisions must follow each other: a missing one is a break (its
    successor's ``prev_hash`` is checked against the hash before the hole)."""
    follower = ChainFollower(start)
    checked = 0
    for link in links:
        if follower.revision and link.revision != follower.revision + 1:
            follower.revision = link.revision - 1  # check the link across the hole
        found = follower.step(link)
        checked += 1
        if found is not None:
            return found, follower.head, checked
    return None, follower.head, checked


class ChainFollower:
    """Checks a log as it is read, one event at a time (an agent's subscription).

    ``on_break`` is called with each break found; the follower then goes on from the event as
    it is (one report per break, not one per later event)."""

    def __init__(
        self,
        head: bytes | None = None,
        *,
        revision: int = 0,
        on_break: Callable[[ChainBreak], None] | None = None,
    ) -> None:
        self.head = head  # the hash of `revision` (None: unknown)
        self.revision = revision
        self.breaks = 0
        self._on_break = on_break

    def reset(self, revision: int, head: bytes | None) -> None:
        """Continue from a snapshot (or any state trusted) at ``revision`` with hash ``head``."""
        self.revision = revision
        self.head = head or None

    def step(self, link: Link) -> ChainBreak | None:
        """Check the next event; the break found (also passed to ``on_break``) or None."""
        prev = self.head
        if self.revision and link.revision != self.revision + 1:
            prev = None  # not the next one (a filtered or resumed read): only its own hash
        found = check_link(prev, link)
        self.revision = link.revision
        self.head = link.hash
        if found is not None:
            self.breaks += 1
            if self._on_break is not None:
                self._on_break(found)
        return found
