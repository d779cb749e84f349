"""The gRPC face of the coordinator: ``lvs_events.v1.Coordinator``, health and reflection.

The coordinator is stateless: everything durable is in etcd (:mod:`lvs_events.etcd`, reached
through the contracts of :mod:`lvs_events.coordinator.stores`), so any number of instances may
serve one cluster. Start one in-process with :func:`serve_coordinator`::

    async with serve_coordinator(CoordinatorSettings(etcd_endpoints=eps, cluster="c1")) as c:
        channel = grpc.aio.insecure_channel(c.address)

Publish: one ack per event, in the order the events arrived on the stream; each request (a
batch, ``PublishRequest.events``) is answered by one ``PublishAck`` whose ``acks`` hold its
events' acks in order. A refused event
(malformed, oversized, invalid, wrong cluster) gets an ack with ``error_code=INVALID_ARGUMENT``
and nothing of it is stored; the stream goes on. Each valid event then passes the coordinator's
:class:`~lvs_events.coordinator.trust.Gate` (one call, :meth:`CoordinatorService._admit_event`):
the caller's verified principal may publish it (else ``PERMISSION_DENIED``), etcd is below its
quota's high-water mark and the principal within its rate (else ``RESOURCE_EXHAUSTED``); the
event is stamped with the principal (``actor``, ``origin``) and the coordinator's clock. The
stream's deadline goes with every event into the appender: an event not sent to etcd by then
gets ``DEADLINE_EXCEEDED`` and is never appended later. A publisher may keep up to
``publish_window`` events unacknowledged; past that the coordinator stops reading its stream
(backpressure through gRPC flow control). Sending one event and waiting for its ack gives unary
semantics; half-closing the stream ends it once every ack is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the asyncio servicer (health.aio)
from grpc_reflection.v1alpha import reflection

from lvs_events import wire
from lvs_events.coordinator.appender import Appender, validated_event
from lvs_events.coordinator.election import SERVICE_NAME as LEADER_ELECTION
from lvs_events.coordinator.election import add_leader_election, publisher_may_not, submit_fenced
from lvs_events.coordinator.expiry import ExpiryTask
from lvs_events.coordinator.filters import first_revision_since, request_filter, wire_matcher
from lvs_events.coordinator.snapshots import (
    DEFAULT_ETCD_HISTORY,
    DEFAULT_RETENTION,
    DEFAULT_SNAPSHOT_EVERY,
    DEFAULT_SNAPSHOT_INTERVAL,
    RevisionAhead,
    StateService,
)
from lvs_events.coordinator.stores import Appended, EventStore, SnapshotRecord
from lvs_events.coordinator.trust import (
    DEFAULT_HIGH_WATER,
    DEFAULT_LIMITS,
    DEFAULT_MAX_SKEW,
    DEFAULT_QUOTA_INTERVAL,
    Gate,
    Limits,
    QuotaState,
    watch_quota,
)
from lvs_events.domain import codec
from lvs_events.domain.config import Config
from lvs_events.domain.filters import InvalidFilter
from lvs_events.domain.redact import redact, redact_state
from lvs_events.domain.state import State
from lvs_events.errors import (
    Compacted,
    DeadlinePassed,
    Fenced,
    InvalidEvent,
    StoreError,
    StoreUnavailable,
)
from lvs_events.etcd.connection import ENV_ETCD_PASSWORD, PLAINTEXT, EtcdAccess, access_from
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.leader import EtcdLeaderStore
from lvs_events.etcd.txn import MAX_TXN_OPS
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.security.interceptor import AuthInterceptor, NoPrincipal, Refusals, current_principal
from lvs_events.security.principal import Role
from lvs_events.security.tls import (
    CertificateReloader,
    ListenMode,
    TlsFiles,
    check_listen,
    insecure_warning,
    server_credentials,
)

log = structlog.get_logger(__name__)

SERVICE_NAME: str = cpb.DESCRIPTOR.services_by_name["Coordinator"].full_name
MAX_RECEIVE_BYTES = 4 * 1024 * 1024  # > the 1 MB event limit: an oversized event gets a proper ack
MAX_SEND_BYTES = 256 * 1024 * 1024  # snapshots and GetState of large tables
# Pieces of a state (GetStateChunks, chunked snapshot items): far under every receive limit
# (the clients' 64 MiB, gRPC's default 4 MiB), so a state of any size reads.
STATE_CHUNK = 1024 * 1024
DEFAULT_PUBLISH_WINDOW = 1024
MIN_PING_INTERVAL_MS = 5_000  # clients may ping this often (lvs_events.client.log pings every 10 s)
SERVER_KEEPALIVE_MS = 30_000  # the server's own pings: a vanished client's streams end too
COMPACTED_RESTARTS = 5
ACK_MARGIN = 0.1  # seconds: a Publish ack's way back to the caller before its deadline


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    etcd_endpoints: tuple[str, ...] | list[str]
    cluster: str
    listen: str = "127.0.0.1:0"
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL
    retention: int = DEFAULT_RETENTION
    etcd_history: int = DEFAULT_ETCD_HISTORY  # etcd revisions kept by compaction; 0: never compact
    etcd_timeout: float = 5.0
    max_batch_events: int = 0  # events per etcd transaction; 0: all that etcd_max_txn_ops allows
    etcd_max_txn_ops: int = MAX_TXN_OPS  # etcd's --max-txn-ops (default 128: 63 events per txn)
    publish_window: int = DEFAULT_PUBLISH_WINDOW
    grace: float = 10.0  # seconds for in-flight appends and streams at shutdown
    health_interval: float = 2.0
    tls: TlsFiles | None = None  # None: plaintext, on loopback unless `insecure`
    insecure: bool = False  # plaintext on a reachable address (logged at every start)
    etcd_access: EtcdAccess = PLAINTEXT
    limits: Limits = DEFAULT_LIMITS
    max_clock_skew: float = DEFAULT_MAX_SKEW
    etcd_quota_bytes: int = 0  # 0: etcd's own report, else etcd's default (2 GiB)
    quota_high_water: float = DEFAULT_HIGH_WATER
    quota_interval: float = DEFAULT_QUOTA_INTERVAL
    extra: dict[str, Any] = field(default_factory=dict)


def _ack_error(event_id: str, code: str, message: str) -> cpb.PublishAck:
    return cpb.PublishAck(event_id=event_id, error_code=code, error=message)


def _ack_for(event_id: str, fut: asyncio.Future[Appended]) -> cpb.PublishAck:
    e = fut.exception()
    if e is None:
        a = fut.result()
        return cpb.PublishAck(event_id=event_id, revision=a.revision, duplicate=a.duplicate)
    if isinstance(e, Fenced):
        return _ack_error(event_id, "FAILED_PRECONDITION", str(e))
    if isinstance(e, DeadlinePassed):
        msg = str(e) if not e.sent else f"{e}; publish it again with the same event id to find out"
        return _ack_error(event_id, "DEADLINE_EXCEEDED", msg)
    if isinstance(e, InvalidEvent):
        return _ack_error(event_id, "INVALID_ARGUMENT", str(e))
    return _ack_error(event_id, "UNAVAILABLE", str(e) or type(e).__name__)


def _consume(fut: asyncio.Future[Appended]) -> None:
    if not fut.cancelled():
        fut.exception()  # mark retrieved: the client went away before its ack


_Entry = tuple[str, asyncio.Future[Appended]]
# what the ack writer of a Publish stream waits for: the answer to a request without events,
# the append of a one-event request, or the entries of a request (each answered by one
# PublishAck with ``acks``)
_Pending = cpb.PublishAck | _Entry | list[cpb.PublishAck | _Entry]


async def _batch_ack(entries: list[cpb.PublishAck | _Entry]) -> cpb.PublishAck:
    out = cpb.PublishAck()
    add = out.acks.add
    for entry in entries:
        if isinstance(entry, tuple):
            event_id, fut = entry
            if not fut.done():
                await asyncio.wait([fut])
            e = fut.exception()
            if e is None:
                a = fut.result()
                add(event_id=event_id, revision=a.revision, duplicate=a.duplicate)
            else:
                out.acks.append(_ack_for(event_id, fut))
        else:
            out.acks.append(entry)
    return out


def _abandon(pending: deque[_Pending | None]) -> None:
    """The stream ended with appends unacknowledged: mark their outcomes retrieved."""
    for left in pending:
        entries = left if isinstance(left, list) else [left]
        for entry in entries:
            if isinstance(entry, tuple):
                entry[1].add_done_callback(_consume)


class _Window:
    """Events a Publish stream may have unacknowledged (a batch larger than the window is let
    through alone)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    def try_acquire(self, n: int) -> bool:
        """:meth:`acquire` without waiting: False if it would wait."""
        if self.used and self.used + n > self.size:
            return False
        self.used += n
        return True

    async def acquire(self, n: int) -> None:
        while self.used and self.used + n > self.size:
            self._room.clear()
            await self._room.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._room.set()


