"""The agent's outbox: events this node publishes (``TableApplied``, health verdicts, config).

``submit`` never blocks the caller: it puts the event in a bounded queue and returns. One task
(:meth:`Publisher.run`) sends the queue in batches over the client's ``Publish`` stream; a batch
that fails (no coordinator answering) is retried, with backoff, with the *same* event ids, so
each event is appended exactly once however often it is sent.

Overflow policy: when the queue is full the new event is dropped, counted, and the
``on_overflow`` callback runs once, when the queue has drained again. Every producer keeps the
truth it publishes (the apply loop its applied digest, a health checker its verdicts), so the
callback makes them re-publish their current view: a resync, not a replay of the lost events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from lvs_events.client.events import new_event
from lvs_events.client.log import Ack, CoordinatorClient, CoordinatorRejected
from lvs_events.domain.events import Event, Payload
from lvs_events.errors import CoordinatorUnavailable
from lvs_events.retry import RetryPolicy

__all__ = ["PUBLISH_RETRY", "Publisher"]

log = structlog.get_logger("lvs_events.agent.publisher")

# A batch no coordinator took is sent again after 0.2 s, doubling up to 5 s: the outbox is
# bounded, so a long outage ends in its overflow policy, not in a faster retry.
PUBLISH_RETRY = RetryPolicy(initial=0.2, cap=5.0)


class Publisher:
    def __init__(
        self,
        client: CoordinatorClient,
        *,
        cluster: str,
        node: str,
        actor: str = "lvs-agent",
        maxsize: int = 10_000,
        batch: int = 500,
        retry: RetryPolicy = PUBLISH_RETRY,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.node = node
        self.actor = actor
        self.batch = batch
        self.retry = retry
        self.on_overflow = on_overflow
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._overflowed = False
        self.sent = 0
        self.dropped = 0
        self.refused = 0
        self.last_acks: list[Ack] = []

    def event(self, payload: Payload, reason: str = "", term: int = 0) -> Event:
        """A new event from this node (fresh id, wall time now)."""
        return new_event(
            payload, cluster=self.cluster, origin=self.node, actor=self.actor, reason=reason, term=term
        )

    def submit(self, payload: Payload, reason: str = "", term: int = 0) -> Event | None:
        """Queue a new event; returns it, or None when the queue was full and it was dropped."""
        ev = self.event(payload, reason, term)
        return ev if self.submit_event(ev) else None

    def submit_event(self, event: Event) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._overflowed:
                log.warning("publisher.overflow", event_id=event.event_id, queued=self._queue.qsize())
            self._overflowed = True
            return False
        return True

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def flush(self) -> None:
        """Wait until every queued event has been acknowledged (bound it with ``asyncio.timeout``)."""
        await self._queue.join()

    async def run(self) -> None:
        """Send queued events until cancelled."""
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._send(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if self._overflowed and self._queue.empty():
                self._overflowed = False
                log.info("publisher.resync", dropped=self.dropped)
                if self.on_overflow is not None:
                    self.on_overflow()

    async def _send(self, batch: Sequence[Event]) -> None:
        backoff = self.retry.start()
        while True:
            try:
                acks = await self.client.publish(batch)
            except CoordinatorUnavailable as e:
                delay = backoff.next_delay()
                log.warning("publisher.retry", error=str(e), events=len(batch), delay=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            except CoordinatorRejected as e:  # the whole stream refused: these events cannot go in
                self.refused += len(batch)
                log.exception(
                    "publisher.rejected", error=str(e), events=len(batch), event_id=batch[0].event_id
                )
                return
            self.last_acks = acks
            for ack in acks:
                if ack.ok:
                    self.sent += 1
                else:
                    self.refused += 1
                    log.error(
                        "publisher.refused", event_id=ack.event_id, code=ack.error_code, error=ack.error
                    )
            return
