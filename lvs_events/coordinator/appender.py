"""The append path: validate, then group-commit concurrent appends into one etcd transaction.

Every Publish stream of this coordinator submits into one bounded queue; one flusher task takes
whatever is waiting (up to the store's ``max_batch_events`` or about 1 MB) and appends it in a
single transaction, with up to :data:`DEFAULT_IN_FLIGHT` transactions in flight (the store
pipelines them and keeps their order). There is no artificial delay: while transactions are in
flight the next batch accumulates (group commit), so batches grow with load and latency stays
one round trip when idle.

Queue overflow policy: **backpressure**. :meth:`Appender.submit` waits for room; the Publish
handler stops reading its stream meanwhile, and gRPC flow control pushes back on the publisher.
Nothing is dropped.

Fencing: ``submit(..., require_term=T)`` appends only while the store's
``leader`` key holds term ``T`` (else the ack says FAILED_PRECONDITION). Requests with different
requirements never share a transaction.

Deadlines: ``submit(..., deadline=D)`` (the event loop's clock) is the publisher's deadline. An
event still queued at ``D`` is never sent (:class:`DeadlinePassed`, ``sent=False``), and a
transaction's store deadline is the earliest ``D`` of its batch, so nothing is appended on a
caller's behalf after its call has failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from lvs_events import wire
from lvs_events.coordinator.stores import Appended, EventStore
from lvs_events.domain.events import Event
from lvs_events.domain.validate import MAX_EVENT_BYTES, validate_event
from lvs_events.errors import DeadlinePassed, InvalidEvent, StoreUnavailable
from lvs_events.pb.v1 import events_pb2 as pb

log = structlog.get_logger(__name__)
_stdlog = logging.getLogger(__name__)

MAX_BATCH_BYTES = 1_000_000  # etcd refuses requests over 1.5 MiB by default
DEFAULT_QUEUE = 8192
DEFAULT_IN_FLIGHT = 2  # etcd transactions in flight per coordinator (pipelined, in order)


def check_event(msg: pb.Event, cluster: str) -> int:
    """Validate an incoming event; its encoded size. Raises :class:`InvalidEvent`.

    The ``revision`` and chain hashes a publisher may have set are cleared: the log assigns them.
    """
    return validated_event(msg, cluster)[1]


def validated_event(msg: pb.Event, cluster: str) -> tuple[Event, int]:
    """:func:`check_event`, with the event as the domain sees it (for the access policy)."""
    msg.revision = 0
    if msg.prev_hash or msg.hash:
        msg.ClearField("prev_hash")
        msg.ClearField("hash")
    size = msg.ByteSize()
    if size > MAX_EVENT_BYTES:  # refuse before converting a huge message
        raise InvalidEvent(f"event: expected at most {MAX_EVENT_BYTES} bytes encoded, found {size} bytes")
    event = wire.event_from_pb(msg)
    validate_event(event, size=size)
    if event.cluster != cluster:
        raise InvalidEvent(
            f"cluster: expected {cluster!r} (this coordinator's cluster), found {event.cluster!r}"
        )
    return event, size


@dataclass(slots=True)
class _Request:
    msg: pb.Event
    size: int
    require_term: int | None
    future: asyncio.Future[Appended]
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # the event loop's clock; None: none
    indexed: bool = False  # changes the store's expiry index (EventStore.indexed): limited per batch


class Appender:
    """Group commit in front of :meth:`EventStore.append`. Run :meth:`run` in a TaskGroup.

    Up to ``max_in_flight`` transactions are in flight at once (the store pipelines them and
    keeps their order); while they are, the next batch accumulates. ``max_batch_events``: events
    per transaction (0: as many as the store takes).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        max_batch_events: int = 0,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        queue_size: int = DEFAULT_QUEUE,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        limit = store.max_batch_events
        max_batch_events = max_batch_events or limit
        if not 1 <= max_batch_events <= limit:
            raise ValueError(f"max_batch_events: 1..{limit} (the store's limit)")
        if max_in_flight < 1:
            raise ValueError("max_in_flight: at least 1")
        self.store = store
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.max_in_flight = max_in_flight
        self._queue: deque[_Request] = deque()
        self._queue_size = queue_size
        self._waiting: deque[asyncio.Future[None]] = deque()  # submitters waiting for room, FIFO
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._running = False  # run() is looping: submitters may start a flush themselves
        self._flushing: set[asyncio.Task[None]] = set()
        self.head = 0  # newest revision this appender appended
        self.appended_total = 0
        self.batches = 0
        self._listeners: list[Callable[[int], None]] = []

    def on_appended(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(head)`` after each successful transaction (e.g. snapshot triggers)."""
        self._listeners.append(callback)

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(
        self, msg: pb.Event, size: int, *, require_term: int | None = None, deadline: float | None = None
    ) -> asyncio.Future[Appended]:
        """Queue an already validated event; a future for its :class:`Appended`.

        Waits while the queue is full (backpressure). Raises StoreUnavailable once closed.
        ``deadline`` (the event loop's clock): not sent after it (see the module docstring).
        """
        (fut,) = await self.submit_many([(msg, size)], require_term=require_term, deadline=deadline)
        return fut

    def try_submit(
        self,
        items: list[tuple[pb.Event, int]],
        *,
        require_term: int | None = None,
        deadline: float | None = None,
    ) -> list[asyncio.Future[Appended]] | None:
        """:meth:`submit_many` if the queue has room now (no waiting); None if it has not.

        The append path's fast lane: the publish handler queues without the coroutines of
        :meth:`submit_many`, which cost a visible share of the coordinator's own time per event.
        Raises StoreUnavailable once closed."""
        if self._closed:
            raise StoreUnavailable("coordinator is shutting down")
        if len(self._queue) >= self._queue_size or self._waiting:
            return None
        return self._enqueue(items, require_term, deadline)

    async def submit_many(
        self,
        items: list[tuple[pb.Event, int]],
        *,
        require_term: int | None = None,
        deadline: float | None = None,
    ) -> list[asyncio.Future[Appended]]:
        """:meth:`submit` for several (event, size) pairs at once, queued together in order."""
        while True:
            if self._closed:
                raise StoreUnavailable("coordinator is shutting down")
            if len(self._queue) < self._queue_size and not self._waiting:
                break
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the turn on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(waiter)
                raise
            if len(self._queue) < self._queue_size:
                break
        return self._enqueue(items, require_term, deadline)

    def _enqueue(
        self, items: list[tuple[pb.Event, int]], require_term: int | None, deadline: float | None
    ) -> list[asyncio.Future[Appended]]:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Appended]] = []
        now = time.monotonic()
        for msg, size in items:
            fut: asyncio.Future[Appended] = loop.create_future()
            indexed = self.store.indexed(msg)
            self._queue.append(_Request(msg, size, require_term, fut, now, deadline, indexed))
            futs.append(fut)
        self._idle.clear()
        if self._running and not self._flushing:
            # nothing in flight (the latency case: one publisher, one event): send it from
            # here rather than waking the flusher, which costs an extra turn of the loop
            self._start_flush()
        else:
            self._wakeup.set()
        if self._waiting:
            self._wake()  # room left: the next in line
        return futs

    async def append(self, msg: pb.Event, size: int, *, require_term: int | None = None) -> Appended:
        return await (await self.submit(msg, size, require_term=require_term))

    async def close(self, grace: float) -> None:
        """Refuse new events; wait (up to ``grace`` seconds) until every queued one is answered."""
        self._closed = True
        self._wake(everyone=True)
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning("appender: queue not drained before the deadline", queued=len(self._queue))

    async def run(self) -> None:
        """The flusher: up to ``max_in_flight`` transactions, each with what is waiting."""
        self._running = True
        try:
            while True:
                if not self._queue or len(self._flushing) >= self.max_in_flight:
                    if not self._queue and not self._flushing:
                        self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                self._start_flush()
                await asyncio.sleep(0)  # let the transaction go out before taking the next batch
        except BaseException:
            self._running = False
            for task in list(self._flushing):
                task.cancel()
            if self._flushing:
                await asyncio.wait(list(self._flushing))
            self._fail_all(StoreUnavailable("coordinator is shutting down"))
            raise

    def _start_flush(self) -> None:
        batch = self._take()
        if not batch:  # every request taken had passed its deadline
            if not self._queue and not self._flushing:
                self._idle.set()
            return
        task = asyncio.create_task(self._flush(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if self._queue or not self._running:
            self._wakeup.set()
        elif not self._flushing:
            # nothing left to do: idle, without waking the flusher for it (a turn of the loop
            # per append on the latency path)
            self._idle.set()

    def _take(self) -> list[_Request]:
        """The next batch; requests past their deadline are answered (not sent) and left out,
        so the batch may be empty."""
        now = asyncio.get_running_loop().time()
        batch: list[_Request] = []
        nbytes = 0
        ids: set[str] = set()
        indexed = 0  # distinct events in the batch that change the expiry index
        while self._queue and len(ids) < self.max_batch_events:
            nxt = self._queue[0]
            if nxt.deadline is not None and nxt.deadline <= now:
                self._queue.popleft()
                _expire(nxt, "queued")
                continue
            if batch and nxt.require_term != batch[0].require_term:
                break
            if batch and nbytes + nxt.size > self.max_batch_bytes:
                break
            if nxt.msg.event_id not in ids:
                more = indexed + nxt.indexed
                if not self.store.fits(len(ids) + 1, more):
                    break
                indexed = more
            self._queue.popleft()
            batch.append(nxt)
            nbytes += nxt.size
            ids.add(nxt.msg.event_id)
        self._wake()
        return batch

    def _wake(self, *, everyone: bool = False) -> None:
        """Let waiting submitters in, one at a time in order, while the queue has room."""
        room = len(self._queue) < self._queue_size
        while self._waiting and (everyone or room):
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return  # it queues, then (having room left) wakes the next

    async def _flush(self, batch: list[_Request]) -> None:
        # dedupe within the batch: the first of each event_id is appended, the others share it
        # (one request, the latency case, needs none of it)
        unique = _unique(batch)
        msgs = [batch[0].msg] if unique is None else [r.msg for r in unique.values()]
        started = time.monotonic()
        deadlines = [r.deadline for r in batch if r.deadline is not None]
        within = min(deadlines) - asyncio.get_running_loop().time() if deadlines else None
        try:
            results = await self.store.append(msgs, require_term=batch[0].require_term, within=within)
        except asyncio.CancelledError:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(StoreUnavailable("coordinator is shutting down"))
            raise
        except Exception as e:
            log.warning("append failed", events=len(batch), error=str(e), error_type=type(e).__name__)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        _resolve(batch, unique, results)
        self._count(batch, results, started)

    def _count(self, batch: list[_Request], results: list[Appended], started: float) -> None:
        new_head = 0
        for a in results:
            new_head = max(new_head, a.revision)
            if not a.duplicate:
                self.appended_total += 1
        self.batches += 1
        if new_head > self.head:
            self.head = new_head
            for cb in self._listeners:
                cb(new_head)
        if _stdlog.isEnabledFor(logging.DEBUG):  # structlog would build the entry only to drop it
            _log_batch(batch, new_head, started)

    def _fail_all(self, error: Exception) -> None:
        while self._queue:
            r = self._queue.popleft()
            if not r.future.done():
                r.future.set_exception(error)
        self._wake(everyone=True)
        self._idle.set()


def _expire(r: _Request, where: str) -> None:
    if not r.future.done():
        why = f"the publisher's deadline passed while the event was {where}: not appended"
        r.future.set_exception(DeadlinePassed(why, sent=False))


def _unique(batch: list[_Request]) -> dict[str, _Request] | None:
    """The first request of each event_id, in order; None for a batch of one."""
    if len(batch) == 1:
        return None
    unique: dict[str, _Request] = {}
    for r in batch:
        unique.setdefault(r.msg.event_id, r)
    return unique


def _resolve(batch: list[_Request], unique: dict[str, _Request] | None, results: list[Appended]) -> None:
    """Answer every request of the batch (a repeated event_id shares the first one's outcome)."""
    if unique is None:
        if not batch[0].future.done():
            batch[0].future.set_result(results[0])
        return
    by_id = {a.event_id: a for a in results}
    for r in batch:
        a = by_id[r.msg.event_id]
        if unique[r.msg.event_id] is not r and not a.duplicate:
            a = Appended(a.event_id, a.revision, duplicate=True)
        if not r.future.done():
            r.future.set_result(a)


def _log_batch(batch: list[_Request], head: int, started: float) -> None:
    log.debug(
        "appended",
        revision=head,
        events=len(batch),
        first_event_id=batch[0].msg.event_id,
        txn_ms=round((time.monotonic() - started) * 1000, 3),
    )
