"""Coordinator test fixtures: a real etcd (tests/conftest.py) plus in-process coordinators."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
import grpc.aio
import pytest

from lvs_events.coordinator.server import CoordinatorSettings, RunningCoordinator, serve_coordinator
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from tests.coordinator.helpers import CLUSTER
from tests.support.etcd import EtcdCluster

StartCoordinator = Callable[..., AbstractAsyncContextManager[RunningCoordinator]]


@pytest.fixture
def start_coordinator(etcd: EtcdCluster) -> StartCoordinator:
    """``async with start_coordinator(**settings) as c``: a coordinator on the test's etcd."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[RunningCoordinator]:
        settings: dict[str, Any] = {"etcd_endpoints": etcd.endpoints, "cluster": CLUSTER, "grace": 5.0}
        settings.update(overrides)
        return serve_coordinator(CoordinatorSettings(**settings))

    return start


@pytest.fixture
async def coordinator(start_coordinator: StartCoordinator) -> AsyncIterator[RunningCoordinator]:
    async with start_coordinator() as c:
        yield c


@pytest.fixture
async def stub(coordinator: RunningCoordinator) -> AsyncIterator[cpb_grpc.CoordinatorAsyncStub]:
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        yield cpb_grpc.CoordinatorStub(channel)  # type: ignore[misc]


@pytest.fixture
async def store(etcd: EtcdCluster) -> AsyncIterator[EtcdEventStore]:
    async with EtcdEventStore(etcd.endpoints, CLUSTER) as s:
        yield s


def fresh_cluster() -> str:
    return f"c{uuid.uuid4().hex[:10]}"