class CoordinatorService(cpb_grpc.CoordinatorServicer):
    def __init__(
        self,
        store: EventStore,
        appender: Appender,
        states: StateService,
        cluster: str,
        *,
        publish_window: int = DEFAULT_PUBLISH_WINDOW,
        gate: Gate | None = None,
    ) -> None:
        self.store = store
        self.gate = gate or Gate()
        self.appender = appender
        self.states = states
        self.cluster = cluster
        self.publish_window = publish_window
        self._readers: set[asyncio.Task[None]] = set()
        self._followers: set[asyncio.Task[Any]] = set()  # the tasks serving following Subscribes
        self._followers_stopped = False
        self._publishers = 0
        self._no_publishers = asyncio.Event()
        self._no_publishers.set()
        self.draining = False

    # --- Publish --------------------------------------------------------------------------

    async def Publish(  # an async generator, as grpc.aio allows
        self, request_iterator: AsyncIterator[cpb.PublishRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cpb.PublishAck]:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down")
        window = _Window(self.publish_window)
        pending: deque[_Pending | None] = deque()
        ready = asyncio.Event()
        remaining = context.time_remaining()
        # the appender's deadline ends ACK_MARGIN early, so that an event it gave up on is
        # answered (not appended, or outcome unknown) before the caller stops listening
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining - ACK_MARGIN
        reader = asyncio.create_task(self._read_publish(request_iterator, pending, ready, window, deadline))
        self._readers.add(reader)
        self._publishers += 1
        self._no_publishers.clear()
        try:
            while True:
                while not pending:
                    ready.clear()
                    await ready.wait()
                item = pending.popleft()
                if item is None:
                    break
                if isinstance(item, tuple):
                    event_id, fut = item
                    if not fut.done():
                        # awaited directly (asyncio.wait costs a callback and a future more, on
                        # the latency path); its error, if any, goes into the ack below. The
                        # appender never cancels it: a CancelledError here is our own.
                        with contextlib.suppress(Exception):
                            await fut
                    window.release(1)
                    yield cpb.PublishAck(acks=[_ack_for(event_id, fut)])
                elif isinstance(item, list):
                    yield await _batch_ack(item)
                    window.release(len(item))
                else:
                    window.release(1)
                    yield item
        finally:
            self._readers.discard(reader)
            if not reader.done():
                reader.cancel()
                await asyncio.wait([reader])
            _abandon(pending)
            self._publishers -= 1
            if self._publishers == 0:
                self._no_publishers.set()

    async def _read_publish(
        self,
        requests: AsyncIterator[cpb.PublishRequest],
        pending: deque[_Pending | None],
        ready: asyncio.Event,
        window: _Window,
        deadline: float | None,
    ) -> None:
        """``deadline``: the stream's, on the event loop's clock (None: none)."""
        try:
            async for req in requests:
                if len(req.events) == 1:
                    if not window.try_acquire(1):
                        await window.acquire(1)
                    # one event: checked once, then queued without a coroutine when the queue
                    # has room (the latency path), else by waiting for room; its entry is
                    # answered as a one-ack batch
                    checked = self._admit_event(req.events[0])
                    if isinstance(checked, cpb.PublishAck):
                        pending.append([checked])
                    else:
                        entry = self._queue_now(checked, deadline)
                        pending.append(
                            entry if entry is not None else await self._queue_waiting(checked, deadline)
                        )
                elif req.events:
                    await window.acquire(len(req.events))
                    pending.append(await self._admit_batch(req, deadline))
                else:
                    if not window.try_acquire(1):
                        await window.acquire(1)
                    pending.append(_ack_error("", "INVALID_ARGUMENT", "PublishRequest without events"))
                ready.set()
        except grpc.RpcError:
            pass  # the client went away: the writer side ends with it
        finally:
            pending.append(None)
            ready.set()

    def _admit_event(self, msg: pb.Event) -> cpb.PublishAck | tuple[pb.Event, int]:
        """One published event, wherever it arrives: validated, decided by the gate (policy,
        quota, rate) for the caller's principal and stamped; its refusal, or (event, encoded
        size) ready to queue."""
        try:
            event, size = validated_event(msg, self.cluster)
        except InvalidEvent as e:
            log.info("event refused", event_id=msg.event_id, error=str(e))
            return _ack_error(msg.event_id, "INVALID_ARGUMENT", str(e))
        refused = publisher_may_not(msg)
        if refused:
            return _ack_error(msg.event_id, "INVALID_ARGUMENT", refused)
        claimed = len(msg.actor) + len(msg.origin)
        refusal = self.gate.admit(current_principal(), msg, event, size)
        if refusal is not None:
            return _ack_error(msg.event_id, refusal.code, refusal.message)
        # stamped: the size moves with the two strings. Counted in characters, not re-encoded:
        # it feeds the batch's byte budget and the byte rate, and the budget (1 MB) leaves
        # half a megabyte below etcd's request limit for the few bytes this misses
        return msg, size + len(msg.actor) + len(msg.origin) - claimed

    def _queue_now(
        self, checked: tuple[pb.Event, int], deadline: float | None
    ) -> cpb.PublishAck | _Entry | None:
        """Queue a checked event if the appender's queue has room now; None if it has not
        (nothing done: the caller goes through :meth:`_queue_waiting`)."""
        msg = checked[0]
        try:
            # fencing: an event with a term is appended only while the leader key holds that term,
            # compared in the append transaction itself (else FAILED_PRECONDITION "fenced")
            futs = self.appender.try_submit([checked], require_term=msg.term or None, deadline=deadline)
        except StoreUnavailable as e:
            return _ack_error(msg.event_id, "UNAVAILABLE", str(e))
        return None if futs is None else (msg.event_id, futs[0])

    async def _queue_waiting(
        self, checked: tuple[pb.Event, int], deadline: float | None
    ) -> cpb.PublishAck | _Entry:
        """Queue a checked event, waiting for room (backpressure)."""
        msg, size = checked
        try:
            fut = await self.appender.submit(msg, size, require_term=msg.term or None, deadline=deadline)
        except StoreUnavailable as e:
            return _ack_error(msg.event_id, "UNAVAILABLE", str(e))
        return (msg.event_id, fut)

    async def _admit_batch(
        self, req: cpb.PublishRequest, deadline: float | None
    ) -> list[cpb.PublishAck | _Entry]:
        """A batch request: each event checked on its own (a refused one does not stop the
        others), the valid ones queued together. One entry per event, in order."""
        out: list[cpb.PublishAck | _Entry | None] = []
        valid: list[tuple[pb.Event, int]] = []
        slots: list[int] = []
        for msg in req.events:
            checked = self._admit_event(msg)
            if isinstance(checked, cpb.PublishAck):
                out.append(checked)
                continue
            slots.append(len(out))
            out.append(None)
            valid.append(checked)
        if valid:
            try:
                # fencing: one group per term
                futs = await submit_fenced(self.appender, valid, deadline=deadline)
            except StoreUnavailable as e:
                for i, (msg, _) in zip(slots, valid, strict=True):
                    out[i] = _ack_error(msg.event_id, "UNAVAILABLE", str(e))
            else:
                for i, (msg, _), fut in zip(slots, valid, futs, strict=True):
                    out[i] = (msg.event_id, fut)
        return [entry for entry in out if entry is not None]

    async def stop_publishers(self, grace: float) -> None:
        """Stop reading new events; in-flight ones still get their acks (up to ``grace``)."""
        self.draining = True
        for task in list(self._readers):
            task.cancel()
        try:
            async with asyncio.timeout(grace):
                await self._no_publishers.wait()
        except TimeoutError:
            log.warning("publish streams still open after the grace period", streams=self._publishers)

    def stop_followers(self) -> None:
        """End every following Subscribe now: a stream open until the grace period ends would
        only delay the shutdown, and its client resumes on another coordinator."""
        self._followers_stopped = True
        for task in list(self._followers):
            task.cancel()

    # --- Subscribe ------------------------------------------------------------------------

    async def Subscribe(  # an async generator, as grpc.aio allows
        self, request: cpb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cpb.SubscribeResponse]:
        try:
            wanted = wire_matcher(request_filter(request))
        except InvalidFilter as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        task = asyncio.current_task()
        if not request.follow or task is None:
            async for resp in self._subscribe(request, context, wanted):
                yield resp
            return
        self._followers.add(task)  # ended at shutdown (stop_followers): the client fails over
        task.add_done_callback(self._followers.discard)
        try:
            async for resp in self._subscribe(request, context, wanted):
                yield resp
        except asyncio.CancelledError:
            if not self._followers_stopped:
                raise
            # a cancelled handler alone would leave the stream open until the grace period ends
            await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down")

    async def _subscribe(
        self,
        request: cpb.SubscribeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        wanted: Callable[[pb.Event], bool],
    ) -> AsyncIterator[cpb.SubscribeResponse]:
        nxt = max(request.from_revision, 1)
        if request.since_wall_time > 0:
            try:
                nxt = await first_revision_since(self.store, request.since_wall_time, nxt)
            except StoreError as e:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        restarts = 0
        while True:
            try:
                async for item in self.store.read(nxt, follow=request.follow):
                    nxt = item.event.revision + 1
                    if wanted(item.event):
                        resp = cpb.SubscribeResponse(event=item.event, head_revision=item.head)
                        yield await _caller_view(resp)
            except Compacted as e:
                restarts += 1
                if not request.snapshot_if_compacted or restarts > COMPACTED_RESTARTS:
                    await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(e))
                snap = await self._snapshot_or_abort(e, context)
                log.info("subscriber sent to the snapshot", requested=e.requested, revision=snap.revision)
                bounds = await self.store.bounds()
                # credentials redacted for the caller (if a reader) before the state is cut up
                shown = await _caller_view(
                    cpb.SubscribeResponse(
                        snapshot=cpb.Snapshot(
                            revision=snap.revision,
                            state=snap.state,
                            table_digest=snap.table_digest,
                            chain_head=snap.chain_head,
                        ),
                        head_revision=bounds.head,
                    )
                )
                for resp in _snapshot_items(shown.snapshot, bounds.head, chunked=request.snapshot_chunks):
                    yield resp
                nxt = snap.revision + 1
            except StoreError as e:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            else:
                return

    async def _snapshot_or_abort(
        self, e: Compacted, context: grpc.aio.ServicerContext[Any, Any]
    ) -> SnapshotRecord:
        try:
            snap = await self.store.get_snapshot()
        except StoreError as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        if snap is None or snap.revision + 1 < e.first_available:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"{e}; and no snapshot covers it")
        return snap

    # --- GetState -------------------------------------------------------------------------

    def status_metadata(self) -> tuple[tuple[str, str], ...]:
        """Refusal counters and the etcd quota, as GetState's initial metadata."""
        gate = self.gate
        q = gate.quota
        out = [(f"lvs-{k.replace('_', '-')}", str(v)) for k, v in gate.counts().items()]
        out += [
            ("lvs-etcd-db-bytes", str(q.db_bytes)),
            ("lvs-etcd-quota-bytes", str(q.quota_bytes)),
            ("lvs-etcd-quota-alarm", q.describe() if q.alarm else "off"),
        ]
        return tuple(out)

    async def GetState(
        self, request: cpb.GetStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetStateResponse:
        try:
            folded = await self.states.state_at(request.revision)
        except (Compacted, RevisionAhead) as e:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(e))
        except StoreError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        # encoding a state is CPU-bound and grows with the table: not on the loop
        state, table, digest = await asyncio.to_thread(
            lambda: (folded.state_json(), folded.table_json(), folded.table.digest())
        )
        # the coordinator's own alarms and counters, beside the state (docs/security.md)
        await context.send_initial_metadata(self.status_metadata())
        return await _caller_view(
            cpb.GetStateResponse(
                revision=folded.revision,
                state=state,
                table=table,
                table_digest=digest,
                head_revision=folded.bounds.head,
                first_revision=folded.bounds.first,
            )
        )

    async def GetStateChunks(  # an async generator, as grpc.aio allows
        self, request: cpb.GetStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cpb.StateChunk]:
        """GetState in pieces of at most :data:`STATE_CHUNK` bytes (see coordinator.proto)."""
        full = await self.GetState(request, context)
        state, table = full.state, full.table
        full.ClearField("state")
        full.ClearField("table")
        yield cpb.StateChunk(header=full, last=not state and not table)
        for i in range(0, len(state), STATE_CHUNK):
            last = not table and i + STATE_CHUNK >= len(state)
            yield cpb.StateChunk(state=state[i : i + STATE_CHUNK], last=last)
        for i in range(0, len(table), STATE_CHUNK):
            yield cpb.StateChunk(table=table[i : i + STATE_CHUNK], last=i + STATE_CHUNK >= len(table))


