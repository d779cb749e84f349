"""mTLS on the client side and on the agents' Peer service: real grpc.aio servers on loopback
with certificates of a test CA (``lvs_events.security.pki``), the project's clients calling them.

The coordinator here is a small servicer behind :class:`AuthInterceptor` that records who
called: what is under test is the clients' TLS (credentials, the server name check against an
IP endpoint, rotation, the environment), not the coordinator."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from lvs_events.agent import main as agent_main
from lvs_events.agent.ha.peer import HandoverAnswer, Heartbeat, PairStatus, PeerClient, serve_peer
from lvs_events.client.ha import LeaderElectionClient, NodeView, PeerUnavailable, ha_status, peer_status
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import AdminAction, AdminOverride, Event
from lvs_events.errors import CoordinatorUnavailable
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc
from lvs_events.security import pki
from lvs_events.security.interceptor import AuthInterceptor, current_principal
from lvs_events.security.principal import Principal, Role
from lvs_events.security.tls import (
    ENV_CA,
    ENV_CERT,
    ENV_KEY,
    ListenRefused,
    TlsError,
    TlsFiles,
    server_credentials,
)
from tests.support.pki import files


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init(
        d,
        [
            pki.Identity("lb1", Role.DIRECTOR, ("192.0.2.201",)),
            pki.Identity("lb2", Role.DIRECTOR, ("192.0.2.202",)),
            pki.Identity("lb3", Role.DIRECTOR, ("192.0.2.203",)),
            pki.Identity("alice", Role.OPERATOR),
            pki.Identity("monitor", Role.READER),
        ],
    )
    return d


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name their files; none comes from the environment of the test run."""
    for var in (ENV_CA, ENV_CERT, ENV_KEY):
        monkeypatch.delenv(var, raising=False)


# -- a coordinator (and election) over TLS that records who called ---------------------------------


@dataclass
class Seen:
    calls: list[tuple[str, Principal]] = field(default_factory=list)


