"""The Peer service's gRPC edge: the HA runner answers in domain values, converted to protobuf
by ``lvs_events.agent.ha.peer`` (a real server on loopback, a real client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lvs_events.agent.ha.peer import (
    HandoverAnswer,
    Heartbeat,
    PairStatus,
    PeerClient,
    serve_peer,
)
from lvs_events.agent.ha.runner import HaRunner, HaSettings
from lvs_events.agent.ha.vips import ExternalVips
from lvs_events.client.ha import LeaderElectionClient, NodeView, PeerUnavailable, peer_status


class Handler:
    """A PeerHandler that records its calls."""

    def __init__(self) -> None:
        self.beats: list[Heartbeat] = []
        self.handovers: list[tuple[str, int]] = []
        self.switchovers: list[tuple[str, float]] = []

    def heartbeat_received(self, beat: Heartbeat) -> Heartbeat:
        self.beats.append(beat)
        return Heartbeat("lb2", "standby", 0, 41, "d2", ack_term=beat.term)

    async def handover_asked(self, from_node: str, term: int) -> HandoverAnswer:
        self.handovers.append((from_node, term))
        return HandoverAnswer(ok=True, term=term + 1, node="lb2")

    async def switchover(self, to: str, within: float) -> HandoverAnswer:
        self.switchovers.append((to, within))
        return HandoverAnswer(ok=False, error="peer not caught up")

    def status(self) -> PairStatus:
        me = NodeView("lb2", "standby", 0, 41, "d2", seen_ago=0.0, vips=False)
        return PairStatus(me, None, "lb1", 7, "peer silent", ("203.0.113.10",))


@pytest.fixture
async def served() -> AsyncIterator[tuple[Handler, str]]:
    handler = Handler()
    ports: asyncio.Queue[int] = asyncio.Queue(1)
    task = asyncio.create_task(serve_peer(handler, "127.0.0.1:0", ports.put_nowait))
    async with asyncio.timeout(10):
        port = await ports.get()
    yield handler, f"127.0.0.1:{port}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_calls_cross_the_edge_as_domain_values(served: tuple[Handler, str]) -> None:
    handler, address = served
    client = PeerClient(address)
    try:
        mine = Heartbeat("lb1", "active", 7, 42, "d1")
        reply = await client.heartbeat(mine, within=5.0)
        assert handler.beats == [mine]
        assert reply == Heartbeat("lb2", "standby", 0, 41, "d2", ack_term=7)

        answer = await client.handover("lb1", 7, within=5.0)
        assert handler.handovers == [("lb1", 7)]
        assert answer == HandoverAnswer(ok=True, term=8, node="lb2")

        status = await peer_status(address, within=5.0)  # the operator's client reads it
        assert (status.self.node, status.self.revision, status.self.digest) == ("lb2", 41, "d2")
        assert status.peer.node == ""  # never heard from
        assert (status.leader, status.leader_term, list(status.vips)) == ("lb1", 7, ["203.0.113.10"])

        assert await client.reconnect()  # a channel was open
        assert not await client.reconnect()
        assert (await client.heartbeat(mine, within=5.0)).ack_term == 7  # a new channel
    finally:
        await client.close()


async def test_a_peer_that_does_not_answer() -> None:
    """Silence is an exception for the heartbeat (the machine counts it), a refused answer for
    a handover."""
    client = PeerClient("127.0.0.1:1")
    try:
        with pytest.raises(PeerUnavailable):
            await client.heartbeat(Heartbeat("lb1", "active", 7), within=0.5)
        answer = await client.handover("lb1", 7, within=0.5)
        assert not answer.ok
        assert answer.error
    finally:
        await client.close()


async def test_the_runner_answers_heartbeats_and_status_in_domain_values() -> None:
    election = LeaderElectionClient(["127.0.0.1:1"], timeout=0.5)
    runner = HaRunner(
        HaSettings("lb1", listen="127.0.0.1:0", peer="127.0.0.1:1"),
        election,
        ExternalVips(["203.0.113.10"]),
        applied=lambda: (42, "d1"),
    )
    try:
        before = runner.status()
        assert before.peer is None
        assert before.me == NodeView("lb1", "standby", 0, 42, "d1", seen_ago=0.0, vips=False)
        assert before.vips == ("203.0.113.10",)

        reply = runner.heartbeat_received(Heartbeat("lb2", "standby", 0, 40, "d0"))
        assert (reply.node, reply.role, reply.term, reply.revision, reply.digest) == (
            "lb1",
            "standby",
            0,
            42,
            "d1",
        )
        after = runner.status()
        assert after.peer is not None
        assert (after.peer.node, after.peer.revision, after.peer.digest) == ("lb2", 40, "d0")
        assert after.peer.seen_ago >= 0.0
        assert not runner.peer_ready()  # a different digest

        refused = await runner.switchover("lb2", within=0.5)  # a standby cannot hand over
        assert not refused.ok
        assert refused.error
    finally:
        await election.close()