def _snapshot_items(snap: cpb.Snapshot, head: int, *, chunked: bool) -> list[cpb.SubscribeResponse]:
    """A snapshot as Subscribe sends it: one item, or (``chunked``) the snapshot without its
    state followed by the state in pieces of at most :data:`STATE_CHUNK` bytes."""
    header = cpb.Snapshot(revision=snap.revision, table_digest=snap.table_digest, chain_head=snap.chain_head)
    if not chunked:
        header.state = snap.state
        return [cpb.SubscribeResponse(snapshot=header, head_revision=head)]
    items = [cpb.SubscribeResponse(snapshot=header, head_revision=head)]
    state = snap.state
    for i in range(0, max(1, len(state)), STATE_CHUNK):
        piece = cpb.Chunk(data=state[i : i + STATE_CHUNK], last=i + STATE_CHUNK >= len(state))
        items.append(cpb.SubscribeResponse(snapshot_chunk=piece, head_revision=head))
    return items


# --- check credentials: served to directors and operators only (docs/security.md) -------------

_Shown = TypeVar("_Shown", cpb.SubscribeResponse, cpb.GetStateResponse)
# Directors run the checks, operators publish configurations; UNVERIFIED is every caller of a
# server without TLS, which already lets it publish configurations.
_SEE_CREDENTIALS = frozenset({Role.DIRECTOR, Role.OPERATOR, Role.UNVERIFIED})


