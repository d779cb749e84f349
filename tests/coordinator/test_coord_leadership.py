"""The election through the coordinator, on a real etcd: campaign, keepalive, takeover, resign,
lease expiry, the Leadership events in the log, and fencing of stale terms in the append txn."""

from __future__ import annotations

import asyncio

import pytest

from lvs_events.client.events import new_event
from lvs_events.client.ha import LeaderElectionClient
from lvs_events.client.log import CoordinatorClient
from lvs_events.coordinator.server import RunningCoordinator
from lvs_events.domain.events import DrillMarker, Event, Leadership, LeadershipChange, RealServerHealth
from tests.coordinator.helpers import CLUSTER


def health(node: str, term: int) -> Event:
    return new_event(
        RealServerHealth("TCP 203.0.113.10:80", "192.0.2.11:80", up=True, observer=node),
        cluster=CLUSTER,
        origin=node,
        actor="test",
        term=term,
    )


async def leadership_log(client: CoordinatorClient) -> list[tuple[str, str, int]]:
    out = []
    async with client.subscribe(1) as sub:
        async for item in sub:
            if isinstance(item, Event) and isinstance(item.payload, Leadership):
                p = item.payload
                out.append((p.node, p.change.value, p.term))
    return out


async def test_campaign_takeover_fencing_resign(coordinator: RunningCoordinator) -> None:
    election = LeaderElectionClient([coordinator.address], timeout=3.0)
    client = CoordinatorClient([coordinator.address], timeout=5.0)
    try:
        a = await election.campaign("lb1", ttl=5, address="192.0.2.1:7421")
        assert a.acquired
        assert a.leader.node == "lb1"
        assert a.leader.term == 1
        b = await election.campaign("lb2", ttl=5)
        assert not b.acquired
        assert b.leader.node == "lb1"
        assert b.leader.address == "192.0.2.1:7421"

        ka = await election.keepalive("lb1", 1, a.leader.lease_id)
        assert ka.held
        assert ka.ttl > 0
        (ok,) = await client.publish([health("lb1", 1)])
        assert ok.ok

        t = await election.takeover("lb2", stale_term=1, ttl=5)
        assert t.acquired
        assert t.leader.term == 2
        again = await election.takeover("lb1", stale_term=1, ttl=5)  # stale: refused
        assert not again.acquired
        assert again.leader.node == "lb2"

        ka = await election.keepalive("lb1", 1, a.leader.lease_id)
        assert not ka.held
        assert ka.leader.node == "lb2"

        # the fenced old active: refused in the append transaction
        (fenced,) = await client.publish([health("lb1", 1)])
        assert fenced.error_code == "FAILED_PRECONDITION"
        assert "not 1" in fenced.error
        acks = await client.publish([health("lb2", 2), health("lb1", 1), health("lb2", 0)])
        assert [x.error_code for x in acks] == ["", "FAILED_PRECONDITION", ""]

        view = await client.get_state()
        assert view.state.leader == "lb2"
        assert view.state.term == 2

        assert await election.resign("lb2", 2)
        assert not await election.resign("lb2", 2)
        info = await election.get_leader()
        assert not info.present
        assert info.term == 2
        (late,) = await client.publish([health("lb2", 2)])
        assert late.error_code == "FAILED_PRECONDITION"
        c = await election.campaign("lb1", ttl=5)
        assert c.acquired
        assert c.leader.term == 3

        assert await leadership_log(client) == [
            ("lb1", "acquired", 1),
            ("lb1", "lost", 1),
            ("lb2", "acquired", 2),
            ("lb2", "lost", 2),
            ("lb1", "acquired", 3),
        ]
    finally:
        await election.close()
        await client.close()


async def test_lease_expiry_then_campaign_logs_the_loss(coordinator: RunningCoordinator) -> None:
    election = LeaderElectionClient([coordinator.address], timeout=3.0)
    client = CoordinatorClient([coordinator.address], timeout=5.0)
    try:
        a = await election.campaign("lb1", ttl=1)
        assert a.acquired
        for _ in range(60):
            if not (await election.get_leader()).present:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("lease did not expire")
        b = await election.campaign("lb2", ttl=5)
        assert b.acquired
        assert b.leader.term == 2
        assert await leadership_log(client) == [
            ("lb1", "acquired", 1),
            ("lb1", "lost", 1),
            ("lb2", "acquired", 2),
        ]
        view = await client.get_state()
        assert view.state.leader == "lb2"
    finally:
        await election.close()
        await client.close()


async def test_publishers_cannot_forge_leadership(coordinator: RunningCoordinator) -> None:
    async with CoordinatorClient([coordinator.address], timeout=5.0) as client:
        forged = new_event(
            Leadership("lb9", LeadershipChange.ACQUIRED, 99), cluster=CLUSTER, origin="lb9", actor="x"
        )
        marker = new_event(DrillMarker("d1", "switchover", "start"), cluster=CLUSTER, origin="op", actor="x")
        acks = await client.publish([forged, marker])
        assert acks[0].error_code == "INVALID_ARGUMENT"
        assert acks[1].ok


async def test_observe_sees_every_change(coordinator: RunningCoordinator) -> None:
    election = LeaderElectionClient([coordinator.address], timeout=3.0)
    seen: list[tuple[str, int]] = []

    async def watch() -> None:
        async for info in election.watch_leader():
            seen.append((info.node, info.term))

    task = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.3)
        a = await election.campaign("lb1", ttl=5)
        await election.takeover("lb2", a.leader.term, ttl=5)
        await election.resign("lb2", 2)
        for _ in range(50):
            if len(seen) >= 4:
                break
            await asyncio.sleep(0.05)
        assert seen == [("", 0), ("lb1", 1), ("lb2", 2), ("", 2)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await election.close()


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ("../../etc/passwd", ""),
        ("lb 1", ""),
        ("é" * 40, ""),
        ("x" * 200, ""),
        ("\x1b[31mlb1", ""),
        ("lb1", "r" * 5000),
    ],
)
async def test_election_calls_refuse_what_the_log_would_not_accept(
    coordinator: RunningCoordinator, node: str, reason: str
) -> None:
    """The node of an election call becomes the leader key and a Leadership event's origin: a name
    the log would refuse (or an overlong reason) is INVALID_ARGUMENT, and nothing is written."""
    import grpc
    import grpc.aio

    from lvs_events.pb.v1 import leadership_pb2 as lpb
    from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc

    async with grpc.aio.insecure_channel(coordinator.address) as ch:
        stub = lpb_grpc.LeaderElectionStub(ch)  # type: ignore[no-untyped-call]
        for call in (
            stub.Campaign(
                lpb.CampaignRequest(node=node, ttl_seconds=2, address="x:1", reason=reason), timeout=5
            ),
            stub.Resign(lpb.ResignRequest(node=node, term=1, reason=reason), timeout=5),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with CoordinatorClient([coordinator.address]) as client:
        view = await client.get_state()
    assert view.head_revision == 0
