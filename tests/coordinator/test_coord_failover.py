"""Killing one of two coordinators mid-stream loses no acknowledged event and duplicates none.

The coordinators run as real processes (``python -m lvs_events.coordinator.main``); one is SIGKILLed while
a publisher streams to it. The publisher then retries every unacknowledged event, with the same
event_ids, on the other coordinator.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from tests.coordinator.helpers import CLUSTER, health_event, publish_all, read_log
from tests.support.etcd import EtcdCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def _start(etcd: EtcdCluster, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lvs_events.coordinator.main",
                f"--listen=127.0.0.1:{port}",
                f"--etcd-endpoints={','.join(etcd.endpoints)}",
                f"--cluster={CLUSTER}",
                "--log-format=json",
                "--grace=3",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def _wait_serving(address: str, proc: subprocess.Popen[bytes], deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, "coordinator exited during start"
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < end, f"coordinator at {address} not serving"
            await asyncio.sleep(0.1)


@pytest.fixture
def two_coordinators(
    etcd: EtcdCluster, tmp_path: Path
) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    procs = []
    for i in range(2):
        port = free_port()
        procs.append((f"127.0.0.1:{port}", _start(etcd, port, tmp_path / f"coordinator{i}.log")))
    try:
        yield procs
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.mark.slow
async def test_sigkill_one_coordinator_mid_stream(etcd: EtcdCluster, two_coordinators) -> None:
    (addr_a, proc_a), (addr_b, proc_b) = two_coordinators
    await asyncio.gather(_wait_serving(addr_a, proc_a), _wait_serving(addr_b, proc_b))
    events = [health_event(f"k-{i}", up=i % 3 != 0) for i in range(4000)]
    acked: dict[str, int] = {}

    async with grpc.aio.insecure_channel(addr_a) as channel_a:
        stub_a = cpb_grpc.CoordinatorStub(channel_a)
        call = stub_a.Publish(timeout=60)

        async def send() -> None:
            try:
                for e in events:
                    await call.write(cpb.PublishRequest(events=[e]))
                    await asyncio.sleep(0)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass

        sender = asyncio.create_task(send())
        try:
            async for reply in call:
                (ack,) = reply.acks
                assert ack.error_code == ""
                acked[ack.event_id] = ack.revision
                if len(acked) == 600:
                    proc_a.send_signal(signal.SIGKILL)  # mid-stream: events in flight, unacked
        except grpc.aio.AioRpcError as e:
            ended = e.code()
        else:
            ended = grpc.StatusCode.OK
        sender.cancel()
        await asyncio.wait([sender])
    assert ended in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL)
    proc_a.wait(10)
    assert 600 <= len(acked) < len(events)

    # the publisher retries everything not acknowledged, same ids, on the other coordinator
    retry = [e for e in events if e.event_id not in acked]
    async with grpc.aio.insecure_channel(addr_b) as channel_b:
        acks = await publish_all(cpb_grpc.CoordinatorStub(channel_b), retry)
    assert all(a.error_code == "" for a in acks)
    dup_retries = sum(a.duplicate for a in acks)  # appended by A but not acked before the kill
    final = {**acked, **{a.event_id: a.revision for a in acks}}

    async with EtcdEventStore(etcd.endpoints, CLUSTER) as store:
        log = await read_log(store)
    assert [e.revision for e in log] == list(range(1, len(events) + 1))  # dense, nothing twice
    by_id = {e.event_id: e.revision for e in log}
    assert len(by_id) == len(events)
    for event_id, revision in acked.items():  # every acknowledged event is there, where acked
        assert by_id[event_id] == revision
    assert by_id == final
    print(f"acked before kill: {len(acked)}, retried: {len(retry)}, already appended: {dup_retries}")
