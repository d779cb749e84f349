"""What the etcd layer stores and returns: the key layout, the records and the snapshot manifest.

Pure (no etcd client): the coordinator's store contracts (:mod:`lvs_events.coordinator.stores`)
use these value types without importing etcd3aio.

Key layout under ``/lvs-events/<cluster>/`` (:class:`Keys`):

``log/<revision, 20 digits>``
    a serialized ``lvs_events.v1.Event`` with its ``revision`` field set; revisions are dense
    (1, 2, 3, ...) and assigned by the append transaction.
``ids/<event_id>``
    the revision of that event (dedup index; trimmed together with its log entry).
``head``
    ``"<last appended revision> <its hash, hex>"`` (absent: 0 and the cluster's genesis hash,
    the empty log). The append transaction compares the whole value, so a writer that loses
    the race gets both the revision and the hash to chain behind in the same round trip.
``first``
    oldest revision still in the log (decimal; absent means 1).
``snapshot``
    the manifest of the newest snapshot (:class:`Manifest`, JSON, ``"format": 2``), with the
    hash chain's head at its revision (``chain_head``).
``snapshots/<revision, 20 digits>/<writer>/<chunk, 6 digits>``
    the snapshot's state (canonical JSON of the folded State), zlib-compressed and cut into
    chunks of at most :data:`SNAPSHOT_CHUNK` bytes: a 10,000-server state is a few MB, over
    etcd's default request limit (1.5 MiB).
``expiries/<override revision, 20 digits>``
    ``expires_at`` (unix seconds, decimal) of an operator override that ends by itself: the
    index the coordinators' expiry task watches instead of the whole log. Put by the append
    transaction of an ``AdminOverride`` with an expiry, deleted by the one of the
    ``OverrideExpired`` naming it (:func:`expiry_index_op`); an entry whose override ended
    otherwise (replaced, enabled, its server removed) is deleted by the task when it comes due.
``leader``
    the leader's term, decimal, bound to its lease. An append with ``require_term`` compares it
    in the append transaction itself (fencing).
``leader_info``
    JSON :class:`LeaderRecord` (node, term, lease, Peer address), bound to the same lease.
``term``
    the counter of terms given (never bound to a lease, never decreases).
``last_leader``
    JSON of the last leader, with ``"ended": true`` once its LOST event is logged; a campaign
    after a lease expiry logs the LOST event the expiry could not.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lvs_events.domain import chain
from lvs_events.errors import StoreError
from lvs_events.pb.v1 import events_pb2 as pb

REV_DIGITS = 20
SNAPSHOT_CHUNK = 512 * 1024  # bytes per chunk key: well under etcd's default 1.5 MiB request
MAX_SNAPSHOT_STATE = 1 << 30  # refuse to inflate a manifest that claims more (corruption)
MANIFEST_FORMAT = 2


def rev_key(revision: int) -> str:
    """A revision as a log key suffix: zero-padded, so keys sort as revisions do."""
    return f"{revision:0{REV_DIGITS}d}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one cluster (see the module docstring)."""

    prefix: bytes
    log: bytes
    ids: bytes
    head: bytes
    first: bytes
    snapshot: bytes
    snapshots: bytes
    expiries: bytes
    leader: bytes
    leader_info: bytes
    term: bytes
    last_leader: bytes

    @classmethod
    def of(cls, cluster: str) -> Keys:
        p = f"/lvs-events/{cluster}/".encode()
        return cls(
            prefix=p,
            log=p + b"log/",
            ids=p + b"ids/",
            head=p + b"head",
            first=p + b"first",
            snapshot=p + b"snapshot",
            snapshots=p + b"snapshots/",
            expiries=p + b"expiries/",
            leader=p + b"leader",
            leader_info=p + b"leader_info",
            term=p + b"term",
            last_leader=p + b"last_leader",
        )

    def log_key(self, revision: int) -> bytes:
        return self.log + rev_key(revision).encode()

    def id_key(self, event_id: str) -> bytes:
        return self.ids + event_id.encode()

    def expiry_key(self, override_revision: int) -> bytes:
        return self.expiries + rev_key(override_revision).encode()

    def chunk_prefix(self, revision: int, writer: str) -> bytes:
        return self.snapshots + f"{rev_key(revision)}/{writer}/".encode()


def expiry_index_op(keys: Keys, ev: pb.Event) -> tuple[bytes, bytes | None] | None:
    """What appending ``ev`` (its ``revision`` set) does to the expiry index: (key, value) to
    put, (key, None) to delete, or None (most events: nothing). An override with an expiry
    is indexed at its own revision; an ``OverrideExpired`` removes the entry it names."""
    which = ev.WhichOneof("payload")
    if which == "admin_override":
        expires_at = ev.admin_override.expires_at
        if expires_at > 0.0:
            return keys.expiry_key(ev.revision), repr(expires_at).encode()
        return None
    if which == "override_expired":
        return keys.expiry_key(ev.override_expired.override_revision), None
    return None


def parse_expiries(keys: Keys, kvs: Sequence[tuple[bytes, bytes]]) -> dict[int, float]:
    """The expiry index's entries, override revision -> expires_at; entries that do not parse
    (written by no version of this program) are left out, and logged by the caller."""
    n = len(keys.expiries)
    out: dict[int, float] = {}
    for key, value in kvs:
        try:
            out[int(key[n:])] = float(value)
        except ValueError:
            continue
    return out


