"""Per-event ``UNAVAILABLE`` acks and the client's retry of them, on a real etcd and a real
coordinator whose event store fails chosen appends (:class:`Faults`, injected at the
coordinator's store seam: the store class ``serve_coordinator`` builds).

What ``CoordinatorClient.publish`` promises (``lvs_events/client/log.py``):

* an ack whose ``error_code`` is retryable (``UNAVAILABLE``: the store did not take the event) is
  sent again, with the same event id, on the next attempt; the events already acknowledged are
  not sent again;
* a retry is idempotent: an event whose transaction landed although its ack said
  ``UNAVAILABLE`` (the answer was lost) comes back ``duplicate`` with its original revision, and
  is in the log once;
* the retry goes to the next coordinator (the one that said ``UNAVAILABLE`` goes to the back);
* a refusal (``FAILED_PRECONDITION``: a fenced term) is returned at once, never retried;
* when the retries run past the deadline, ``CoordinatorUnavailable`` names the ack's error, and
  publishing the same events again later still puts each in the log exactly once.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from lvs_events.client.events import new_event
from lvs_events.client.log import CoordinatorClient
from lvs_events.coordinator import server
from lvs_events.coordinator.server import CoordinatorSettings, RunningCoordinator, serve_coordinator
from lvs_events.coordinator.stores import Appended
from lvs_events.domain.events import Event, RealServerHealth
from lvs_events.errors import CoordinatorUnavailable, StoreUnavailable
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import events_pb2 as pb
from tests.agent.cluster import CLUSTER, demo_config
from tests.support.etcd import EtcdCluster

INJECTED = "injected: etcd did not answer"
LOST = "injected: the transaction's answer was lost"


@dataclass
class Faults:
    """Which appends the coordinator's store fails, and every event it was asked to append.

    ``fail[id]``: that many more appends containing event ``id`` fail before reaching etcd.
    ``lose[id]``: that many more appends containing ``id`` reach etcd, then report a failure.
    ``blocked``: while set, every append with an event it matches fails before reaching etcd.
    """

    fail: dict[str, int] = field(default_factory=dict)
    lose: dict[str, int] = field(default_factory=dict)
    blocked: Callable[[pb.Event], bool] | None = None
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)

    def appends(self, event_id: str) -> int:
        return self.attempts[event_id]

    @staticmethod
    def _take(counts: dict[str, int], events: Sequence[pb.Event]) -> bool:
        hit = [e.event_id for e in events if counts.get(e.event_id, 0) > 0]
        for i in hit:
            counts[i] -= 1
        return bool(hit)

    def before(self, events: Sequence[pb.Event]) -> None:
        for e in events:
            self.attempts[e.event_id] += 1
        blocked = self.blocked
        if self._take(self.fail, events) or (blocked is not None and any(blocked(e) for e in events)):
            raise StoreUnavailable(INJECTED)

    def after(self, events: Sequence[pb.Event]) -> None:
        if self._take(self.lose, events):
            raise StoreUnavailable(LOST)


def faulty_store(faults: Faults) -> type[EtcdEventStore]:
    """The etcd event store with ``faults`` in front of every append."""

    class FaultyStore(EtcdEventStore):
        async def append(
            self, events: Sequence[pb.Event], *, require_term: int | None = None, within: float | None = None
        ) -> list[Appended]:
            faults.before(events)
            out = await super().append(events, require_term=require_term, within=within)
            faults.after(events)
            return out

    return FaultyStore


@contextlib.asynccontextmanager
async def faulty_coordinator(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch, faults: Faults, **overrides: object
) -> AsyncIterator[RunningCoordinator]:
    """A coordinator on ``etcd`` whose store fails appends as ``faults`` says."""
    monkeypatch.setattr(server, "EtcdEventStore", faulty_store(faults))
    settings: dict[str, object] = {"etcd_endpoints": etcd.endpoints, "cluster": CLUSTER, "grace": 3.0}
    settings.update(overrides)
    async with serve_coordinator(CoordinatorSettings(**settings)) as c:  # type: ignore[arg-type]
        yield c


def verdicts(n: int, origin: str = "lb2", term: int = 0) -> list[Event]:
    web = demo_config().virtuals[0]
    return [
        new_event(
            RealServerHealth(web.key, web.reals[i % len(web.reals)].key, i % 2 == 0, origin),
            cluster=CLUSTER,
            origin=origin,
            actor="test",
            term=term,
        )
        for i in range(n)
    ]


async def log_revisions(client: CoordinatorClient) -> dict[str, list[int]]:
    """Every event id in the log with the revisions it is at (one each, exactly once)."""
    out: dict[str, list[int]] = collections.defaultdict(list)
    async with client.subscribe(1, follow=False, snapshot_if_compacted=False) as sub:
        async for item in sub:
            assert isinstance(item, Event), item
            out[item.event_id].append(item.revision)
    return dict(out)


async def test_unavailable_acks_are_retried_alone_with_the_same_ids(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = verdicts(3)
    faults = Faults(fail={b.event_id: 2})
    # one event per etcd transaction: b's failure is b's alone, a and c land
    async with (
        faulty_coordinator(etcd, monkeypatch, faults, max_batch_events=1) as coord,
        CoordinatorClient([coord.address], timeout=20.0) as client,
    ):
        acks = await client.publish([a, b, c])
        assert [x.event_id for x in acks] == [a.event_id, b.event_id, c.event_id]
        assert all(x.ok and not x.duplicate for x in acks), acks
        # b was sent three times (two UNAVAILABLE acks), a and c once: acknowledged events
        # are not sent again
        assert [faults.appends(x.event_id) for x in (a, b, c)] == [1, 3, 1], faults.attempts
        in_log = await log_revisions(client)
    assert in_log == {x.event_id: [x.revision] for x in acks}


async def test_a_retry_after_a_lost_answer_is_a_duplicate_at_the_original_revision(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = verdicts(1)
    faults = Faults(lose={a.event_id: 1})
    async with (
        faulty_coordinator(etcd, monkeypatch, faults) as coord,
        CoordinatorClient([coord.address], timeout=20.0) as client,
    ):
        (ack,) = await client.publish([a])
        assert ack.ok, ack
        assert ack.duplicate, "the first append landed: the retry must find it, not append again"
        assert faults.appends(a.event_id) == 2
        in_log = await log_revisions(client)
    assert in_log == {a.event_id: [ack.revision]}


async def test_refusals_are_returned_at_once_and_never_retried(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ok,) = verdicts(1)
    (fenced,) = verdicts(1, origin="lb1", term=7)  # no leader holds term 7
    faults = Faults()
    async with (
        faulty_coordinator(etcd, monkeypatch, faults) as coord,
        CoordinatorClient([coord.address], timeout=20.0) as client,
    ):
        acks = await client.publish([fenced, ok])
        assert acks[0].error_code == "FAILED_PRECONDITION", acks
        assert acks[0].revision == 0
        assert acks[1].ok, acks
        assert faults.appends(fenced.event_id) == 1, "a refused event must not be sent again"
        in_log = await log_revisions(client)
    assert in_log == {ok.event_id: [acks[1].revision]}


async def test_unavailable_past_the_deadline_raises_and_a_later_publish_is_exactly_once(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = verdicts(3)
    faults = Faults(blocked=lambda e: e.event_id == b.event_id)
    async with (
        faulty_coordinator(etcd, monkeypatch, faults, max_batch_events=1) as coord,
        CoordinatorClient([coord.address], timeout=20.0) as client,
    ):
        with pytest.raises(CoordinatorUnavailable) as raised:
            await client.publish([a, b, c], within=1.5)
        assert INJECTED in str(raised.value)  # the ack's error, not a bare "unavailable"
        assert faults.appends(b.event_id) >= 2  # retried until the deadline
        assert faults.appends(a.event_id) == faults.appends(c.event_id) == 1
        faults.blocked = None
        # the caller publishes the same events again (what the agent's outbox does)
        acks = await client.publish([a, b, c])
        assert [(x.ok, x.duplicate) for x in acks] == [(True, True), (True, False), (True, True)], acks
        in_log = await log_revisions(client)
    assert in_log == {x.event_id: [x.revision] for x in acks}


async def test_an_unavailable_ack_moves_the_retry_to_the_next_coordinator(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = verdicts(1)
    faults = Faults(fail={a.event_id: 1})  # the first append of it, wherever it is, fails
    async with (
        faulty_coordinator(etcd, monkeypatch, faults) as c1,
        faulty_coordinator(etcd, monkeypatch, faults) as c2,
        CoordinatorClient([c1.address, c2.address], timeout=20.0) as client,
    ):
        assert client.endpoint == c1.address
        (ack,) = await client.publish([a])
        assert (ack.ok, ack.duplicate) == (True, False), ack
        assert faults.appends(a.event_id) == 2
        # the coordinator whose store said "unavailable" is not asked again first
        assert client.endpoint == c2.address
        assert c1.appender.appended_total == 0
        assert c2.appender.appended_total == 1
