"""``CoordinatorClient``: the one gRPC client of the coordinator, used by the agent and the CLI.

It speaks domain types only (``lvs_events.domain``): conversion to and from protobuf happens
here, at the edge (``lvs_events.wire``); nothing it returns is a protobuf message.

Failover. The client holds a ring of coordinator endpoints (``host:port``,
:class:`~lvs_events.retry.EndpointRing`) and uses one at a time. When a call fails with a
transient status (UNAVAILABLE, DEADLINE_EXCEEDED, ...), it moves to the next endpoint, the
first time at once and then with exponential backoff and jitter (:mod:`lvs_events.retry`),
until the call's deadline; then it raises :class:`~lvs_events.errors.CoordinatorUnavailable`
with a one-line message.

Deadlines. Every RPC has one: unary calls ``attempt_timeout`` per attempt within ``timeout``
overall; the long-lived streams (``Publish``, ``Subscribe`` with ``follow``) a gRPC deadline of
``stream_max_age``, after which they are reopened transparently; each ``publish`` call waits at
most ``timeout`` for its acks; a non-following ``Subscribe`` waits at most ``timeout`` per item.
Dead connections under a quiet following stream are found by HTTP/2 keepalive pings, every
``keepalive`` seconds (default 10; None turns them off) with an answer due within half that
(the coordinator accepts pings every 5 s or more), and at the latest by ``stream_max_age``.

TLS. ``tls``: the CA, certificate and key (:class:`~lvs_events.security.tls.TlsFiles`); None
takes them from the environment or ``/etc/default/lvs-events``, and without any the channels are
plaintext. A rotated certificate is used from the next call on (:mod:`lvs_events.client.channels`).

Batches. ``publish`` sends its events in batch requests (``PublishRequest.events``, up to
``batch_events`` events or about ``batch_bytes`` each), answered by one ack message per request.

Exactly once. ``publish`` keeps one long-lived bidirectional ``Publish`` stream. If it breaks,
the events not yet acknowledged are sent again, with the same ``event_id``, on the next endpoint;
the coordinator deduplicates by ``event_id`` (the ack says ``duplicate``), so each event is in
the log exactly once.

No gap, no duplicate. ``subscribe`` remembers the last revision it yielded; after a broken
stream it resumes from the next revision on another endpoint and drops anything at or below
the last one yielded.

Filters. ``subscribe(filters=EventFilter(...))`` sends the filter to the coordinator, which
applies it (:mod:`lvs_events.domain.filters`): only matching events cross the wire.
``subscribe(since=t)`` starts at the first revision whose event's wall time is ``t`` or later;
the coordinator finds it, nothing older is sent.

Typical use::

    async with CoordinatorClient(["10.0.0.1:7400", "10.0.0.2:7400"]) as client:
        event = new_event(payload, cluster="c", origin="lb1", actor="lvs-agent")  # lvs_events.client.events
        acks = await client.publish([event])
        view = await client.get_state()
        async with client.subscribe(from_revision=view.revision + 1, follow=True) as sub:
            async for item in sub:
                ...
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, NoReturn, Self

import grpc
import structlog

from lvs_events import wire
from lvs_events.client.channels import Channels
from lvs_events.domain import codec
from lvs_events.domain.chain import ChainFollower
from lvs_events.domain.events import Event
from lvs_events.domain.filters import EventFilter
from lvs_events.domain.snapshot import Snapshot, StateView
from lvs_events.domain.state import State
from lvs_events.domain.table import Table, table_from_json
from lvs_events.errors import CoordinatorUnavailable, InvalidEvent, LvsEventsError
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.retry import EndpointRing, RetryDeadline, RetryPolicy, call_over_endpoints
from lvs_events.security.tls import TlsFiles

__all__ = ["Ack", "CoordinatorClient", "CoordinatorRejected", "Subscription"]

log = structlog.get_logger("lvs_events.client.log")

# Statuses after which another endpoint (or the same one, later) may well succeed.
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,  # a server shutting down cancels its streams
        grpc.StatusCode.UNKNOWN,  # a server process dying mid-call
        grpc.StatusCode.INTERNAL,  # a broken HTTP/2 connection
    }
)
# HTTP/2 keepalive ping interval, seconds: a silently dead connection under a quiet following
# Subscribe is noticed within about 1.5 x this. The coordinator accepts pings every 5 s or more.
DEFAULT_KEEPALIVE: Final = 10.0
# Ack error codes (PublishAck.error_code) that mean "try again", not "refused".
RETRYABLE_ACK_CODES: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})


class CoordinatorRejected(LvsEventsError):
    """The coordinator answered, and refused the request (INVALID_ARGUMENT, OUT_OF_RANGE, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"coordinator refused the request: {code}: {message}")
        self.code = code


