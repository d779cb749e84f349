"""Overrides expire on time on a quiet log: two coordinators, one OverrideExpired, at the expiry."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc.aio

from lvs_events import wire
from lvs_events.coordinator.appender import Appender
from lvs_events.coordinator.expiry import ExpiryTask
from lvs_events.coordinator.snapshots import StateService
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.conftest import StartCoordinator
from tests.coordinator.helpers import CLUSTER, config_event, publish_all, read_log

V = "TCP 203.0.113.10:80"


def _drain(real: str, expires_at: float) -> pb.Event:
    return pb.Event(
        event_id=uuid.uuid4().hex,
        cluster=CLUSTER,
        origin="ops",
        actor="alice",
        reason="patch",
        wall_time=time.time(),
        admin_override=pb.AdminOverride(
            virtual=V, real=real, action=pb.AdminOverride.ACTION_DRAIN, expires_at=expires_at
        ),
    )


async def test_two_coordinators_append_one_expiry_on_time(
    start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    async with (
        start_coordinator() as a,
        start_coordinator() as b,
        grpc.aio.insecure_channel(a.address) as channel,
    ):
        stub = cpb_grpc.CoordinatorStub(channel)
        acks = await publish_all(stub, [config_event()])
        assert acks[0].revision == 1
        expires = time.time() + 1.5
        (drain,) = await publish_all(stub, [_drain("192.0.2.11:80", expires)])
        assert not drain.error_code
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = await read_log(store)
            if len(log) >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # time for a second, duplicate append to show up if there were one
        log = await read_log(store)
    assert b.address != a.address
    assert [e.WhichOneof("payload") for e in log] == ["config_applied", "admin_override", "override_expired"]
    expired = wire.event_from_pb(log[2])
    assert expired.actor == "lvs-coordinator"
    assert expired.event_id == f"expire:{CLUSTER}:2"
    assert 0.0 <= expired.wall_time - expires <= 1.0


async def _wait_for_log(store: EtcdEventStore, n: int) -> list[pb.Event]:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        log = await read_log(store)
        if len(log) >= n:
            return log
        await asyncio.sleep(0.1)
    return await read_log(store)


async def test_overrides_expiring_together_each_end_once(
    start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    """Three drains with one expiry: three OverrideExpired events (each its own transaction, as
    each changes the expiry index), and the index is empty after."""
    async with start_coordinator() as a, grpc.aio.insecure_channel(a.address) as channel:
        stub = cpb_grpc.CoordinatorStub(channel)
        await publish_all(stub, [config_event(reals=3)])
        expires = time.time() + 1.0
        reals = ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"]
        await publish_all(stub, [_drain(r, expires) for r in reals])
        log = await _wait_for_log(store, 7)
    ended = [e.override_expired for e in log if e.HasField("override_expired")]
    assert sorted(e.real for e in ended) == reals
    assert sorted(e.override_revision for e in ended) == [2, 3, 4]
    assert (await store.expiries())[0] == {}


async def test_an_override_replaced_before_its_expiry_is_not_ended_and_leaves_the_index(
    start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    async with start_coordinator() as a, grpc.aio.insecure_channel(a.address) as channel:
        stub = cpb_grpc.CoordinatorStub(channel)
        await publish_all(stub, [config_event()])
        await publish_all(stub, [_drain("192.0.2.11:80", time.time() + 1.0)])
        await publish_all(stub, [_drain("192.0.2.11:80", 0.0)])  # open-ended: replaces it
        assert set((await store.expiries())[0]) == {2}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not (await store.expiries())[0]:
                break
            await asyncio.sleep(0.1)
        assert (await store.expiries())[0] == {}  # dropped when it came due
        log = await read_log(store)
    assert [e.WhichOneof("payload") for e in log] == ["config_applied", "admin_override", "admin_override"]


async def test_an_override_the_index_lacks_is_indexed_on_start_and_ends_on_time(
    start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    """A log written before the index existed: the coordinator indexes the override in force
    when it starts, and ends it at its expiry."""
    expires = time.time() + 2.0
    await store.append([config_event()])
    (drain,) = await store.append([_drain("192.0.2.11:80", expires)])
    await store.drop_expiry(drain.revision)  # as if appended by a version without the index
    assert (await store.expiries())[0] == {}
    async with start_coordinator():
        log = await _wait_for_log(store, 3)
    assert [e.WhichOneof("payload") for e in log] == ["config_applied", "admin_override", "override_expired"]
    assert 0.0 <= log[2].wall_time - expires <= 1.0


async def test_the_sweep_indexes_an_override_appended_without_its_entry_while_running(
    store: EtcdEventStore,
) -> None:
    """A rolling upgrade: a coordinator of an older version appends an override and no index
    entry while this one runs. The periodic sweep (0.2 s here) indexes it; it ends on time."""
    appender = Appender(store)
    task = ExpiryTask(store, appender, StateService(store), CLUSTER, sweep_every=0.2)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(appender.run())
        expiry = tg.create_task(task.run())
        try:
            await store.append([config_event()])
            await asyncio.sleep(0.3)  # the task is up, its index read (empty)
            expires = time.time() + 1.5
            (drain,) = await store.append([_drain("192.0.2.11:80", expires)])
            await store.drop_expiry(drain.revision)  # as an older coordinator leaves it
            log = await _wait_for_log(store, 3)
        finally:
            expiry.cancel()
            runner.cancel()
    assert [e.WhichOneof("payload") for e in log] == ["config_applied", "admin_override", "override_expired"]
    assert 0.0 <= log[2].wall_time - expires <= 1.0
    assert task.appended == 1
