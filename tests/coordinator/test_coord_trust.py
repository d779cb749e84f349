"""The coordinator's side of trust, with real processes: mTLS on its listener, the access policy
on every RPC of both services, stamping, the log's clock, rate limits and etcd's quota."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from lvs_events import wire
from lvs_events.coordinator.server import RunningCoordinator
from lvs_events.coordinator.trust import Limits, _subject
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc
from lvs_events.security import pki
from lvs_events.security.policy import publish_action
from lvs_events.security.principal import Role
from lvs_events.security.tls import ListenRefused, channel_credentials
from tests.coordinator.conftest import StartCoordinator
from tests.coordinator.helpers import CLUSTER, config_event, health_event, read_log
from tests.support.pki import files, make_pki

YEAR_9999 = datetime.datetime(9999, 6, 1, tzinfo=datetime.UTC).timestamp()


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    identities = [
        pki.Identity("lb1", Role.DIRECTOR),
        pki.Identity("lb2", Role.DIRECTOR),
        pki.Identity("alice", Role.OPERATOR),
        pki.Identity("monitor", Role.READER),
    ]
    return make_pki(tmp_path_factory.mktemp("pki"), identities, expired="old")


@pytest.fixture(scope="module")
def rogue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA with an operator 'alice' of its own."""
    d = tmp_path_factory.mktemp("rogue")
    pki.init(d, [pki.Identity("alice", Role.OPERATOR)])
    return d


@pytest.fixture
async def secure(
    start_coordinator: StartCoordinator, pki_dir: Path
) -> AsyncIterator[tuple[RunningCoordinator, Callable[[str], grpc.aio.Channel]]]:
    """A coordinator serving mTLS with lb1's certificate; ``channel(name)`` as that identity."""
    channels: list[grpc.aio.Channel] = []

    def channel(name: str) -> grpc.aio.Channel:
        ch = grpc.aio.secure_channel(c.address, channel_credentials(files(pki_dir, name)))
        channels.append(ch)
        return ch

    async with start_coordinator(tls=files(pki_dir, "lb1")) as c:
        yield c, channel
        for ch in channels:
            await ch.close()


def drain_event(*, actor: str = "alice", origin: str = "alice", expires_at: float = 0.0) -> pb.Event:
    return pb.Event(
        event_id=uuid.uuid4().hex,
        cluster=CLUSTER,
        origin=origin,
        actor=actor,
        reason="maintenance",
        wall_time=time.time(),
        admin_override=pb.AdminOverride(
            virtual="TCP 203.0.113.10:80",
            real="192.0.2.11:80",
            action=pb.AdminOverride.ACTION_DRAIN,
            expires_at=expires_at,
        ),
    )


async def publish(channel: grpc.aio.Channel, events: list[pb.Event]) -> list[cpb.PublishAck]:
    """One batch request on a raw stub; the per-event acks."""
    stub = cpb_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]
    call = stub.Publish(iter([cpb.PublishRequest(events=events)]), timeout=10.0)
    return [a for ack in [ack async for ack in call] for a in ack.acks]


def election_calls(node: str) -> dict[str, Callable[[lpb_grpc.LeaderElectionStub], Any]]:
    return {
        "Campaign": lambda s: s.Campaign(lpb.CampaignRequest(node=node, ttl_seconds=5), timeout=5),
        "Takeover": lambda s: s.Takeover(
            lpb.TakeoverRequest(node=node, ttl_seconds=5, stale_term=1), timeout=5
        ),
        "KeepAlive": lambda s: s.KeepAlive(lpb.KeepAliveRequest(node=node, lease_id=1, term=1), timeout=5),
        "Resign": lambda s: s.Resign(lpb.ResignRequest(node=node, term=1), timeout=5),
    }