# --- the log -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """What ``head`` holds: the last revision and the hash chain's value there."""

    revision: int
    hash: bytes

    def value(self) -> bytes:
        return f"{self.revision} {self.hash.hex()}".encode()

    @classmethod
    def empty(cls, cluster: str) -> Head:
        return cls(0, chain.genesis(cluster))

    @classmethod
    def parse(cls, blob: bytes | None, cluster: str) -> Head:
        """``head``'s value (None: the key is absent). Raises :class:`StoreError`."""
        if blob is None:
            return cls.empty(cluster)
        try:
            rev, _, digest = bytes(blob).decode().partition(" ")
            return cls(int(rev), bytes.fromhex(digest))
        except ValueError as e:
            raise StoreError(f"head in etcd is not readable: {bytes(blob)[:80]!r}") from e


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an event landed: its log revision, and whether it was there already."""

    event_id: str
    revision: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Bounds:
    head: int  # last revision (0: empty log)
    first: int  # oldest revision kept (1 when nothing was trimmed)


@dataclass(frozen=True, slots=True)
class LogItem:
    """One event read from the log, with the newest head the reader knows of."""

    event: pb.Event
    head: int


# --- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    revision: int
    state: bytes  # canonical JSON of lvs_events.domain.state.State
    table_digest: str
    chain_head: bytes = b""  # the hash chain at `revision` (the hash of that event)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the ``snapshot`` key holds: where the chunks are and how to check them."""

    revision: int
    table_digest: str
    writer: str  # the chunk set's writer token (chunks of a lost swap are told apart by it)
    chunks: int
    nbytes: int  # compressed
    state_bytes: int  # inflated
    sha256: str  # of the compressed bytes
    chain_head: str = ""  # hex: the hash chain at `revision`

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "revision": self.revision,
                "table_digest": self.table_digest,
                "encoding": "zlib",
                "writer": self.writer,
                "chunks": self.chunks,
                "bytes": self.nbytes,
                "state_bytes": self.state_bytes,
                "sha256": self.sha256,
                "chain_head": self.chain_head,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> Manifest:
        """Raises :class:`StoreError` for anything but a complete format-2 manifest."""
        try:
            data = json.loads(blob)
            found = (data.get("format"), data.get("encoding"))
        except (ValueError, AttributeError) as e:
            raise StoreError(f"snapshot manifest in etcd is not readable: {e}") from e
        if found != (MANIFEST_FORMAT, "zlib"):
            raise StoreError(f"snapshot manifest in etcd: unknown format/encoding {found!r}")
        try:
            return cls(
                revision=int(data["revision"]),
                table_digest=str(data["table_digest"]),
                writer=str(data["writer"]),
                chunks=int(data["chunks"]),
                nbytes=int(data["bytes"]),
                state_bytes=int(data["state_bytes"]),
                sha256=str(data["sha256"]),
                chain_head=str(data.get("chain_head", "")),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"snapshot manifest in etcd is not readable: {e}") from e


def pack_snapshot(state: bytes) -> tuple[bytes, str]:
    """Compress (CPU-bound: run it in a thread); the compressed bytes and their sha256."""
    packed = zlib.compress(state, 6)
    return packed, hashlib.sha256(packed).hexdigest()


def unpack_snapshot(packed: bytes, manifest: Manifest) -> bytes:
    """Check and inflate (CPU-bound: run it in a thread). Raises ValueError or zlib.error."""
    if hashlib.sha256(packed).hexdigest() != manifest.sha256:
        raise ValueError("chunks do not match the manifest's sha256")
    if not 0 <= manifest.state_bytes <= MAX_SNAPSHOT_STATE:
        raise ValueError(f"state_bytes {manifest.state_bytes} out of range")
    inflate = zlib.decompressobj()
    state = inflate.decompress(packed, manifest.state_bytes + 1)
    if len(state) != manifest.state_bytes or not inflate.eof:
        raise ValueError(f"state is not {manifest.state_bytes} bytes once inflated")
    return state


# --- leadership --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    node: str
    term: int
    lease_id: int
    address: str
    revision: int  # log revision of its Leadership ACQUIRED event
    ended: bool = False  # last_leader only: its LOST event is in the log

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "node": self.node,
                "term": self.term,
                "lease_id": self.lease_id,
                "address": self.address,
                "revision": self.revision,
                "ended": self.ended,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> LeaderRecord:
        try:
            d = json.loads(blob)
            return cls(
                str(d["node"]),
                int(d["term"]),
                int(d["lease_id"]),
                str(d["address"]),
                int(d["revision"]),
                bool(d["ended"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"leader record in etcd is not readable: {e}") from e

    def ending(self) -> LeaderRecord:
        """This record as ``last_leader`` holds it once its LOST event is logged."""
        return LeaderRecord(self.node, self.term, self.lease_id, self.address, self.revision, ended=True)


@dataclass(frozen=True, slots=True)
class ElectionOutcome:
    acquired: bool  # for resign: resigned
    leader: LeaderRecord | None  # the leader after the call
    term: int  # the term counter after the call


@dataclass(frozen=True, slots=True)
class KeepAliveOutcome:
    held: bool
    ttl: int
    leader: LeaderRecord | None
    term: int


# (new term, the previous leader whose LOST event is not logged yet) -> events to append
LeaderEvents = Callable[[int, LeaderRecord | None], list[pb.Event]]
