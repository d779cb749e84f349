"""The append under etcd faults: every error path of ``EtcdEventStore.append``, on a real etcd.

Where a fault cannot be timed precisely with a real etcd (an answer lost after etcd applied the
transaction, one call of a pipelined pair failing), it is injected at the store's seam,
``Connection.append_txn`` (:class:`Seam`): the real call goes through or not, and the caller
sees the error the client would raise. Where it can (etcd gone), etcd is stopped.

* a transaction applied but answered with an error is retried, finds its ids and returns the
  original revisions: nothing twice, the log dense, the hash chain and ``head`` intact;
* attempts running out (every call failing, etcd stopped): ``StoreUnavailable`` after exactly
  ``max_append_attempts`` tries, ``UNAVAILABLE`` acks, nothing appended; the same ids land once
  when etcd is back;
* the CAS-conflict give-up: another writer moves ``head`` before every attempt, the append gives
  up after ``MAX_CAS_CONFLICTS`` lost races ("head kept moving"), acks ``UNAVAILABLE``, appends
  nothing; below the limit the batch lands once, chained behind the head it lost to;
* a failure inside a pipelined pair (the first's or the second's transaction lost, or applied
  with its answer lost): the log is in submission order, dense, without a duplicate; and the
  same with the real fault, a pair sent to a frozen etcd (SIGSTOP) that may apply it on SIGCONT.

A frozen etcd (SIGSTOP) under a caller's deadline is covered in ``test_coord_trust_etcd.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest

from lvs_events import wire
from lvs_events.domain.chain import genesis, verify
from lvs_events.errors import StoreUnavailable
from lvs_events.etcd import events as events_mod
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.records import Appended, Head
from lvs_events.etcd.txn import Txn
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from tests.coordinator.conftest import StartCoordinator
from tests.coordinator.helpers import CLUSTER, health_event, publish_all, read_log
from tests.support.etcd import EtcdCluster


@dataclass(slots=True)
class Call:
    """One append transaction that reached the seam."""

    n: int  # 1, 2, ... in the order they arrived
    ids: list[str]  # the event ids it appends
    chained: bool  # it also compares the id of an earlier batch (pipelined behind it)


Send = Callable[[], Awaitable[Any]]
Script = Callable[[Call, Send], Awaitable[Any]]


class Seam:
    """Stands in for ``store.connection.append_txn``: every transaction goes through
    ``script(call, send)``, which may ``await send()`` (the real call to etcd), raise before or
    after it, or hold it back."""

    def __init__(self, store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch, script: Script) -> None:
        self.calls: list[Call] = []
        self._real = store.connection.append_txn
        self._ids = store.keys.ids
        self._script = script
        monkeypatch.setattr(store.connection, "append_txn", self._send)

    def _send(self, txn: Txn, within: float | None = None) -> Awaitable[Any]:
        p = self._ids
        ids = [k[len(p) :].decode() for k, v in txn.compare if v is None and k.startswith(p)]
        chained = any(v is not None and k.startswith(p) for k, v in txn.compare)
        call = Call(len(self.calls) + 1, ids, chained)
        self.calls.append(call)
        return self._script(call, lambda: self._real(txn, within))

    def sent(self) -> list[list[str]]:
        return [c.ids for c in self.calls]


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """What the gRPC client raises when etcd's answer does not come back."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "injected fault", None)


# the retryable errors an append may see for a transaction etcd did apply
LOST_ANSWERS: dict[str, Callable[[], BaseException]] = {
    "unavailable": lambda: rpc_error(grpc.StatusCode.UNAVAILABLE),
    "deadline": lambda: rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
    "timeout": TimeoutError,
}


def unavailable() -> grpc.aio.AioRpcError:
    return rpc_error(grpc.StatusCode.UNAVAILABLE)


async def _when_etcd_answers(etcd: EtcdCluster, within: float = 30.0) -> None:
    """Wait until a read through gRPC succeeds after a restart: the process's channels to one
    address share gRPC's subchannel, which may still wait out its reconnect backoff from the
    failures while etcd was down (a fresh channel does not reset it)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            async with EtcdEventStore(etcd.endpoints, CLUSTER) as probe:
                await probe.bounds()
        except StoreUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


async def assert_log(store: EtcdEventStore, ids: list[str], cluster: str = CLUSTER) -> None:
    """The log holds ``ids`` in this order at revisions 1..n, each once; the hash chain is
    unbroken from the cluster's genesis and ``head`` holds the last revision and its hash."""
    log = await read_log(store)
    assert [e.event_id for e in log] == ids
    assert [e.revision for e in log] == list(range(1, len(ids) + 1))
    found, last, checked = verify(genesis(cluster), [wire.chain_link(m) for m in log])
    assert found is None, found.describe()
    assert checked == len(ids)
    assert last is not None
    assert await store.head() == Head(len(ids), last)