async def every_rpc(channel: grpc.aio.Channel) -> dict[str, grpc.StatusCode]:
    """Every method of the Coordinator and LeaderElection services once; the status of each."""
    coord = cpb_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]
    elect = lpb_grpc.LeaderElectionStub(channel)  # type: ignore[no-untyped-call]

    async def first(stream: Any) -> None:
        async for _ in stream:
            return

    calls: dict[str, Callable[[], Any]] = {
        "Publish": lambda: publish(channel, [health_event()]),
        "Subscribe": lambda: first(coord.Subscribe(cpb.SubscribeRequest(), timeout=5)),
        "GetState": lambda: coord.GetState(cpb.GetStateRequest(), timeout=5),
        "GetLeader": lambda: elect.GetLeader(lpb.GetLeaderRequest(), timeout=5),
        "Observe": lambda: first(elect.Observe(lpb.GetLeaderRequest(), timeout=5)),
        **{name: (lambda f=f: f(elect)) for name, f in election_calls("lb1").items()},
    }
    out: dict[str, grpc.StatusCode] = {}
    for name, make in calls.items():
        try:
            await make()
        except grpc.aio.AioRpcError as e:
            out[name] = e.code()
        else:
            out[name] = grpc.StatusCode.OK
    return out


# --- listener ------------------------------------------------------------------------------


async def test_plaintext_off_loopback_is_refused_without_insecure(
    start_coordinator: StartCoordinator,
) -> None:
    with pytest.raises(ListenRefused, match="without TLS"):
        async with start_coordinator(listen="0.0.0.0:0"):
            pass


async def test_insecure_listens_off_loopback_and_says_so(
    start_coordinator: StartCoordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        start_coordinator(listen="0.0.0.0:0", insecure=True) as c,
        grpc.aio.insecure_channel(c.address) as ch,
    ):
        acks = await publish(ch, [health_event()])
    assert [a.error_code for a in acks] == [""]
    # stdout or stderr: where structlog writes depends on what configured it last in this process
    said = capsys.readouterr()
    assert "INSECURE: serving plaintext gRPC on 0.0.0.0:0" in said.out + said.err


@pytest.mark.parametrize("client", ["no certificate", "another CA", "expired"])
async def test_a_client_without_a_valid_certificate_is_refused_on_every_rpc(
    secure: tuple[RunningCoordinator, Callable[[str], grpc.aio.Channel]],
    pki_dir: Path,
    rogue_dir: Path,
    store: Any,
    client: str,
) -> None:
    c, _ = secure
    ca = (pki_dir / pki.CA_CERT).read_bytes()
    if client == "no certificate":
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        own = files(rogue_dir, "alice") if client == "another CA" else files(pki_dir, "old")
        creds = grpc.ssl_channel_credentials(ca, own.key.read_bytes(), own.cert.read_bytes())
    async with grpc.aio.secure_channel(c.address, creds) as ch:
        codes = await every_rpc(ch)
    assert set(codes) == {"Publish", "Subscribe", "GetState", "GetLeader", "Observe"} | set(
        election_calls("lb1")
    )
    # the handshake fails: no call reaches a handler
    assert set(codes.values()) == {grpc.StatusCode.UNAVAILABLE}, codes
    assert await read_log(store) == []


async def test_a_reader_reads_and_is_refused_everything_else(
    secure: tuple[RunningCoordinator, Callable[[str], grpc.aio.Channel]], store: Any
) -> None:
    c, channel = secure
    codes = await every_rpc(channel("monitor"))
    denied = {n for n, code in codes.items() if code == grpc.StatusCode.PERMISSION_DENIED}
    assert denied == {"Publish", "Campaign", "Takeover", "KeepAlive", "Resign"}, codes
    assert all(codes[n] == grpc.StatusCode.OK for n in ("Subscribe", "GetState", "GetLeader", "Observe"))
    assert await read_log(store) == []
    assert c.gate.refusals.counts()[("reader", "Publish")] == 1


# --- the director's and the operator's rights ----------------------------------------------


