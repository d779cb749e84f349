"""Which coordinators answer, before a command spends its timeout on them.

Each endpoint is asked the standard gRPC health check once, all at the same time, within a
short deadline. A refused connection answers at once, so a command against stopped
coordinators fails in milliseconds instead of retrying until ``--timeout``; a coordinator that
answers NOT_SERVING is up but cannot reach etcd (it says so while etcd is away), which is its
own error: the operator should look at etcd, not at the coordinator.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lvs_events.errors import CoordinatorUnavailable, LvsEventsError
from lvs_events.security.tls import TlsFiles, channel_credentials

PROBE_SECONDS = 1.0  # at most this long per probe: a refused connection answers in milliseconds


class StoreUnreachable(LvsEventsError):
    """A coordinator answered, but its etcd did not."""


class Answer(enum.Enum):
    SERVING = "serving"
    NO_STORE = "etcd unreachable"  # the coordinator answered NOT_SERVING
    SILENT = "no answer"  # nothing within the probe's deadline: maybe slow, maybe dead
    REFUSED = "unreachable"


@dataclass(frozen=True, slots=True)
class Probe:
    endpoint: str
    answer: Answer
    detail: str = ""


def _channel(endpoint: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(endpoint)
    return grpc.aio.secure_channel(endpoint, channel_credentials(tls))


async def probe_one(endpoint: str, within: float, tls: TlsFiles | None) -> Probe:
    channel = _channel(endpoint, tls)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=within)
    except grpc.aio.AioRpcError as e:
        code = e.code()
        first = (e.details() or code.name).splitlines()[0]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Probe(endpoint, Answer.SILENT, f"no answer within {within:g}s")
        if code == grpc.StatusCode.UNAVAILABLE:
            return Probe(endpoint, Answer.REFUSED, first)
        # it answered, if only to refuse this call (no health service, no permission): it is up
        return Probe(endpoint, Answer.SERVING, first)
    finally:
        await channel.close(grace=None)
    if resp.status == health_pb2.HealthCheckResponse.SERVING:
        return Probe(endpoint, Answer.SERVING)
    return Probe(endpoint, Answer.NO_STORE, "the coordinator answered NOT_SERVING")


_ORDER = {Answer.SERVING: 0, Answer.SILENT: 1, Answer.NO_STORE: 2, Answer.REFUSED: 3}


async def reachable(endpoints: Sequence[str], within: float, tls: TlsFiles | None) -> list[str]:
    """``endpoints`` in the order to try them (serving first); raises
    :class:`CoordinatorUnavailable` when every one refused, :class:`StoreUnreachable` when the
    only ones that answered cannot reach etcd."""
    probes = await asyncio.gather(*(probe_one(e, min(PROBE_SECONDS, within), tls) for e in endpoints))
    answers = {p.answer for p in probes}
    if answers <= {Answer.REFUSED}:
        detail = "; ".join(f"{p.endpoint}: {p.detail}" for p in probes)
        raise CoordinatorUnavailable(f"no coordinator answered ({detail})")
    if answers <= {Answer.REFUSED, Answer.NO_STORE}:
        up = ", ".join(p.endpoint for p in probes if p.answer is Answer.NO_STORE)
        raise StoreUnreachable(
            f"etcd unreachable: the coordinator at {up} answered, but cannot reach its etcd"
        )
    return [p.endpoint for p in sorted(probes, key=lambda p: _ORDER[p.answer])]
