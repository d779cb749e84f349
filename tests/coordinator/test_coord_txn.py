"""The append transaction: encoded by hand (lvs_events.etcd.txn) it is the request etcd3aio would
build, and it appends, dedupes and recovers from a lost CAS alike on either path to etcd."""

from __future__ import annotations

import asyncio

import etcd3aio._protobuf as etcd_pb
import pytest
from etcd3aio._protobuf import Compare, TxnRequest
from etcd3aio.kv import KVService

from lvs_events import wire
from lvs_events.errors import Fenced
from lvs_events.etcd import bypass
from lvs_events.etcd.connection import compare_mod
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.records import Head, Keys
from lvs_events.etcd.txn import append_txn, batch_limit, encode, fits
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.conftest import fresh_cluster
from tests.coordinator.helpers import config_event, health_event
from tests.support.etcd import EtcdCluster


def _expected(
    keys: Keys, events: list[pb.Event], head: Head, after: tuple[str, int] | None, term: int | None
) -> TxnRequest:
    kv = KVService
    compare = [kv.txn_compare_create_revision(keys.id_key(ev.event_id), 0) for ev in events]
    if head.revision:
        compare.append(kv.txn_compare_value(keys.head, head.value()))
    else:
        compare.append(kv.txn_compare_create_revision(keys.head, 0))
    if after is not None:
        compare.append(kv.txn_compare_value(keys.id_key(after[0]), str(after[1])))
    failure = [kv.txn_op_get(keys.head)]
    failure += [kv.txn_op_get(keys.id_key(ev.event_id)) for ev in events]
    if term is not None:
        compare.append(kv.txn_compare_value(keys.leader, str(term)))
        failure.append(kv.txn_op_get(keys.leader))
    success = []
    digest = head.hash
    for i, ev in enumerate(events, start=head.revision + 1):
        copy = pb.Event()
        copy.CopyFrom(ev)
        copy.revision = i
        stored, digest = wire.seal(copy, digest)
        success.append(kv.txn_op_put(keys.log_key(i), stored))
        success.append(kv.txn_op_put(keys.id_key(ev.event_id), str(i)))
    success.append(kv.txn_op_put(keys.head, Head(head.revision + len(events), digest).value()))
    for i, ev in enumerate(events, start=head.revision + 1):  # the expiry index, after head
        if ev.HasField("admin_override") and ev.admin_override.expires_at:
            success.append(
                kv.txn_op_put(f"/lvs-events/c1/expiries/{i:020d}", repr(ev.admin_override.expires_at))
            )
        elif ev.HasField("override_expired"):
            rev = ev.override_expired.override_revision
            success.append(kv.txn_op_delete(f"/lvs-events/c1/expiries/{rev:020d}"))
    return TxnRequest(compare=compare, success=success, failure=failure)


@pytest.mark.parametrize(
    ("head", "after", "term", "n"),
    [(0, None, None, 1), (41, None, None, 63), (127, ("prev-id", 127), None, 5), (9, None, 3, 2)],
)
def test_append_txn_on_both_paths_is_the_request_etcd3aio_builds(
    head: int, after: tuple[str, int] | None, term: int | None, n: int
) -> None:
    keys = Keys.of("c1")
    events = [health_event(f"id-{i}") if i % 3 else config_event(f"cfg-{i}", reals=40) for i in range(n)]
    at = Head(head, bytes([head % 256]) * 32) if head else Head.empty("c1")
    want = _expected(keys, events, at, after, term)
    txn, assigned, leaves = append_txn(keys, events, at, after, term)
    assert leaves == Head(head + n, events[-1].hash)
    assert TxnRequest.FromString(encode(txn)) == want  # the bytes path
    compare, success, failure = bypass.PublicTxn.ops(txn)  # the etcd3aio path
    assert TxnRequest(compare=compare, success=success, failure=failure) == want
    assert [a.revision for a in assigned] == list(range(head + 1, head + n + 1))
    assert [ev.revision for ev in events] == [a.revision for a in assigned]


def _override(event_id: str, expires_at: float, cluster: str = "c1") -> pb.Event:
    return pb.Event(
        event_id=event_id,
        cluster=cluster,
        origin="ops",
        actor="alice",
        wall_time=1.0,
        admin_override=pb.AdminOverride(
            virtual="TCP 203.0.113.10:80",
            real="192.0.2.11:80",
            action=pb.AdminOverride.ACTION_DRAIN,
            expires_at=expires_at,
        ),
    )


def _expired(override_revision: int, cluster: str = "c1") -> pb.Event:
    return pb.Event(
        event_id=f"expire:{cluster}:{override_revision}",
        cluster=cluster,
        origin="coord",
        actor="lvs-coordinator",
        wall_time=2.0,
        override_expired=pb.OverrideExpired(
            virtual="TCP 203.0.113.10:80", real="192.0.2.11:80", override_revision=override_revision
        ),
    )