async def test_a_director_cannot_drain_nor_speak_for_the_other_director(
    secure: tuple[RunningCoordinator, Callable[[str], grpc.aio.Channel]], store: Any
) -> None:
    c, channel = secure
    lb1 = channel("lb1")
    acks = await publish(lb1, [drain_event(actor="lb1", origin="lb1"), health_event(node="lb2")])
    assert [a.error_code for a in acks] == ["PERMISSION_DENIED", "PERMISSION_DENIED"]
    assert "director 'lb1' may not publish AdminOverride" in acks[0].error
    assert "may not publish health as 'lb2'" in acks[1].error
    elect = lpb_grpc.LeaderElectionStub(lb1)  # type: ignore[no-untyped-call]
    for name, make in election_calls("lb2").items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await make(elect)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert "only for itself" in (err.value.details() or ""), name
    assert await read_log(store) == []  # nothing appended, no Leadership event either
    counts = c.gate.refusals.counts()
    assert counts[("director", "publish AdminOverride")] == 1
    assert counts[("director", "publish RealServerHealth")] == 1
    assert all(counts[("director", n)] == 1 for n in ("Campaign", "Takeover", "KeepAlive", "Resign"))
    # the counters go out with GetState
    coord = cpb_grpc.CoordinatorStub(lb1)  # type: ignore[no-untyped-call]
    state = coord.GetState(cpb.GetStateRequest(), timeout=5)
    metadata = dict(await state.initial_metadata())
    await state
    assert metadata["lvs-refused"] == "6"


async def test_a_director_campaigns_for_itself_and_publishes_its_own_health(
    secure: tuple[RunningCoordinator, Callable[[str], grpc.aio.Channel]], store: Any
) -> None:
    _, channel = secure
    lb1 = channel("lb1")
    elect = lpb_grpc.LeaderElectionStub(lb1)  # type: ignore[no-untyped-call]
    won = await elect.Campaign(lpb.CampaignRequest(node="lb1", ttl_seconds=5), timeout=5)
    assert won.acquired
    acks = await publish(lb1, [health_event(node="lb1")])
    assert [a.error_code for a in acks] == [""]
    log = await read_log(store)
    assert [e.WhichOneof("payload") for e in log] == ["leadership", "real_server_health"]
    assert (log[1].actor, log[1].origin) == ("lb1", "lb1")


async def test_an_operator_drains_and_the_log_names_the_certificate_not_the_claim(
    secure: tuple[RunningCoordinator, Callable[[str], grpc.aio.Channel]], store: Any
) -> None:
    _, channel = secure
    forged = drain_event(actor="lb2", origin="lb2")
    acks = await publish(channel("alice"), [forged])
    assert [a.error_code for a in acks] == [""]
    (stored,) = await read_log(store)
    assert stored.event_id == forged.event_id
    assert (stored.actor, stored.origin) == ("alice", "alice")


async def test_without_tls_events_are_stamped_unverified(stub: Any, store: Any) -> None:
    ev = health_event()
    ev.actor = "lvs-agent\x1b[2J"
    call = stub.Publish(iter([cpb.PublishRequest(events=[ev])]), timeout=10)
    (ack,) = [a async for a in call]
    assert ack.acks[0].error_code == ""
    (stored,) = await read_log(store)
    assert stored.actor == "unverified:lvs-agent\\x1b[2J"
    assert stored.origin == ev.origin


# --- the log's clock -----------------------------------------------------------------------


async def test_a_publisher_clock_in_the_year_9999_does_not_move_the_logs_clock(
    stub: Any, store: Any, coordinator: RunningCoordinator
) -> None:
    drain = drain_event(expires_at=time.time() + 3600)  # a timed drain: ends in an hour
    skewed = health_event(real="192.0.2.12:80")
    skewed.wall_time = YEAR_9999
    slightly = health_event(real="192.0.2.13:80")
    slightly.wall_time = time.time() - 2.0  # within the allowed skew: kept
    call = stub.Publish(iter([cpb.PublishRequest(events=[drain, skewed, slightly])]), timeout=10)
    (ack,) = [a async for a in call]
    assert [a.error_code for a in ack.acks] == ["", "", ""]
    after = time.time()
    log = await read_log(store)
    assert log[1].wall_time <= after
    assert log[2].wall_time == slightly.wall_time
    resp = await stub.GetState(cpb.GetStateRequest(), timeout=10)
    state = json.loads(resp.state)
    assert state["clock"] <= after
    assert coordinator.gate.clamped == 1
    # the timed drain is still in force at the state's "now"
    ((key, override),) = state["overrides"]
    assert key == ["TCP 203.0.113.10:80", "192.0.2.11:80"]
    assert override["action"] == "drain"
    assert state["clock"] < override["expires_at"]


