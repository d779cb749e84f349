"""The append transaction encoded by hand (coordinator.store) is the one etcd3aio would build."""

from __future__ import annotations

import pytest
from etcd3aio._protobuf import TxnRequest
from etcd3aio.kv import KVService

from coordinator.store import EtcdEventStore
from tests.coordinator.helpers import config_event, health_event


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
    assert got == want
    assert [a.revision for a in assigned] == list(range(head + 1, head + n + 1))
    assert [ev.revision for ev in events] == [a.revision for a in assigned]
