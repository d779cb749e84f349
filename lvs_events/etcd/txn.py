"""The append transaction: what it compares and writes (:class:`Txn`), and its protobuf encoding.

Pure: no etcd client, no I/O. :func:`append_txn` builds the transaction of one batch;
:func:`encode` turns it into the bytes of an ``etcdserverpb.TxnRequest``, which
:mod:`lvs_events.etcd.connection` sends as they are (building the request from a few hundred
etcd3aio op objects costs more than the rest of the append path). The same :class:`Txn` also
goes through etcd3aio's public ``txn`` when the bytes path is off; a test checks that both are
the same request.

An append of a batch is ONE etcd transaction: compare ``head``'s value ("revision hash") with
the one read (optimistic CAS, so any number of coordinators can append; by value, which is
safe because ``head`` only grows and revisions are dense, so ``head == N ...`` means nobody has
written ``log/N+1`` yet, and the hash in it is the one ``log/N+1`` must chain behind), compare
every ``ids/<id>``'s create_revision with 0; on success put every log key, every id key and
``head``, and change the expiry index for an override with an expiry or its end
(:func:`~lvs_events.etcd.records.expiry_index_op`; the batch :func:`fits` the op limit). On
failure the same transaction returns (failure branch) the current ``head``, the ids that
exist and the leader key, so a retry needs no extra round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lvs_events import wire
from lvs_events.etcd.records import REV_DIGITS, Appended, Head, Keys, expiry_index_op
from lvs_events.pb.v1 import events_pb2 as pb

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


def batch_limit(max_txn_ops: int) -> int:
    """Events per append transaction under etcd's ``--max-txn-ops``: the success branch holds
    two puts per event (log entry and id), one for ``head`` and at least one expiry index op."""
    if max_txn_ops < 4:
        raise ValueError("max_txn_ops: at least 4")
    return (max_txn_ops - 2) // 2


def fits(max_txn_ops: int, events: int, indexed: int) -> bool:
    """Whether a batch of ``events``, ``indexed`` of which change the expiry index
    (:func:`~lvs_events.etcd.records.expiry_index_op`), is one transaction under
    ``--max-txn-ops``: two puts per event, one for ``head``, one per index change."""
    return events <= batch_limit(max_txn_ops) and 2 * events + 1 + indexed <= max_txn_ops


MAX_BATCH_EVENTS = batch_limit(MAX_TXN_OPS)


@dataclass(frozen=True, slots=True)
class Txn:
    """A transaction of the shape the append uses, in order.

    ``compare``: (key, value) is "the key's value equals value"; (key, None) is "the key does not
    exist" (its create_revision is 0). ``success``: puts (key, value), or deletes (key, None).
    ``failure``: gets (key).
    """

    compare: list[tuple[bytes, bytes | None]]
    success: list[tuple[bytes, bytes | None]]
    failure: list[bytes]


def append_txn(
    keys: Keys,
    pending: Sequence[pb.Event],
    head: Head,
    after: tuple[str, int] | None,
    require_term: int | None,
) -> tuple[Txn, list[Appended], Head]:
    """The transaction appending ``pending`` after ``head``, where each event would land and the
    head it would leave.

    Sets each event's ``revision``, ``prev_hash`` and ``hash`` (the log entry carries them: the
    hash chain, :mod:`lvs_events.domain.chain`). ``after``: (event id, revision)
    that must already be in the log (the last event of the batch this one is chained behind).
    ``require_term``: the ``leader`` key must hold it (fencing). Failure branch: ``head``, then
    each id key of ``pending``, then (with ``require_term``) the ``leader`` key.
    """
    ids = keys.ids
    id_keys = [ids + ev.event_id.encode() for ev in pending]
    compare: list[tuple[bytes, bytes | None]] = [(k, None) for k in id_keys]
    compare.append((keys.head, head.value() if head.revision else None))
    if after is not None:
        compare.append((ids + after[0].encode(), str(after[1]).encode()))
    failure = [keys.head, *id_keys]
    if require_term is not None:
        compare.append((keys.leader, str(require_term).encode()))
        failure.append(keys.leader)
    success: list[tuple[bytes, bytes | None]] = []
    index: list[tuple[bytes, bytes | None]] = []
    assigned: list[Appended] = []
    rev = head.revision
    digest = head.hash
    k_log = keys.log
    for ev, id_key in zip(pending, id_keys, strict=True):
        rev += 1
        ev.revision = rev
        srev = str(rev).encode()
        key = k_log + (b"0" * (REV_DIGITS - len(srev))) + srev
        stored, digest = wire.seal(ev, digest)
        success.append((key, stored))
        success.append((id_key, srev))
        assigned.append(Appended(ev.event_id, rev, duplicate=False))
        op = expiry_index_op(keys, ev)
        if op is not None:
            index.append(op)
    new_head = Head(rev, digest)
    success.append((keys.head, new_head.value()))
    success.extend(index)
    return Txn(compare, success, failure), assigned, new_head


# --- protobuf wire format of etcdserverpb.TxnRequest -----------------------------------------
# TxnRequest: compare = 1, success = 2, failure = 3. Compare: target = 2 (CREATE 1, VALUE 3),
# key = 3, create_revision = 5 and value = 7 (a oneof: a 0 is encoded); result EQUAL is 0 (the
# default, not encoded). RequestOp: request_range = 1, request_put = 2, request_delete_range = 3.
# PutRequest / RangeRequest / DeleteRangeRequest: key = 1, value = 2. Fields in field-number
# order, as protobuf encodes them, so the bytes equal the request etcd3aio would serialize.


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(n) for n in range(1 << 14)]  # every length up to 16 KiB, ready made


def _len(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint(n)


def _compare(key: bytes, value: bytes | None) -> bytes:
    """TxnRequest.compare: ``key``'s value equals ``value``; None: its create_revision is 0."""
    if value is None:
        inner = b"\x10\x01\x1a" + _len(len(key)) + key + b"\x28\x00"
    else:
        inner = b"\x10\x03\x1a" + _len(len(key)) + key + b"\x3a" + _len(len(value)) + value
    return b"\x0a" + _len(len(inner)) + inner


def _put(key: bytes, value: bytes | None) -> bytes:
    """TxnRequest.success: RequestOp.request_put (PutRequest key, value); value None:
    RequestOp.request_delete_range (DeleteRangeRequest key)."""
    if value is None:
        rng = b"\x0a" + _len(len(key)) + key
        op = b"\x1a" + _len(len(rng)) + rng
    else:
        put = b"\x0a" + _len(len(key)) + key + b"\x12" + _len(len(value)) + value
        op = b"\x12" + _len(len(put)) + put
    return b"\x12" + _len(len(op)) + op


def _get(key: bytes) -> bytes:
    """TxnRequest.failure: RequestOp.request_range (RangeRequest key)."""
    rng = b"\x0a" + _len(len(key)) + key
    op = b"\x0a" + _len(len(rng)) + rng
    return b"\x1a" + _len(len(op)) + op


def encode(txn: Txn) -> bytes:
    """The serialized ``etcdserverpb.TxnRequest`` of ``txn``."""
    return (
        b"".join([_compare(k, v) for k, v in txn.compare])
        + b"".join([_put(k, v) for k, v in txn.success])
        + b"".join([_get(k) for k in txn.failure])
    )