# --- rates and quota -----------------------------------------------------------------------


async def test_a_principal_over_its_rate_is_refused_with_the_limit_named(
    start_coordinator: StartCoordinator, store: Any
) -> None:
    limits = Limits(events_per_s=0.5, burst_events=3, bytes_per_s=0)
    async with start_coordinator(limits=limits) as c, grpc.aio.insecure_channel(c.address) as ch:
        acks = await publish(ch, [health_event(real=f"192.0.2.{20 + i}:80") for i in range(5)])
    assert [a.error_code for a in acks] == ["", "", "", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert "rate limit" in acks[3].error
    assert "0.5 events/s (burst 3)" in acks[3].error
    assert len(await read_log(store)) == 3
    assert c.gate.rate_refused == 2


async def test_byte_rate_limit(start_coordinator: StartCoordinator, store: Any) -> None:
    limits = Limits(events_per_s=0, bytes_per_s=1, burst_bytes=2000)
    async with start_coordinator(limits=limits) as c, grpc.aio.insecure_channel(c.address) as ch:
        acks = await publish(ch, [config_event(reals=8) for _ in range(8)])
    codes = [a.error_code for a in acks]
    assert "" in codes
    assert "RESOURCE_EXHAUSTED" in codes
    assert "bytes/s" in next(a.error for a in acks if a.error_code)
    assert len(await read_log(store)) == codes.count("")


async def test_above_the_quota_high_water_mark_only_health_goes_in(
    start_coordinator: StartCoordinator, store: Any
) -> None:
    # a quota every etcd database exceeds: the alarm is on from the first check
    async with start_coordinator(etcd_quota_bytes=4096, quota_interval=0.05) as c:
        for _ in range(100):
            if c.gate.quota.alarm:
                break
            await asyncio.sleep(0.05)
        assert c.gate.quota.alarm
        async with grpc.aio.insecure_channel(c.address) as ch:
            acks = await publish(ch, [config_event(), health_event()])
            elect = lpb_grpc.LeaderElectionStub(ch)  # type: ignore[no-untyped-call]
            won = await elect.Campaign(lpb.CampaignRequest(node="lb1", ttl_seconds=5), timeout=5)
            coord = cpb_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
            state = coord.GetState(cpb.GetStateRequest(), timeout=5)
            metadata = dict(await state.initial_metadata())
            await state
    assert [a.error_code for a in acks] == ["RESOURCE_EXHAUSTED", ""]
    assert "etcd database at" in acks[0].error
    assert "of its quota" in acks[0].error
    assert won.acquired  # elections still go in
    assert [e.WhichOneof("payload") for e in await read_log(store)] == ["real_server_health", "leadership"]
    assert metadata["lvs-etcd-quota-alarm"].startswith("etcd database at")
    assert c.gate.quota_refused == 1


def test_the_gates_decision_key_reads_the_subject_as_the_policy_does() -> None:
    """The gate caches decisions by (payload, subject) read from the message; the policy reads
    the subject from the domain event. Both must agree, for every payload that has one."""
    digest = "sha256:" + "0" * 64
    events = [
        health_event(node="lb7"),
        pb.Event(table_applied=pb.TableApplied(node="lb7", revision=3, digest=digest)),
        pb.Event(dataplane_drift=pb.DataplaneDrift(node="lb7", revision=3)),
        drain_event(),
        config_event(),
    ]
    for msg in events:
        if not msg.event_id:
            msg.MergeFrom(pb.Event(event_id=uuid.uuid4().hex, cluster=CLUSTER, origin="lb7", actor="a"))
        kind = msg.WhichOneof("payload") or ""
        assert _subject(msg, kind) == publish_action(wire.event_from_pb(msg)).subject, kind