class _Coordinator(cpb_grpc.CoordinatorServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetState(self, request: cpb.GetStateRequest, context: Any) -> cpb.GetStateResponse:
        self.seen.calls.append(("GetState", current_principal()))
        return cpb.GetStateResponse(revision=7, head_revision=7, first_revision=1)

    async def GetStateChunks(
        self, request: cpb.GetStateRequest, context: Any
    ) -> AsyncIterator[cpb.StateChunk]:
        # the client reads states in pieces; one piece here, recorded as the GetState it is
        self.seen.calls.append(("GetState", current_principal()))
        header = cpb.GetStateResponse(revision=7, head_revision=7, first_revision=1)
        yield cpb.StateChunk(header=header, last=True)

    async def Publish(self, request_iterator: Any, context: Any) -> AsyncIterator[cpb.PublishAck]:
        self.seen.calls.append(("Publish", current_principal()))
        revision = 0
        async for req in request_iterator:
            acks = []
            for ev in req.events:
                revision += 1
                acks.append(cpb.PublishAck(event_id=ev.event_id, revision=revision))
            yield cpb.PublishAck(acks=acks)


class _Election(lpb_grpc.LeaderElectionServicer):
    def __init__(self, seen: Seen, leader: lpb.LeaderInfo) -> None:
        self.seen = seen
        self.leader = leader

    async def GetLeader(self, request: lpb.GetLeaderRequest, context: Any) -> lpb.LeaderInfo:
        self.seen.calls.append(("GetLeader", current_principal()))
        return self.leader


@dataclass
class Served:
    address: str
    seen: Seen
    server: grpc.aio.Server


@pytest.fixture
async def coordinator(pki_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[grpc.aio.Server] = []

    async def start(leader: lpb.LeaderInfo | None = None) -> Served:
        seen = Seen()
        server = grpc.aio.server(interceptors=[AuthInterceptor(verified=True)])
        cpb_grpc.add_CoordinatorServicer_to_server(_Coordinator(seen), server)
        lpb_grpc.add_LeaderElectionServicer_to_server(_Election(seen, leader or lpb.LeaderInfo()), server)
        # the coordinator on lb1 serves lb1's certificate; clients reach it by IP address
        port = server.add_secure_port("127.0.0.1:0", server_credentials(files(pki_dir, "lb1")))
        await server.start()
        servers.append(server)
        return Served(f"127.0.0.1:{port}", seen, server)

    yield start
    for s in servers:
        await s.stop(None)


def _override(n: int = 1) -> list[Event]:
    payload = AdminOverride("TCP 203.0.113.10:80", "192.0.2.11:80", AdminAction.DRAIN)
    return [Event(f"E{i:025d}", "c", "lb1", "alice", "test", 1.0, payload) for i in range(n)]


async def test_coordinator_client_speaks_mtls_to_an_ip_endpoint(
    coordinator: Callable[..., Any], pki_dir: Path
) -> None:
    served = await coordinator()
    async with CoordinatorClient([served.address], timeout=5.0, tls=files(pki_dir, "alice")) as client:
        view = await client.get_state()
        acks = await client.publish(_override(3))
    assert view.revision == 7
    assert [a.revision for a in acks] == [1, 2, 3]
    alice = Principal(Role.OPERATOR, "alice")
    assert served.seen.calls == [("GetState", alice), ("Publish", alice)]


async def test_a_plaintext_client_does_not_reach_a_tls_coordinator(coordinator: Callable[..., Any]) -> None:
    served = await coordinator()
    async with CoordinatorClient([served.address], timeout=1.0, attempt_timeout=0.3) as client:
        with pytest.raises(CoordinatorUnavailable):
            await client.get_state()
    assert served.seen.calls == []


async def test_a_certificate_of_another_ca_is_not_trusted(
    coordinator: Callable[..., Any], tmp_path: Path
) -> None:
    served = await coordinator()
    pki.init(tmp_path, [pki.Identity("alice", Role.OPERATOR)])
    async with CoordinatorClient(
        [served.address], timeout=1.0, attempt_timeout=0.3, tls=files(tmp_path, "alice")
    ) as client:
        with pytest.raises(CoordinatorUnavailable):
            await client.get_state()
    assert served.seen.calls == []


async def test_files_come_from_the_environment_when_not_given(
    coordinator: Callable[..., Any], pki_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = await coordinator()
    mine = files(pki_dir, "monitor")
    monkeypatch.setenv(ENV_CA, str(mine.ca))
    monkeypatch.setenv(ENV_CERT, str(mine.cert))
    monkeypatch.setenv(ENV_KEY, str(mine.key))
    async with CoordinatorClient([served.address], timeout=5.0) as client:
        await client.get_state()
    assert served.seen.calls == [("GetState", Principal(Role.READER, "monitor"))]


def test_files_that_do_not_check_fail_at_construction(pki_dir: Path, tmp_path: Path) -> None:
    wrong = TlsFiles(pki_dir / pki.CA_CERT, pki.cert_path(pki_dir, "alice"), pki.key_path(pki_dir, "lb1"))
    with pytest.raises(TlsError, match="does not match"):
        CoordinatorClient(["127.0.0.1:1"], tls=wrong)
    with pytest.raises(TlsError, match="missing"):
        LeaderElectionClient(["127.0.0.1:1"], tls=files(tmp_path, "nobody"))


async def test_a_rotated_certificate_is_used_from_the_next_call(
    coordinator: Callable[..., Any], pki_dir: Path, tmp_path: Path
) -> None:
    """The client's files are replaced by another identity's (as ``pki issue`` writes them: key,
    then certificate, each renamed into place): the next call presents the new certificate, on
    the same client, without a restart. A half-done rotation keeps the old pair in use."""
    served = await coordinator()
    d = tmp_path / "client"
    shutil.copytree(pki_dir, d)
    mine = files(d, "alice")
    async with CoordinatorClient([served.address], timeout=5.0, tls=mine) as client:
        await client.get_state()
        # half done: the new key is in place, the certificate not yet
        (d / "new-key.pem").write_bytes(pki.key_path(d, "lb2").read_bytes())
        (d / "new-key.pem").replace(mine.key)
        await client.get_state()
        (d / "new.pem").write_bytes(pki.cert_path(d, "lb2").read_bytes())
        (d / "new.pem").replace(mine.cert)
        await client.get_state()
    alice, lb2 = Principal(Role.OPERATOR, "alice"), Principal(Role.DIRECTOR, "lb2")
    assert served.seen.calls == [("GetState", alice), ("GetState", alice), ("GetState", lb2)]


# -- the agents' Peer services -------------------------------------------------------------------


class _Handler:
    """A PeerHandler for node ``me`` that records the heartbeats and handovers it admitted."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.beats: list[str] = []
        self.handovers: list[str] = []
        self.switchovers: list[str] = []

    def heartbeat_received(self, beat: Heartbeat) -> Heartbeat:
        self.beats.append(beat.node)
        return Heartbeat(self.me, "standby", 0)

    async def handover_asked(self, from_node: str, term: int) -> HandoverAnswer:
        self.handovers.append(from_node)
        return HandoverAnswer(ok=True, term=term + 1, node=self.me)

    async def switchover(self, to: str, within: float) -> HandoverAnswer:
        self.switchovers.append(to)
        return HandoverAnswer(ok=True, term=9, node=to or "lb2")

    def status(self) -> PairStatus:
        me = NodeView(self.me, "active", 8, 41, "d", seen_ago=0.0, vips=True)
        return PairStatus(me, None, self.me, 8, "elected", ("203.0.113.10",))


@pytest.fixture
async def pair(pki_dir: Path) -> AsyncIterator[dict[str, tuple[_Handler, str]]]:
    """The Peer services of lb1 (its peer: lb2) and lb2 (its peer: lb1), each with its own
    certificate, on loopback."""
    out: dict[str, tuple[_Handler, str]] = {}
    tasks = []
    for me, peer in (("lb1", "lb2"), ("lb2", "lb1")):
        handler = _Handler(me)
        ports: asyncio.Queue[int] = asyncio.Queue(1)
        tasks.append(
            asyncio.create_task(
                serve_peer(handler, "127.0.0.1:0", ports.put_nowait, tls=files(pki_dir, me), peer_node=peer)
            )
        )
        async with asyncio.timeout(10):
            out[me] = (handler, f"127.0.0.1:{await ports.get()}")
    yield out
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_each_peer_service_accepts_its_configured_peer(
    pair: dict[str, tuple[_Handler, str]], pki_dir: Path
) -> None:
    (h1, a1), (h2, a2) = pair["lb1"], pair["lb2"]
    from_lb2, from_lb1 = PeerClient(a1, tls=files(pki_dir, "lb2")), PeerClient(a2, tls=files(pki_dir, "lb1"))
    try:
        assert (await from_lb2.heartbeat(Heartbeat("lb2", "standby", 0), within=5.0)).node == "lb1"
        assert (await from_lb1.heartbeat(Heartbeat("lb1", "active", 8), within=5.0)).node == "lb2"
        assert (await from_lb1.handover("lb1", 8, within=5.0)).ok
    finally:
        await from_lb2.close()
        await from_lb1.close()
    assert (h1.beats, h2.beats, h2.handovers) == (["lb2"], ["lb1"], ["lb1"])


@pytest.mark.parametrize("intruder", ["lb3", "alice", "monitor"])
async def test_heartbeat_and_handover_from_anyone_else_are_refused(
    pair: dict[str, tuple[_Handler, str]], pki_dir: Path, intruder: str
) -> None:
    """A third director, an operator and a reader, all with valid certificates of the CA: their
    heartbeats and handovers are refused with PERMISSION_DENIED and never reach the runner."""
    handler, address = pair["lb1"]
    client = PeerClient(address, tls=files(pki_dir, intruder))
    try:
        with pytest.raises(PeerUnavailable, match="PERMISSION_DENIED"):
            await client.heartbeat(Heartbeat(intruder, "active", 99), within=5.0)
        answer = await client.handover(intruder, 99, within=5.0)
    finally:
        await client.close()
    assert not answer.ok
    assert answer.error.startswith("PERMISSION_DENIED")
    assert (handler.beats, handler.handovers) == ([], [])


async def test_the_peer_may_not_claim_another_node(
    pair: dict[str, tuple[_Handler, str]], pki_dir: Path
) -> None:
    handler, address = pair["lb1"]
    client = PeerClient(address, tls=files(pki_dir, "lb2"))
    try:
        with pytest.raises(PeerUnavailable, match="PERMISSION_DENIED"):
            await client.heartbeat(Heartbeat("lb3", "active", 99), within=5.0)
    finally:
        await client.close()
    assert handler.beats == []


async def test_operators_switch_over_and_read_status_the_peer_may_not_switch_over(
    pair: dict[str, tuple[_Handler, str]], pki_dir: Path
) -> None:
    handler, address = pair["lb1"]

    async def switchover_as(name: str) -> lpb.HandoverReply:
        creds = grpc.ssl_channel_credentials(
            (pki_dir / pki.CA_CERT).read_bytes(),
            pki.key_path(pki_dir, name).read_bytes(),
            pki.cert_path(pki_dir, name).read_bytes(),
        )
        async with grpc.aio.secure_channel(address, creds) as ch:
            reply: lpb.HandoverReply = await lpb_grpc.PeerStub(ch).Switchover(
                lpb.SwitchoverRequest(to="lb2", timeout=1.0), timeout=5.0
            )
            return reply

    assert (await switchover_as("alice")).ok
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await switchover_as("lb2")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert handler.switchovers == ["lb2"]
    status = await peer_status(address, within=5.0, tls=files(pki_dir, "monitor"))
    assert status.self.node == "lb1"


async def test_operator_calls_reach_the_leader_agent_over_tls(
    coordinator: Callable[..., Any], pair: dict[str, tuple[_Handler, str]], pki_dir: Path
) -> None:
    """``ha_status``: the leader from the election, then the leader agent's Peer service, both
    over TLS with the operator's one certificate."""
    _, address = pair["lb1"]
    served = await coordinator(lpb.LeaderInfo(node="lb1", term=8, address=address))
    st = await ha_status([served.address], within=5.0, tls=files(pki_dir, "alice"))
    assert st.error == ""
    assert st.leader.node == "lb1"
    assert [n.node for n in st.nodes] == ["lb1"]
    assert served.seen.calls == [("GetLeader", Principal(Role.OPERATOR, "alice"))]


async def test_a_plaintext_peer_service_listens_on_loopback_only(pki_dir: Path) -> None:
    with pytest.raises(ListenRefused, match="--insecure"):
        await serve_peer(_Handler("lb1"), "0.0.0.0:0", lambda _port: None)
    with pytest.raises(ValueError, match="peer's node name"):
        await serve_peer(_Handler("lb1"), "127.0.0.1:0", lambda _port: None, tls=files(pki_dir, "lb1"))


def _agent_args(*extra: str) -> argparse.Namespace:
    return agent_main.parse_args(["--node", "lb1", "--state-dir", "unused", "--peer", "lb2:7421", *extra])


def test_agent_flags_tls_peer_node_and_insecure(
    pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # HA without TLS: the default Peer listener (every address) is refused, loopback or --insecure is not
    with pytest.raises(ListenRefused):
        agent_main.tls_from(_agent_args())
    assert agent_main.tls_from(_agent_args("--listen-peer", "127.0.0.1:7421")) is None
    assert agent_main.tls_from(_agent_args("--insecure")) is None
    mine = files(pki_dir, "lb1")
    tls_flags = ("--tls-ca", str(mine.ca), "--tls-cert", str(mine.cert), "--tls-key", str(mine.key))
    with pytest.raises(SystemExit, match="--peer-node"):
        agent_main.tls_from(_agent_args(*tls_flags))
    assert agent_main.tls_from(_agent_args(*tls_flags, "--peer-node", "lb2")) == mine
    state = tmp_path / "state"
    interval = sys.getswitchinterval()
    try:
        assert agent_main.main(["--node", "lb1", "--state-dir", str(state), "--peer", "lb2:7421"]) == 1
    finally:
        sys.setswitchinterval(interval)
    assert "refusing to listen on 0.0.0.0:7421 without TLS" in capsys.readouterr().err
    assert not state.exists()  # refused before anything started