async def _caller_view(resp: _Shown) -> _Shown:
    """``resp`` as the call's principal may see it: for readers and the witness, the check
    credentials of the configurations it carries (a ``ConfigApplied`` event, a state) replaced
    by :data:`~lvs_events.domain.redact.REDACTED`, digests as they were."""
    try:
        if current_principal().role in _SEE_CREDENTIALS:
            return resp
    except NoPrincipal:  # a server without AuthInterceptor: every caller is trusted alike
        return resp
    if isinstance(resp, cpb.SubscribeResponse) and not (
        resp.HasField("snapshot") or resp.event.HasField("config_applied")
    ):
        return resp

    def redacted() -> _Shown:  # decoding and encoding grow with the configuration: not on the loop
        out = type(resp)()
        out.CopyFrom(resp)
        if isinstance(out, cpb.GetStateResponse) and out.state:
            out.state = codec.dumps(redact_state(codec.loads(State, out.state)))
        elif isinstance(out, cpb.SubscribeResponse) and out.HasField("snapshot"):
            out.snapshot.state = codec.dumps(redact_state(codec.loads(State, out.snapshot.state)))
        elif isinstance(out, cpb.SubscribeResponse):
            config = wire.from_pb(Config, out.event.config_applied.config, "config")
            out.event.config_applied.config.Clear()
            wire.to_pb(redact(config), out.event.config_applied.config)
        return out

    return await asyncio.to_thread(redacted)