# --- domain-side results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """The coordinator's answer to one published event.

    ``revision`` is the event's log revision (the original one when ``duplicate``). A refused
    event has ``error_code`` (``INVALID_ARGUMENT``, ``FAILED_PRECONDITION`` for a fenced term) and
    a message in ``error``, and revision 0.
    """

    event_id: str
    revision: int
    duplicate: bool = False
    error_code: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error_code


# --- the client -------------------------------------------------------------------------------


class _StreamEnded(Exception):
    """The server closed a stream we expected more from."""


class _Attempt:
    """Failover bookkeeping for one logical streaming call (Publish, Subscribe): the client's
    endpoint ring, one :class:`~lvs_events.retry.Backoff` to the call's deadline, the last error.
    Unary calls use :func:`~lvs_events.retry.call_over_endpoints` instead."""

    def __init__(self, client: CoordinatorClient, what: str, timeout: float) -> None:
        self.client = client
        self.what = what
        self.timeout = timeout
        self.backoff = client.retry_policy.start(timeout, clock=asyncio.get_running_loop().time)
        self.last_error = ""

    def remaining(self) -> float:
        left = self.backoff.remaining()
        return self.timeout if left is None else left

    async def failed(self, endpoint: str, error: str) -> None:
        """Record a transient failure on ``endpoint``, move to the next one and back off;
        raise CoordinatorUnavailable when the next attempt would start past the deadline."""
        self.last_error = f"{endpoint}: {error}"
        self.client._failed_over(self.what, endpoint, error)
        try:
            delay = self.backoff.next_delay()
        except RetryDeadline as e:
            message = _unavailable(self.client, self.what, self.timeout, self.last_error)
            raise CoordinatorUnavailable(message) from e
        await asyncio.sleep(delay)


class CoordinatorClient:
    """Client of a set of equivalent coordinators (see the module docstring).

    Use as ``async with CoordinatorClient(endpoints) as client`` (or call :meth:`close`).
    ``publish`` calls are serialised on the one ``Publish`` stream (batch events for
    throughput); ``subscribe`` and ``get_state`` may run concurrently with it and each other.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 5.0,
        stream_max_age: float = 600.0,
        keepalive: float | None = DEFAULT_KEEPALIVE,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        batch_events: int = 256,
        batch_bytes: int = 1024 * 1024,
        tls: TlsFiles | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("CoordinatorClient needs at least one endpoint (host:port)")
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.stream_max_age = stream_max_age
        # the first failover is immediate (another endpoint may well be fine), then the delays grow
        self.retry_policy = RetryPolicy(initial=backoff_initial, cap=backoff_max, jitter=0.5, immediate=1)
        self.batch_events = max(1, batch_events)
        self.batch_bytes = batch_bytes
        self._options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect quickly after a coordinator comes back; our own loop does the backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if keepalive is not None:
            self._options += [
                ("grpc.keepalive_time_ms", int(keepalive * 1000)),
                ("grpc.keepalive_timeout_ms", int(max(keepalive / 2, 1.0) * 1000)),
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        self._ring = EndpointRing(self.endpoints)
        # a Subscribe stream on a channel retired by a rotation ends by stream_max_age at the latest
        self._channels = Channels(tls, self._options, retire_grace=stream_max_age)
        self._pub_lock = asyncio.Lock()
        self._pub_call: grpc.aio.StreamStreamCall[cpb.PublishRequest, cpb.PublishAck] | None = None
        self._pub_endpoint = ""
        self._pub_opened = 0.0
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """End the publish stream and close every channel. Idempotent."""
        self._closed = True
        self._drop_publish_stream()
        await self._channels.close()

    # -- endpoints -----------------------------------------------------------------------------

    @property
    def files(self) -> TlsFiles | None:
        """The TLS files in use (None: plaintext)."""
        return self._channels.files

    @property
    def endpoint(self) -> str:
        """The endpoint currently in use."""
        return self._ring.current

    def _failed_over(self, what: str, endpoint: str, error: str) -> None:
        """``endpoint`` failed ``what`` transiently: the next call starts on the next endpoint
        (once, however many concurrent calls saw the same failure)."""
        log.info("coordinator.failover", what=what, endpoint=endpoint, error=error)
        self._ring.failed(endpoint)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        if self._closed:
            raise CoordinatorUnavailable("the coordinator client is closed")
        return self._channels.get(endpoint)

    def _stub(self, endpoint: str) -> cpb_grpc.CoordinatorAsyncStub:
        return cpb_grpc.CoordinatorStub(self._channel(endpoint))

    # -- GetState ------------------------------------------------------------------------------

    async def get_state(self, revision: int = 0, *, within: float | None = None) -> StateView:
        """The folded state and rendered table at ``revision`` (0: the newest)."""
        request = cpb.GetStateRequest(revision=revision)
        timeout = within or self.timeout

        async def call(endpoint: str, seconds: float) -> cpb.GetStateResponse:
            # in pieces: a state of any size fits under every message limit
            return await _joined_state(self._stub(endpoint).GetStateChunks(request, timeout=seconds))

        last_error = ""

        def failed(endpoint: str, e: Exception) -> None:
            nonlocal last_error
            last_error = f"{endpoint}: {_describe(e)}"
            self._failed_over("GetState", endpoint, _describe(e))

        try:
            resp = await call_over_endpoints(
                self._ring,
                call,
                policy=self.retry_policy,
                within=timeout,
                retryable=_retryable,
                attempt_timeout=self.attempt_timeout,
                on_failure=failed,
            )
        except grpc.aio.AioRpcError as e:  # not retryable: the coordinator refused
            raise CoordinatorRejected(e.code().name, e.details() or "") from e
        except RetryDeadline as e:
            raise CoordinatorUnavailable(_unavailable(self, "GetState", timeout, last_error)) from e
        # decoding a big state is CPU-bound: not on the event loop
        return await asyncio.to_thread(_state_view, resp)

    # -- Publish -------------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event], *, within: float | None = None) -> list[Ack]:
        """Append ``events`` to the log; one :class:`Ack` per event, in order.

        Events the coordinator refused come back with ``ack.ok`` false (nothing is raised for
        them). Transient failures are retried on the next endpoints with the same event ids
        until ``within`` seconds (default: the client's ``timeout``); then
        :class:`CoordinatorUnavailable` is raised, and the caller may publish the same events
        again later (still exactly once in the log).
        """
        if not events:
            return []
        msgs = [wire.event_to_pb(e) for e in events]
        async with self._pub_lock:
            attempt = _Attempt(self, "Publish", within or self.timeout)
            acks: dict[str, Ack] = {}
            pending = list(range(len(events)))
            while pending:
                endpoint = self.endpoint
                try:
                    call = self._publish_stream(endpoint)
                    requests = self._requests([msgs[i] for i in pending])
                    async with asyncio.timeout(max(0.05, min(self.attempt_timeout, attempt.remaining()))):
                        await self._exchange(call, requests, acks)
                except (grpc.aio.AioRpcError, _StreamEnded, TimeoutError) as e:
                    self._drop_publish_stream()
                    if isinstance(e, grpc.aio.AioRpcError):
                        _raise_unless_retryable(e)
                    pending = [i for i in pending if not _settled(acks.get(events[i].event_id))]
                    await attempt.failed(endpoint, _describe(e))
                    continue
                retry = [i for i in pending if not _settled(acks.get(events[i].event_id))]
                if retry:  # the coordinator said "unavailable" for some: try them again
                    pending = retry
                    await attempt.failed(
                        endpoint, acks[events[retry[0]].event_id].error or "store unavailable"
                    )
                    continue
                pending = []
            return [acks[e.event_id] for e in events]

    def _requests(self, msgs: list[pb.Event]) -> list[tuple[cpb.PublishRequest, list[str]]]:
        """The Publish requests for ``msgs``: batches of up to ``batch_events`` events and about
        ``batch_bytes``, each with the event ids it carries, in order."""
        out: list[tuple[cpb.PublishRequest, list[str]]] = []
        chunk: list[pb.Event] = []
        nbytes = 0
        for m in msgs:
            size = m.ByteSize()
            if chunk and (len(chunk) >= self.batch_events or nbytes + size > self.batch_bytes):
                out.append((cpb.PublishRequest(events=chunk), [c.event_id for c in chunk]))
                chunk, nbytes = [], 0
            chunk.append(m)
            nbytes += size
        if chunk:
            out.append((cpb.PublishRequest(events=chunk), [c.event_id for c in chunk]))
        return out

    def _publish_stream(self, endpoint: str) -> grpc.aio.StreamStreamCall[cpb.PublishRequest, cpb.PublishAck]:
        """The long-lived Publish stream on ``endpoint``; reopened when it is old or elsewhere."""
        now = time.monotonic()
        call = self._pub_call
        if call is not None and (
            self._pub_endpoint != endpoint
            or call.done()
            or now - self._pub_opened > self.stream_max_age * 0.9
        ):
            self._drop_publish_stream()
            call = None
        if call is None:
            # A stream opened for writing (no request iterator): the stubs only know the other form.
            call = self._stub(endpoint).Publish(timeout=self.stream_max_age)  # type: ignore[call-arg]
            self._pub_call, self._pub_endpoint, self._pub_opened = call, endpoint, now
            log.debug("coordinator.publish_stream.open", endpoint=endpoint)
        return call

    def _drop_publish_stream(self) -> None:
        call, self._pub_call = self._pub_call, None
        if call is not None:
            call.cancel()

    @staticmethod
    async def _exchange(
        call: grpc.aio.StreamStreamCall[cpb.PublishRequest, cpb.PublishAck],
        requests: list[tuple[cpb.PublishRequest, list[str]]],
        acks: dict[str, Ack],
    ) -> None:
        """Write ``requests`` while reading their answers (concurrently: a large batch must not
        stall on HTTP/2 flow control). Acks are recorded in ``acks`` as they come, so a failure
        midway leaves exactly the acknowledged events there."""

        async def writer() -> None:
            try:
                for req, _ in requests:
                    await call.write(req)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                call.cancel()  # the reader sees the failure and reports it

        failure: grpc.aio.AioRpcError | _StreamEnded | None = None
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(writer())
            try:
                for _, ids in requests:
                    resp = await call.read()
                    if not isinstance(resp, cpb.PublishAck):  # grpc.aio.EOF
                        _publish_ended()
                    for one in resp.acks:
                        acks[one.event_id] = Ack(
                            one.event_id, one.revision, one.duplicate, one.error_code, one.error
                        )
                    if len(resp.acks) != len(ids):  # a reply that is not this request's answer
                        _publish_ended()
            except (grpc.aio.AioRpcError, _StreamEnded) as e:
                failure = e  # raised below, outside the group (which would wrap it)
                task.cancel()
                call.cancel()
        if failure is not None:
            raise failure

    # -- Subscribe -----------------------------------------------------------------------------

    def subscribe(
        self,
        from_revision: int = 0,
        *,
        follow: bool = False,
        filters: EventFilter | None = None,
        since: float = 0.0,
        snapshot_if_compacted: bool = True,
        chain: ChainFollower | None = None,
    ) -> Subscription:
        """The log from ``from_revision`` (0: from the start, or the snapshot), as an async
        iterator of :class:`Event` and :class:`Snapshot` items. Without ``follow`` it ends at the
        head; with ``follow`` it goes on with new events. It resumes on another endpoint after a
        failure, with no gap and no duplicate, and raises CoordinatorUnavailable when no endpoint
        has answered for ``timeout`` seconds.

        ``filters``: only the events it matches are sent (the coordinator applies it).
        ``since`` (unix seconds, 0: unset): start instead at the first revision, at or after
        ``from_revision``, whose event's wall time is ``since`` or later. ``chain``: checks the hash
        chain of each event received (it reports breaks itself, see :class:`ChainFollower`)."""
        return Subscription(
            self,
            from_revision,
            follow=follow,
            filters=filters or EventFilter(),
            since=since,
            snapshot=snapshot_if_compacted,
            chain=chain,
        )


class Subscription:
    """An open subscription: ``async for item in sub``. ``last_revision`` is the revision of the
    last item yielded; ``head_revision`` the newest revision the server knew when it sent it
    (``last_revision >= head_revision``: caught up). Close it with :meth:`aclose` or ``async with``."""

    def __init__(
        self,
        client: CoordinatorClient,
        from_revision: int,
        *,
        follow: bool,
        filters: EventFilter,
        since: float,
        snapshot: bool,
        chain: ChainFollower | None = None,
    ) -> None:
        self._chain = chain
        self._client = client
        self._from = from_revision
        self._follow = follow
        self._filters = filters
        self._since = since
        self._snapshot = snapshot
        self.last_revision = max(0, from_revision - 1)
        self.head_revision = 0
        self._gen: AsyncGenerator[Event | Snapshot, None] | None = None
        self._call: grpc.aio.UnaryStreamCall[cpb.SubscribeRequest, cpb.SubscribeResponse] | None = None

    @property
    def caught_up(self) -> bool:
        return self.head_revision > 0 and self.last_revision >= self.head_revision

    def __aiter__(self) -> AsyncIterator[Event | Snapshot]:
        if self._gen is None:
            self._gen = self._items()
        return self._gen

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._call is not None:
            self._call.cancel()
        gen = self._gen
        if gen is not None:
            await gen.aclose()

    def _request(self) -> cpb.SubscribeRequest:
        resumed = self.last_revision > 0  # a resumed stream starts after what was yielded: no search
        f = self._filters
        return cpb.SubscribeRequest(
            from_revision=self.last_revision + 1 if resumed else self._from,
            follow=self._follow,
            types=sorted(f.types),
            nodes=sorted(f.nodes),
            virtuals=sorted(f.virtuals),
            reals=sorted(f.reals),
            snapshot_if_compacted=self._snapshot,
            since_wall_time=0.0 if resumed else self._since,
            snapshot_chunks=True,
        )

    async def _items(self) -> AsyncGenerator[Event | Snapshot, None]:  # noqa: PLR0912, PLR0915 -- one loop, many exits
        client = self._client
        attempt = _Attempt(client, "Subscribe", client.timeout)
        loop = asyncio.get_running_loop()
        while True:
            endpoint = client.endpoint
            started = loop.time()
            try:  # an endpoint that does not even connect must not hold us until the deadline
                async with asyncio.timeout(max(0.05, min(client.attempt_timeout, attempt.remaining()))):
                    await client._channel(endpoint).channel_ready()
            except TimeoutError:
                await attempt.failed(endpoint, "no connection")
                continue
            call = client._stub(endpoint).Subscribe(
                self._request(), timeout=client.stream_max_age if self._follow else None
            )
            self._call = call
            pieces: _SnapshotPieces | None = None  # a chunked snapshot being received
            try:
                while True:
                    if self._follow:
                        resp = await call.read()
                    else:  # a bounded catch-up: each item must come within the timeout
                        async with asyncio.timeout(client.timeout):
                            resp = await call.read()
                    if not isinstance(resp, cpb.SubscribeResponse):  # grpc.aio.EOF: the server ended it
                        if not self._follow:
                            return
                        self._ended()
                    attempt = _Attempt(client, "Subscribe", client.timeout)  # it answers: reset
                    self.head_revision = max(self.head_revision, resp.head_revision)
                    pieces, whole = _SnapshotPieces.take(pieces, resp)
                    if whole is None:
                        continue
                    resp = whole
                    if resp.WhichOneof("item") == "snapshot":  # a big decode: in a thread
                        item = await asyncio.to_thread(self._convert, resp)
                    else:
                        item = self._convert(resp)
                    if item is not None:
                        yield item
            except (grpc.aio.AioRpcError, _StreamEnded, TimeoutError) as e:
                call.cancel()
                if isinstance(e, grpc.aio.AioRpcError):
                    aged = loop.time() - started >= client.stream_max_age * 0.9
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self._follow and aged:
                        log.debug("coordinator.subscribe.renew", endpoint=endpoint)
                        continue  # the stream reached stream_max_age: reopen, same endpoint
                    _raise_unless_retryable(e)
                if loop.time() - started > client.timeout:  # it had been working: a fresh window
                    attempt = _Attempt(client, "Subscribe", client.timeout)
                await attempt.failed(endpoint, _describe(e))
            finally:
                call.cancel()
                self._call = None

    @staticmethod
    def _ended() -> NoReturn:
        raise _StreamEnded("the coordinator ended a following Subscribe stream")

    def _convert(self, resp: cpb.SubscribeResponse) -> Event | Snapshot | None:
        which = resp.WhichOneof("item")
        if which == "snapshot":
            snap = resp.snapshot
            if snap.revision <= self.last_revision and self.last_revision > 0:
                return None
            state = _decode_state(snap.state)
            self.last_revision = snap.revision
            if self._chain is not None:
                self._chain.reset(snap.revision, snap.chain_head)
            return Snapshot(snap.revision, state, snap.table_digest)
        if which == "event":
            rev = resp.event.revision
            if rev <= self.last_revision:
                return None  # already yielded (a resumed stream overlapping): no duplicate
            if self._filters.everything and self.last_revision > 0 and rev != self.last_revision + 1:
                log.warning(
                    "coordinator.subscribe.gap", expected=self.last_revision + 1, got=rev, revision=rev
                )
            event = wire.event_from_pb(resp.event)
            if self._chain is not None:
                self._chain.step(wire.chain_link(resp.event))
            self.last_revision = rev
            return event
        return None  # an item type from a newer server: skip


# --- helpers ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _SnapshotPieces:
    """A snapshot sent in pieces (``snapshot`` without its state, then ``snapshot_chunk``s)."""

    response: cpb.SubscribeResponse
    data: list[bytes]

    @staticmethod
    def take(
        pieces: _SnapshotPieces | None, resp: cpb.SubscribeResponse
    ) -> tuple[_SnapshotPieces | None, cpb.SubscribeResponse | None]:
        """Feed one item: (the pieces still open, the item to handle now or None)."""
        which = resp.WhichOneof("item")
        if which == "snapshot" and not resp.snapshot.state:  # its state follows in pieces
            return _SnapshotPieces(resp, []), None
        if which != "snapshot_chunk":
            return pieces, resp
        if pieces is None:
            raise InvalidEvent("Subscribe: a snapshot piece without its snapshot")
        pieces.data.append(resp.snapshot_chunk.data)
        if not resp.snapshot_chunk.last:
            return pieces, None
        whole = pieces.response
        whole.snapshot.state = b"".join(pieces.data)
        whole.head_revision = max(whole.head_revision, resp.head_revision)
        return None, whole


def _publish_ended() -> NoReturn:
    raise _StreamEnded("the coordinator closed the Publish stream")


def _settled(ack: Ack | None) -> bool:
    return ack is not None and ack.error_code not in RETRYABLE_ACK_CODES


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {(e.details() or '').splitlines()[0] if e.details() else ''}".rstrip(": ")
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


def _raise_unless_retryable(e: grpc.aio.AioRpcError) -> None:
    if e.code() not in RETRYABLE:
        raise CoordinatorRejected(e.code().name, e.details() or "") from e


def _retryable(e: Exception) -> bool:
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE


def _unavailable(client: CoordinatorClient, what: str, timeout: float, last_error: str) -> str:
    return (
        f"no coordinator answered {what} within {timeout:g}s "
        f"(endpoints {','.join(client.endpoints)}; last error {last_error or 'none'})"
    )


async def _joined_state(
    call: grpc.aio.UnaryStreamCall[cpb.GetStateRequest, cpb.StateChunk],
) -> cpb.GetStateResponse:
    """A GetStateChunks stream put back together as the GetStateResponse it cuts up."""
    header: cpb.GetStateResponse | None = None
    state: list[bytes] = []
    table: list[bytes] = []
    async for chunk in call:
        if header is None:
            header = chunk.header
        state.append(chunk.state)
        table.append(chunk.table)
        if chunk.last:
            header.state = b"".join(state)
            header.table = b"".join(table)
            return header
    raise InvalidEvent("GetStateChunks: the stream ended before its last piece")


def _decode_state(blob: bytes) -> State:
    try:
        return codec.loads(State, blob)
    except (ValueError, TypeError) as e:
        raise InvalidEvent(f"undecodable state from the coordinator: {e}") from e


def _state_view(resp: cpb.GetStateResponse) -> StateView:
    try:
        table = table_from_json(json.loads(resp.table)) if resp.table else Table()
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidEvent(f"undecodable table from the coordinator: {e}") from e
    return StateView(
        revision=resp.revision,
        state=_decode_state(resp.state) if resp.state else State(),
        table=table,
        table_digest=resp.table_digest,
        head_revision=resp.head_revision,
        first_revision=resp.first_revision,
    )