@pytest.mark.parametrize(
    "payloads",
    [
        ["expiring"],
        ["health", "expiring", "health"],
        ["open-ended", "health"],
        ["health", "expired"],
        ["expiring", "expired"],  # two index ops (etcd's limit permitting)
    ],
)
def test_append_txn_keeps_the_expiry_index_on_both_paths(payloads: list[str]) -> None:
    """An override with an expiry puts its index entry, one without none, an OverrideExpired
    deletes the entry it names, all in the append's own transaction."""
    keys = Keys.of("c1")
    make = {
        "health": lambda i: health_event(f"h-{i}", cluster="c1"),
        "expiring": lambda i: _override(f"o-{i}", 1_900_000_000.25),
        "open-ended": lambda i: _override(f"o-{i}", 0.0),
        "expired": lambda i: _expired(7),
    }
    events = [make[kind](i) for i, kind in enumerate(payloads)]
    at = Head(40, b"\x01" * 32)
    want = _expected(keys, events, at, None, None)
    txn, _, _ = append_txn(keys, events, at, None, None)
    assert TxnRequest.FromString(encode(txn)) == want
    compare, success, failure = bypass.PublicTxn.ops(txn)
    assert TxnRequest(compare=compare, success=success, failure=failure) == want
    index_ops = sum(p in ("expiring", "expired") for p in payloads)
    assert len(want.success) == 2 * len(events) + 1 + index_ops


@pytest.mark.parametrize(
    ("max_txn_ops", "events", "indexed", "fit"),
    [(128, 63, 1, True), (128, 63, 2, False), (128, 62, 3, True), (128, 62, 4, False), (4, 1, 1, True)],
)
def test_a_batch_fits_when_its_success_branch_is_within_max_txn_ops(
    max_txn_ops: int, events: int, indexed: int, fit: bool
) -> None:
    assert fits(max_txn_ops, events, indexed) is fit
    assert batch_limit(128) == 63  # a full batch of plain events, with room for one override
    assert fits(128, 64, 0) is False
    with pytest.raises(ValueError, match="at least 4"):
        batch_limit(3)


async def test_the_index_follows_overrides_in_etcd_and_the_limit_is_enforced(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        too_many = [_override(f"x{i}", 5.0, cluster) for i in range(2)]
        too_many += [health_event(f"h{i}", cluster=cluster) for i in range(61)]
        with pytest.raises(ValueError, match="changing the expiry index"):  # 63 * 2 + 1 + 2 ops
            await store.append(too_many)
        (drain,) = await store.append([_override("a", 1_900_000_000.5, cluster)])
        await store.append([health_event("h", cluster=cluster), _override("b", 0.0, cluster)])
        entries, at = await store.expiries()
        assert entries == {drain.revision: 1_900_000_000.5}
        watch = store.watch_expiries(at + 1)
        await store.append([_expired(drain.revision, cluster)])
        changed_at = await asyncio.wait_for(anext(watch), 10)
        await watch.aclose()
        assert changed_at > at
        assert (await store.expiries())[0] == {}
        await store.index_expiry(99, 12.5)  # the backfill's put and the task's drop: idempotent
        await store.index_expiry(99, 12.5)
        assert (await store.expiries())[0] == {99: 12.5}
        await store.drop_expiry(99)
        await store.drop_expiry(99)
        assert (await store.expiries())[0] == {}


@pytest.mark.parametrize("mod_revision", [0, 1, 987654321])
def test_compare_mod_is_etcds_mod_revision_compare(mod_revision: int) -> None:
    want = Compare(result=Compare.EQUAL, target=Compare.MOD, key=b"/k", mod_revision=mod_revision)
    got = compare_mod(b"/k", mod_revision)
    assert got == want
    assert got.WhichOneof("target_union") == "mod_revision"


def test_the_declared_checks_accept_etcd3aio_as_pinned() -> None:
    decode, why = bypass.txn_response_decoder()
    assert decode is not None, why
    assert decode(b"\x10\x01").succeeded


@pytest.mark.parametrize("path", ["bytes", "etcd3aio-txn", "checks-fail"])
async def test_append_duplicate_and_lost_cas_on_either_path(
    etcd: EtcdCluster, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths append, dedupe and recover from a lost compare-and-swap alike. "checks-fail":
    etcd3aio's generated TxnResponse is not what the bytes path expects, so the connection falls
    back to etcd3aio's public txn."""
    if path == "checks-fail":
        monkeypatch.setattr(etcd_pb, "TxnResponse", etcd_pb.TxnRequest)
    cluster = fresh_cluster()
    async with (
        EtcdEventStore(etcd.endpoints, cluster, bytes_txn=path != "etcd3aio-txn") as store,
        EtcdEventStore(etcd.endpoints, cluster) as other,
    ):
        assert store.connection.txn_path == ("bytes" if path == "bytes" else "etcd3aio-txn")
        first = await store.append([health_event("a", cluster=cluster), health_event("b", cluster=cluster)])
        assert [(x.revision, x.duplicate) for x in first] == [(1, False), (2, False)]
        await other.append([health_event("c", cluster=cluster)])  # moves head: store's guess is stale
        again = await store.append([health_event("b", cluster=cluster), health_event("d", cluster=cluster)])
        assert [(x.event_id, x.revision, x.duplicate) for x in again] == [("b", 2, True), ("d", 4, False)]
        await store.set_leader_term(5)
        with pytest.raises(Fenced):
            await store.append([health_event("e", cluster=cluster)], require_term=4)
        fenced_ok = await store.append([health_event("f", cluster=cluster)], require_term=5)
        assert [(x.revision, x.duplicate) for x in fenced_ok] == [(5, False)]
        assert [(i.event.revision, i.event.event_id) async for i in store.read(1, follow=False)] == [
            (1, "a"),
            (2, "b"),
            (3, "c"),
            (4, "d"),
            (5, "f"),
        ]


def test_the_bytes_path_falls_back_when_txnresponse_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(etcd_pb, "TxnResponse")
    decode, why = bypass.txn_response_decoder()
    assert decode is None
    assert "TxnResponse" in why