@dataclass
class RunningCoordinator:
    """A coordinator started by :func:`serve_coordinator`."""

    settings: CoordinatorSettings
    server: grpc.aio.Server
    port: int
    store: EventStore
    appender: Appender
    states: StateService
    service: CoordinatorService
    health: HealthServicer
    mode: ListenMode = ListenMode.LOOPBACK_PLAINTEXT
    reloader: CertificateReloader | None = None  # the server certificate in force (TLS)
    background: asyncio.Task[None] | None = None  # appender, snapshots, health: done = failed
    _drained: bool = False

    @property
    def gate(self) -> Gate:
        return self.service.gate

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def drain(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, stop reading events, finish in-flight appends, stop the server."""
        if self._drained:
            return
        self._drained = True
        grace = self.settings.grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        log.info("draining", grace=grace)
        await self.health.enter_graceful_shutdown()
        self.service.stop_followers()
        await self.service.stop_publishers(grace)
        await self.appender.close(max(0.0, deadline - loop.time()))
        await self.server.stop(max(0.1, deadline - loop.time()))
        log.info("stopped", head=self.appender.head)


async def _watch_health(store: EventStore, servicer: HealthServicer, interval: float) -> None:
    serving: bool | None = None
    while True:
        try:
            await store.ping()
            ok = True
        except StoreError as e:
            ok = False
            if serving is not False:
                log.warning("etcd unreachable; NOT_SERVING", error=str(e))
        if ok != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await servicer.set("", status)
            await servicer.set(SERVICE_NAME, status)
            serving = ok
        await asyncio.sleep(interval)


async def _background(  # noqa: PLR0917 -- the parts serve_coordinator made, each once
    appender: Appender,
    states: StateService,
    store: EtcdEventStore,
    servicer: HealthServicer,
    settings: CoordinatorSettings,
    quota: QuotaState,
    expiry: ExpiryTask,
) -> None:
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(appender.run(), name="appender")
            tg.create_task(states.run(), name="snapshots")
            tg.create_task(expiry.run(), name="override-expiry")
            tg.create_task(_watch_health(store, servicer, settings.health_interval), name="health")
            tg.create_task(watch_quota(store, quota, settings.quota_interval), name="etcd-quota")
    except Exception:
        log.exception("coordinator background task failed")
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        raise


@contextlib.asynccontextmanager
async def serve_coordinator(settings: CoordinatorSettings) -> AsyncIterator[RunningCoordinator]:
    """Run a coordinator (gRPC server + appender + snapshots) until the block exits.

    On exit (or :meth:`RunningCoordinator.drain`) it drains within ``settings.grace``.
    ``settings.listen`` may use port 0; the chosen port is ``.port`` / ``.address``.
    Without ``settings.tls`` it serves plaintext on loopback only, unless ``settings.insecure``
    (:class:`~lvs_events.security.tls.ListenRefused` otherwise, before anything starts).
    """
    mode = check_listen(settings.listen, settings.tls is not None, settings.insecure)
    reloader = CertificateReloader(settings.tls) if settings.tls is not None else None
    if mode is ListenMode.INSECURE:
        log.warning(insecure_warning(settings.listen))
    store = EtcdEventStore(
        settings.etcd_endpoints,
        settings.cluster,
        timeout=settings.etcd_timeout,
        max_txn_ops=settings.etcd_max_txn_ops,
        access=settings.etcd_access,
    )
    await store.connect()
    leaders = EtcdLeaderStore(store)  # the election's own etcd connection (connects on first use)
    try:
        appender = Appender(store, max_batch_events=settings.max_batch_events)
        states = StateService(
            store,
            snapshot_every=settings.snapshot_every,
            snapshot_interval=settings.snapshot_interval,
            retention=settings.retention,
            etcd_history=settings.etcd_history,
        )
        appender.on_appended(states.appended)
        quota = QuotaState(high_water=settings.quota_high_water)
        if settings.etcd_quota_bytes > 0:
            quota.quota_bytes, quota.quota_fixed = settings.etcd_quota_bytes, True
        refusals = Refusals()
        gate = Gate(refusals=refusals, limits=settings.limits, max_skew=settings.max_clock_skew, quota=quota)
        service = CoordinatorService(
            store, appender, states, settings.cluster, publish_window=settings.publish_window, gate=gate
        )
        server = grpc.aio.server(
            # one interceptor: the caller is identified and the method decided, then a
            # malformed request refused, before anything of the request reaches a handler
            interceptors=[AuthInterceptor(verified=reloader is not None, refusals=refusals)],
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),
                # accept the clients' keepalive pings (every 10 s by default) so a dead
                # connection under a quiet Subscribe is noticed in seconds on both sides
                ("grpc.keepalive_permit_without_calls", 1),
                # never GOAWAY a client for pinging (seen as "too_many_pings" under a quiet
                # Subscribe): a dropped follower would only reconnect and resume anyway
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
                ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_MS // 2),
            ],
        )
        cpb_grpc.add_CoordinatorServicer_to_server(service, server)
        add_leader_election(server, leaders, settings.cluster, settings.etcd_timeout)
        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, LEADER_ELECTION, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        if reloader is not None:
            port = server.add_secure_port(settings.listen, server_credentials(reloader.files, reloader))
        else:
            port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
        running = RunningCoordinator(
            settings, server, port, store, appender, states, service, health_servicer, mode, reloader
        )
        # The background tasks run in a TaskGroup inside their own supervisor task, so an error in
        # the caller's block is not turned into an ExceptionGroup, and a failed background task
        # (see ``RunningCoordinator.background``) is visible to whoever runs the coordinator.
        running.background = asyncio.create_task(
            _background(
                appender,
                states,
                store,
                health_servicer,
                settings,
                quota,
                ExpiryTask(store, appender, states, settings.cluster),
            ),
            name="coordinator-background",
        )
        try:
            await server.start()
            log.info(
                "coordinator serving",
                address=running.address,
                cluster=settings.cluster,
                listen_mode=mode.value,
                etcd=settings.etcd_access.describe(),
            )
            yield running
        finally:
            try:
                await running.drain()
            finally:
                running.background.cancel()
                await asyncio.wait([running.background])
    finally:
        await leaders.close()
        await store.close()


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` (once per signal)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


__all__ = [
    "ENV_ETCD_PASSWORD",
    "SERVICE_NAME",
    "CoordinatorService",
    "CoordinatorSettings",
    "RunningCoordinator",
    "access_from",
    "install_signal_handlers",
    "serve_coordinator",
]
