"""The append transaction: encoded by hand (lvs_events.etcd.txn) it is the request etcd3aio would
build, and it appends, dedupes and recovers from a lost CAS alike on either path to etcd."""

from __future__ import annotations

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
from lvs_events.etcd.txn import append_txn, encode
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
