"""The agent's outbox (``lvs_events/agent/publisher.py``) when the coordinator's store fails:
real etcd, a real coordinator whose store fails chosen appends (see
``tests/agent/test_client_errors_acks.py``).

* A batch no coordinator takes is sent again, with the same event ids, until it lands: each
  event in the log once, nothing counted as refused.
* Overflow: a full outbox drops the new event (``submit`` returns None), counts it, warns once
  per episode; the accepted events all land; ``on_overflow`` runs once, when the queue has
  drained, so producers re-publish their current view.
* In the agent: a ``TableApplied`` dropped by a full outbox is not lost for good: once the
  coordinator takes events again, the log ends with this node's applied digest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lvs_events.agent.core import Policy
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.publisher import Publisher
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.client.events import new_event
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import ConfigApplied, RealServerHealth
from lvs_events.retry import RetryPolicy
from tests.agent.cluster import CLUSTER, demo_config
from tests.agent.test_client_errors_acks import Faults, faulty_coordinator, log_revisions, verdicts
from tests.support.etcd import EtcdCluster

FAST_RETRY = RetryPolicy(initial=0.05, cap=0.3)


async def until(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


def events_named(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [r for r in logs if r.get("event") == name]


async def test_outbox_sends_a_failed_batch_again_until_it_lands(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults(blocked=lambda e: True)
    async with (
        faulty_coordinator(etcd, monkeypatch, faults) as coord,
        CoordinatorClient([coord.address], timeout=0.5) as client,
    ):
        pub = Publisher(client, cluster=CLUSTER, node="lb2", retry=FAST_RETRY)
        task = asyncio.create_task(pub.run())
        try:
            with capture_logs() as logs:
                queued = [pub.submit_event(e) for e in verdicts(5)]
                assert all(queued)
                # the client gave up at least twice; the outbox keeps the batch and retries
                await until(lambda: len(events_named(logs, "publisher.retry")) >= 2, "two retries")
                faults.blocked = None
                async with asyncio.timeout(30):
                    await pub.flush()
        finally:
            task.cancel()
        assert (pub.sent, pub.refused, pub.dropped) == (5, 0, 0)
        retried = events_named(logs, "publisher.retry")
        assert all(r["events"] == 5 and r["log_level"] == "warning" for r in retried), retried
        in_log = await log_revisions(client)
        assert sorted(in_log) == sorted(a.event_id for a in pub.last_acks)
        assert all(len(revs) == 1 for revs in in_log.values()), in_log


async def test_outbox_overflow_drops_new_events_counts_them_and_resyncs_once(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults(blocked=lambda e: True)
    resyncs: list[int] = []
    async with (
        faulty_coordinator(etcd, monkeypatch, faults) as coord,
        CoordinatorClient([coord.address], timeout=0.5) as client,
    ):
        pub = Publisher(
            client,
            cluster=CLUSTER,
            node="lb2",
            maxsize=2,
            retry=FAST_RETRY,
            on_overflow=lambda: resyncs.append(pub.queued),
        )
        task = asyncio.create_task(pub.run())
        web = demo_config().virtuals[0]
        payloads = [RealServerHealth(web.key, r.key, False, "lb2") for r in web.reals]
        try:
            with capture_logs() as logs:
                first = pub.submit(payloads[0])
                assert first is not None
                await until(lambda: faults.appends(first.event_id) > 0, "the first batch in flight")
                kept = [pub.submit(p) for p in payloads[1:3]]
                lost = [pub.submit(p) for p in payloads[3:6]]
                assert all(e is not None for e in kept), kept
                assert lost == [None, None, None]
                assert pub.dropped == 3
                # one warning for the episode, not one per dropped event
                assert len(events_named(logs, "publisher.overflow")) == 1, logs
                assert resyncs == [], "the resync comes once the queue has drained, not before"
                faults.blocked = None
                async with asyncio.timeout(30):
                    await pub.flush()
                await until(lambda: resyncs != [], "on_overflow after the drain")
        finally:
            task.cancel()
        assert resyncs == [0]
        [resync] = events_named(logs, "publisher.resync")
        assert resync["dropped"] == 3
        assert (pub.sent, pub.refused) == (3, 0)
        in_log = await log_revisions(client)
        expected = {first.event_id} | {e.event_id for e in kept if e is not None}
        assert set(in_log) == expected
        assert all(len(revs) == 1 for revs in in_log.values()), in_log


async def test_a_table_applied_dropped_by_a_full_outbox_is_published_again(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the agent's own events (lb1) do not go in; the operator's do
    faults = Faults(blocked=lambda e: e.origin == "lb1")
    async with faulty_coordinator(etcd, monkeypatch, faults) as coord:
        settings = AgentSettings(
            node="lb1",
            cluster=CLUSTER,
            endpoints=(coord.address,),
            state_dir=tmp_path / "lb1",
            health_checks=False,
            outbox_size=1,
            client_timeout=1.0,
            drift_interval=0,
            policy=Policy(publish_delay=0.1, min_publish_interval=0.1, republish_after=1.0),
        )
        with capture_logs() as logs:  # around the agent: it binds its logger when it is made
            agent = Agent(settings, MemoryDataplane(settings.state_dir))
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                async with CoordinatorClient([coord.address]) as client:
                    final = await _overflow_with_table_applied(agent, client, logs)
                    assert events_named(logs, "publisher.overflow"), "the drop must be logged"
                    faults.blocked = None
                    deadline = time.monotonic() + 30
                    while (got := await _reported(client, "lb1")) != final:
                        assert time.monotonic() < deadline, (
                            f"the log says lb1 applied {got!r}, it holds {final}"
                        )
                        await asyncio.sleep(0.1)
            finally:
                stop.set()
                async with asyncio.timeout(30):
                    await task


async def _overflow_with_table_applied(
    agent: Agent, client: CoordinatorClient, logs: list[MutableMapping[str, Any]]
) -> str:
    """New configurations, one at a time, each applied and its TableApplied offered to the
    outbox, until one is dropped; the digest the agent holds then (the log's)."""
    for variant in range(12):  # demo_config's variants repeat after 12: each digest is new
        (ack,) = await client.publish(
            [new_event(ConfigApplied(demo_config(variant)), cluster=CLUSTER, origin="op", actor="t")]
        )
        assert ack.ok
        digest = (await client.get_state()).table_digest

        def applied(digest: str = digest) -> bool:
            return agent.core.applied_digest == digest

        await until(applied, "the agent applied it")
        await until(lambda: bool(_offered(logs, digest)), "its TableApplied offered to the outbox")  # noqa: B023 -- awaited in this iteration
        if agent.publisher.dropped:
            [dropped] = _offered(logs, digest)
            assert dropped["queued"] is False
            return digest
    raise AssertionError("the outbox never overflowed")


def _offered(logs: list[MutableMapping[str, Any]], digest: str) -> list[MutableMapping[str, Any]]:
    return [r for r in events_named(logs, "agent.table_applied") if r["digest"] == digest]


async def _reported(client: CoordinatorClient, node: str) -> str:
    """The table digest the log last recorded for ``node`` (its own TableApplied)."""
    status = (await client.get_state()).state.nodes.get(node)
    return status.digest if status is not None else ""