def outcome(results: list[Appended]) -> list[tuple[str, int, bool]]:
    return [(a.event_id, a.revision, a.duplicate) for a in results]


# --- 1. applied, but answered with an error ------------------------------------------------


@pytest.mark.parametrize("lost", sorted(LOST_ANSWERS))
async def test_a_transaction_applied_but_answered_with_an_error_is_not_appended_twice(
    etcd: EtcdCluster, store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    """etcd applies the batch, its answer is lost; meanwhile another writer appends. The retry
    (a fresh head, so its compare on ``head`` holds) finds the ids: the ORIGINAL revisions come
    back as duplicates and nothing is written again."""
    await store.append([health_event("w1"), health_event("w2")])
    async with EtcdEventStore(etcd.endpoints, CLUSTER) as other:

        async def script(call: Call, send: Send) -> Any:
            resp = await send()
            if call.n == 1:
                await other.append([health_event("x1")])  # moves head past the applied batch
                raise LOST_ANSWERS[lost]()
            return resp

        seam = Seam(store, monkeypatch, script)
        got = await store.append([health_event("a"), health_event("b"), health_event("c")])
    assert outcome(got) == [("a", 3, True), ("b", 4, True), ("c", 5, True)]
    assert seam.sent() == [["a", "b", "c"], ["a", "b", "c"]]  # one retry, answered by the ids
    after = await store.append([health_event("d")])
    assert outcome(after) == [("d", 7, False)]
    await assert_log(store, ["w1", "w2", "a", "b", "c", "x1", "d"])


# --- 2. attempts running out -----------------------------------------------------------------


async def test_every_attempt_failing_gives_up_after_max_append_attempts_and_appends_nothing(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with EtcdEventStore(etcd.endpoints, CLUSTER, max_append_attempts=4) as store:
        await store.append([health_event("w")])
        failing = True

        async def script(call: Call, send: Send) -> Any:
            if failing:
                raise unavailable()
            return await send()

        seam = Seam(store, monkeypatch, script)
        batch = [health_event("a"), health_event("b")]
        with pytest.raises(StoreUnavailable, match="etcd append: UNAVAILABLE") as err:
            await store.append(batch)
        assert isinstance(err.value.__cause__, grpc.aio.AioRpcError)  # chained, not swallowed
        assert seam.sent() == [["a", "b"]] * 4
        await assert_log(store, ["w"])
        failing = False
        again = await store.append([health_event("a"), health_event("b")])
        assert outcome(again) == [("a", 2, False), ("b", 3, False)]
        await assert_log(store, ["w", "a", "b"])


async def publish_batch(stub: Any, events: list[Any]) -> list[cpb.PublishAck]:
    """The events in one PublishRequest (one batch, one transaction); the acks."""
    call = stub.Publish(iter([cpb.PublishRequest(events=events)]), timeout=60)
    return [a for reply in [r async for r in call] for a in reply.acks]


async def _publish_until_acked(stub: Any, events: list[Any], within: float) -> list[cpb.PublishAck]:
    """Publish the same events again until every ack is a success (etcd coming back)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        acks = await publish_batch(stub, events)
        if all(a.error_code == "" for a in acks) or loop.time() > end:
            return acks
        assert {a.error_code for a in acks} <= {"", "UNAVAILABLE"}, acks
        await asyncio.sleep(0.2)


async def test_etcd_stopped_through_every_attempt_acks_unavailable_and_a_retry_appends_once(
    etcd: EtcdCluster, start_coordinator: StartCoordinator
) -> None:
    """The log is read on a connection opened after etcd is back (an older channel may still be
    waiting out gRPC's reconnect backoff)."""
    async with start_coordinator(etcd_timeout=1.0) as c, grpc.aio.insecure_channel(c.address) as ch:
        stub = cpb_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
        warm = await publish_all(stub, [health_event("w")])
        assert [(a.revision, a.error_code) for a in warm] == [(1, "")]
        events = [health_event(f"e{i}", real=f"192.0.2.{20 + i}:80") for i in range(3)]
        await asyncio.to_thread(etcd.stop, 0)
        try:
            acks = await publish_batch(stub, events)
        finally:
            await asyncio.to_thread(etcd.start, 0)
        assert [(a.event_id, a.error_code, a.revision) for a in acks] == [
            (f"e{i}", "UNAVAILABLE", 0) for i in range(3)
        ]
        assert all(a.error.startswith("etcd ") and "UNAVAILABLE" in a.error for a in acks), acks
        await _when_etcd_answers(etcd)
        async with EtcdEventStore(etcd.endpoints, CLUSTER) as store:
            await assert_log(store, ["w"])  # nothing of the batch, not a part of it
        again = await _publish_until_acked(stub, events, within=30.0)
        assert [(a.event_id, a.revision, a.duplicate) for a in again] == [
            (f"e{i}", 2 + i, False) for i in range(3)
        ]
        twice = await publish_batch(stub, events)
        assert [(a.revision, a.duplicate) for a in twice] == [(2, True), (3, True), (4, True)]
        async with EtcdEventStore(etcd.endpoints, CLUSTER) as store:
            await assert_log(store, ["w", "e0", "e1", "e2"])


# --- 3. the CAS-conflict give-up -------------------------------------------------------------


async def test_head_moving_before_every_attempt_gives_up_and_acks_unavailable(
    etcd: EtcdCluster,
    start_coordinator: StartCoordinator,
    store: EtcdEventStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer appends right before each of the coordinator's transactions, so each loses
    its compare on ``head``: after ``MAX_CAS_CONFLICTS`` lost races the append gives up."""
    conflicts = 25  # the constant's own value would only make the test slower
    monkeypatch.setattr(events_mod, "MAX_CAS_CONFLICTS", conflicts)
    async with (
        start_coordinator() as c,
        grpc.aio.insecure_channel(c.address) as ch,
        EtcdEventStore(etcd.endpoints, CLUSTER) as other,
    ):
        stub = cpb_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
        warm = await publish_all(stub, [health_event("w")])
        assert [a.error_code for a in warm] == [""]
        racing = True

        async def script(call: Call, send: Send) -> Any:
            if racing:
                await other.append([health_event(f"o{call.n}")])
            return await send()

        assert isinstance(c.store, EtcdEventStore)
        seam = Seam(c.store, monkeypatch, script)
        mine = [health_event(f"m{i}", real=f"192.0.2.{20 + i}:80") for i in range(3)]
        acks = await publish_batch(stub, mine)
        assert [a.error_code for a in acks] == ["UNAVAILABLE"] * 3
        assert all(f"head kept moving; gave up after {conflicts} lost races" in a.error for a in acks)
        assert seam.sent() == [[f"m{i}" for i in range(3)]] * conflicts
        others = [f"o{n}" for n in range(1, conflicts + 1)]
        await assert_log(store, ["w", *others])
        racing = False
        again = await publish_batch(stub, mine)
        assert [(a.revision, a.duplicate) for a in again] == [(conflicts + 2 + i, False) for i in range(3)]
    await assert_log(store, ["w", *others, "m0", "m1", "m2"])


async def test_lost_races_below_the_limit_land_the_batch_once_resealed_behind_the_new_head(
    etcd: EtcdCluster, store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each lost race re-chains the batch behind the head its failure branch returned: the
    hashes of the attempt before are not carried into the entry that lands."""
    await store.append([health_event("w")])
    async with EtcdEventStore(etcd.endpoints, CLUSTER) as other:

        async def script(call: Call, send: Send) -> Any:
            if call.n <= 3:
                await other.append([health_event(f"o{call.n}")])
            return await send()

        seam = Seam(store, monkeypatch, script)
        got = await store.append([health_event("a"), health_event("b")])
    assert outcome(got) == [("a", 5, False), ("b", 6, False)]
    assert seam.sent() == [["a", "b"]] * 4
    await assert_log(store, ["w", "o1", "o2", "o3", "a", "b"])


# --- 4. a failure inside a pipelined pair ----------------------------------------------------

A = ["a1", "a2"]
B = ["b1", "b2"]


async def _pipelined(
    store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch, script: Script
) -> tuple[list[Appended], list[Appended], Seam]:
    """Append A, then B while A's transaction is in flight (B goes out chained behind A), each
    call through ``script``; the log must be w, A, B (submission order) whatever fails."""
    await store.append([health_event("w")])  # the store knows the head: A goes out at once
    seam = Seam(store, monkeypatch, script)
    first = asyncio.create_task(store.append([health_event(i) for i in A]))
    second = asyncio.create_task(store.append([health_event(i) for i in B]))
    async with asyncio.timeout(30):
        a, b = await asyncio.gather(first, second)
    assert seam.calls[0].ids == A
    assert (seam.calls[1].ids, seam.calls[1].chained) == (B, True)  # B was pipelined behind A
    await assert_log(store, ["w", *A, *B])
    return a, b, seam


async def test_pipelined_first_transaction_lost_the_second_waits_for_its_retry(
    store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    b_arrived = asyncio.Event()

    async def script(call: Call, send: Send) -> Any:
        if call.ids == B:
            b_arrived.set()
        if call.n == 1:  # A's first transaction never reaches etcd, B's (chained) does
            await b_arrived.wait()
            raise unavailable()
        return await send()

    a, b, seam = await _pipelined(store, monkeypatch, script)
    assert outcome(a) == [("a1", 2, False), ("a2", 3, False)]
    assert outcome(b) == [("b1", 4, False), ("b2", 5, False)]
    assert seam.sent() == [A, B, A, B]  # A's retry before B's: B never overtook A


async def test_pipelined_first_transaction_applied_but_its_answer_lost(
    store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    b_arrived, a_applied = asyncio.Event(), asyncio.Event()

    async def script(call: Call, send: Send) -> Any:
        if call.n == 1:  # A lands, its answer is lost
            await b_arrived.wait()
            await send()
            a_applied.set()
            raise unavailable()
        if call.n == 2:  # B, chained behind A, is evaluated after A landed
            b_arrived.set()
            await a_applied.wait()
        return await send()

    a, b, seam = await _pipelined(store, monkeypatch, script)
    assert outcome(a) == [("a1", 2, True), ("a2", 3, True)]  # A's own, found by its retry
    assert outcome(b) == [("b1", 4, False), ("b2", 5, False)]
    assert seam.sent() == [A, B, A]


async def test_pipelined_second_transaction_lost_it_does_not_overtake_the_first(
    store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's transaction fails while A's is still held back; B must wait for A before retrying.
    A is held until B sends again or a while passes: a B that retried at once would land first."""
    b_failed, b_retried = asyncio.Event(), asyncio.Event()

    async def script(call: Call, send: Send) -> Any:
        if call.n == 1:
            await b_failed.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await b_retried.wait()
        elif call.n == 2:
            b_failed.set()
            raise unavailable()
        else:
            b_retried.set()
        return await send()

    a, b, seam = await _pipelined(store, monkeypatch, script)
    assert outcome(a) == [("a1", 2, False), ("a2", 3, False)]
    assert outcome(b) == [("b1", 4, False), ("b2", 5, False)]
    assert seam.sent() == [A, B, B]


async def test_pipelined_second_transaction_applied_but_its_answer_lost(
    store: EtcdEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    b_arrived, a_answered = asyncio.Event(), asyncio.Event()

    async def script(call: Call, send: Send) -> Any:
        if call.n == 1:
            await b_arrived.wait()
            resp = await send()
            a_answered.set()
            return resp
        if call.n == 2:  # B lands behind A, its answer is lost
            b_arrived.set()
            await a_answered.wait()
            await send()
            raise unavailable()
        return await send()

    a, b, seam = await _pipelined(store, monkeypatch, script)
    assert outcome(a) == [("a1", 2, False), ("a2", 3, False)]
    assert outcome(b) == [("b1", 4, True), ("b2", 5, True)]
    assert seam.sent() == [A, B, B]


async def test_a_pipelined_pair_sent_to_a_frozen_etcd_lands_once_in_order(etcd: EtcdCluster) -> None:
    """The real fault: both transactions reach a frozen etcd (SIGSTOP), every attempt times
    out meanwhile, and after SIGCONT etcd may still apply what it received while frozen. The
    retries sort it out: each batch once, in submission order, the chain intact."""
    async with EtcdEventStore(etcd.endpoints, CLUSTER, timeout=0.5) as store:
        await store.append([health_event("w")])
        etcd[0].pause()
        try:
            first = asyncio.create_task(store.append([health_event(i) for i in A]))
            second = asyncio.create_task(store.append([health_event(i) for i in B]))
            await asyncio.sleep(1.5)  # a few attempts time out
            assert not first.done()
            assert not second.done()
        finally:
            etcd[0].resume()
        async with asyncio.timeout(30):
            a, b = await asyncio.gather(first, second)
        assert [(x.event_id, x.revision) for x in a + b] == [("a1", 2), ("a2", 3), ("b1", 4), ("b2", 5)]
        await assert_log(store, ["w", *A, *B])
