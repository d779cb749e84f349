"""The append transaction encoded by hand (lvs_events.etcd.store) is the one etcd3aio would build."""

from __future__ import annotations

import pytest
from etcd3aio._protobuf import TxnRequest
from etcd3aio.kv import KVService

from lvs_events.etcd.store import EtcdEventStore
from tests.coordinator.conftest import fresh_cluster
from tests.coordinator.helpers import config_event, health_event
from tests.support.etcd import EtcdCluster


def _expected(
    store: EtcdEventStore, events: list, head: int, after: tuple[str, int] | None, term: int | None
) -> TxnRequest:
    kv = KVService
    compare = [kv.txn_compare_create_revision(store.id_key(ev.event_id), 0) for ev in events]
    if head:
        compare.append(kv.txn_compare_value(store.k_head, str(head)))
    else:
        compare.append(kv.txn_compare_create_revision(store.k_head, 0))
    if after is not None:
        compare.append(kv.txn_compare_value(store.id_key(after[0]), str(after[1])))
    failure = [kv.txn_op_get(store.k_head)]
    failure += [kv.txn_op_get(store.id_key(ev.event_id)) for ev in events]
    if term is not None:
        compare.append(kv.txn_compare_value(store.k_leader, str(term)))
        failure.append(kv.txn_op_get(store.k_leader))
    success = []
    for i, ev in enumerate(events, start=head + 1):
        copy = type(ev)()
        copy.CopyFrom(ev)
        copy.revision = i
        success.append(kv.txn_op_put(store.log_key(i), copy.SerializeToString(deterministic=True)))
        success.append(kv.txn_op_put(store.id_key(ev.event_id), str(i)))
    success.append(kv.txn_op_put(store.k_head, str(head + len(events))))
    return TxnRequest(compare=compare, success=success, failure=failure)


@pytest.mark.parametrize(
    ("head", "after", "term", "n"),
    [(0, None, None, 1), (41, None, None, 63), (127, ("prev-id", 127), None, 5), (9, None, 3, 2)],
)
def test_hand_encoded_append_txn_equals_etcd3aio(
    head: int, after: tuple[str, int] | None, term: int | None, n: int
) -> None:
    store = EtcdEventStore(["127.0.0.1:1"], "c1")
    events = [health_event(f"id-{i}") if i % 3 else config_event(f"cfg-{i}", reals=40) for i in range(n)]
    want = _expected(store, events, head, after, term)
    got, assigned = store._append_txn(events, head, after, term)
    assert TxnRequest.FromString(got) == want
    assert [a.revision for a in assigned] == list(range(head + 1, head + n + 1))
    assert [ev.revision for ev in events] == [a.revision for a in assigned]


@pytest.mark.parametrize("path", ["raw", "etcd3aio"])
async def test_append_through_either_transaction_path(etcd: EtcdCluster, path: str) -> None:
    """The append transaction goes to etcd as encoded bytes; with auth on (or an etcd3aio without
    the channel we use) it goes through etcd3aio's ``txn`` instead. Both must append, dedupe and
    recover from a lost compare-and-swap alike."""
    cluster = fresh_cluster()
    async with (
        EtcdEventStore(etcd.endpoints, cluster) as store,
        EtcdEventStore(etcd.endpoints, cluster) as other,
    ):
        if path == "etcd3aio":
            store._raw_txn_call = lambda: None  # type: ignore[method-assign]
        first = await store.append([health_event("a", cluster=cluster), health_event("b", cluster=cluster)])
        assert [(x.revision, x.duplicate) for x in first] == [(1, False), (2, False)]
        assert (store._raw_txn is not None) == (path == "raw")
        await other.append([health_event("c", cluster=cluster)])  # moves head: store's guess is stale
        again = await store.append([health_event("b", cluster=cluster), health_event("d", cluster=cluster)])
        assert [(x.event_id, x.revision, x.duplicate) for x in again] == [("b", 2, True), ("d", 4, False)]
        assert [(i.event.revision, i.event.event_id) async for i in store.read(1, follow=False)] == [
            (1, "a"),
            (2, "b"),
            (3, "c"),
            (4, "d"),
        ]
