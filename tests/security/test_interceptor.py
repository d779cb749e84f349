"""Real grpc.aio servers on loopback with the PKI's certificates: who gets in, who is refused,
and what the handler sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from lvs_events import wire
from lvs_events.client.events import new_event
from lvs_events.domain.events import AdminAction, AdminOverride, RealServerHealth, TableApplied
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.security.principal import UNVERIFIED, Principal, Role
from lvs_events.security.tls import channel_credentials
from tests.security.conftest import call, every_method
from tests.support.pki import files

METHODS = {m.name: m for _, m in every_method()}


def _secure(pki_dir: Path, name: str, address: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, channel_credentials(files(pki_dir, name)))


def test_the_test_service_has_every_rpc_of_the_three_services() -> None:
    assert sorted(METHODS) == sorted(
        [
            "Publish", "Subscribe", "GetState", "GetStateChunks",
            "Campaign", "Takeover", "KeepAlive", "Resign", "GetLeader", "Observe",
            "Heartbeat", "Handover", "Switchover", "Status",
        ]
    )  # fmt: skip


async def test_a_valid_client_certificate_is_accepted_and_its_principal_reaches_the_handler(
    pki_dir: Path, serve: Any
) -> None:
    s = await serve(files(pki_dir, "lb1"))
    for name in ("monitor", "alice", "lb2"):
        async with _secure(pki_dir, name, s.address) as ch:
            reply = await call(ch, METHODS["Status"])
            assert (
                reply.reason
                == {"monitor": "reader:monitor", "alice": "operator:alice", "lb2": "director:lb2"}[name]
            )
    assert [p for _, p in s.calls.seen] == [
        Principal(Role.READER, "monitor"),
        Principal(Role.OPERATOR, "alice"),
        Principal(Role.DIRECTOR, "lb2"),
    ]
    assert s.refusals.total == 0


async def test_the_peer_director_may_call_every_method_it_is_allowed_on_the_agent(
    pki_dir: Path, serve: Any
) -> None:
    s = await serve(files(pki_dir, "lb1"))
    async with _secure(pki_dir, "lb2", s.address) as ch:
        await call(ch, METHODS["Heartbeat"], lpb.PeerHeartbeat(node="lb2"))
        await call(ch, METHODS["Handover"], lpb.HandoverRequest(from_node="lb2", term=3))
        await call(ch, METHODS["Campaign"], lpb.CampaignRequest(node="lb2"))
        await call(ch, METHODS["Observe"])
        await call(ch, METHODS["Subscribe"])
    assert [n for n, _ in s.calls.seen] == ["Heartbeat", "Handover", "Campaign", "Observe", "Subscribe"]


@pytest.mark.parametrize("client", ["no certificate", "another CA", "expired"])
async def test_bad_client_certificates_are_refused_on_every_method(
    pki_dir: Path, rogue_dir: Path, serve: Any, client: str
) -> None:
    s = await serve(files(pki_dir, "lb1"))
    ca = files(pki_dir, "lb1").ca.read_bytes()
    if client == "no certificate":
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    elif client == "another CA":  # trusts the server, but its own certificate is the rogue CA's
        rogue = files(rogue_dir, "alice")
        creds = grpc.ssl_channel_credentials(ca, rogue.key.read_bytes(), rogue.cert.read_bytes())
    else:
        old = files(pki_dir, "old")
        creds = grpc.ssl_channel_credentials(ca, old.key.read_bytes(), old.cert.read_bytes())
    async with grpc.aio.secure_channel(s.address, creds) as ch:
        for m in METHODS.values():
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(ch, m, deadline=3.0)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, (m.name, e.value.details())
    assert s.calls.seen == []


async def test_a_client_refuses_a_server_of_another_ca(pki_dir: Path, rogue_dir: Path, serve: Any) -> None:
    s = await serve(files(rogue_dir, "lb1"))
    async with _secure(pki_dir, "alice", s.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(ch, METHODS["Status"], deadline=3.0)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert s.calls.seen == []


async def _denied(ch: grpc.aio.Channel, method: str, request: Any = None) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(ch, METHODS[method], request)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
    return str(e.value.details())


async def test_a_director_is_refused_another_directors_actions(pki_dir: Path, serve: Any) -> None:
    s = await serve(files(pki_dir, "lb2"), peer="lb2")
    async with _secure(pki_dir, "lb1", s.address) as ch:
        assert await _denied(ch, "Campaign", lpb.CampaignRequest(node="lb2", ttl_seconds=3600)) == (
            "director 'lb1' may not call Campaign for 'lb2', only for itself"
        )
        await _denied(ch, "KeepAlive", lpb.KeepAliveRequest(node="lb2", term=4))
        await _denied(ch, "Resign", lpb.ResignRequest(node="lb2", term=4))
        await _denied(ch, "Takeover", lpb.TakeoverRequest(node="lb2", stale_term=4))
        # this agent's peer is lb2: lb1's heartbeats and handovers are forged
        assert "only the configured peer 'lb2'" in await _denied(
            ch, "Heartbeat", lpb.PeerHeartbeat(node="lb1")
        )
        await _denied(ch, "Handover", lpb.HandoverRequest(from_node="lb1"))
        await _denied(ch, "Switchover")
        # its own campaign goes through
        await call(ch, METHODS["Campaign"], lpb.CampaignRequest(node="lb1"))
    assert [n for n, _ in s.calls.seen] == ["Campaign"]
    assert s.refusals.total == 7
    assert s.refusals.counts()[("director", "Campaign")] == 1
    assert s.refusals.counts()[("director", "Heartbeat")] == 1


async def test_readers_and_the_witness_only_read(pki_dir: Path, serve: Any) -> None:
    s = await serve(files(pki_dir, "lb1"))
    for name in ("monitor", "w1"):
        async with _secure(pki_dir, name, s.address) as ch:
            assert await _denied(ch, "Publish") == (
                f"{'reader' if name == 'monitor' else 'witness'} '{name}' may not call Publish "
                "(allowed to: directors, operators)"
            )
            for m in ("Campaign", "Takeover", "KeepAlive", "Resign", "Heartbeat", "Handover", "Switchover"):
                await _denied(ch, m)
            for m in ("Subscribe", "GetState", "GetLeader", "Observe", "Status"):
                await call(ch, METHODS[m])
    assert s.refusals.total == 16
    assert len(s.calls.seen) == 10


async def test_publish_refuses_per_event_with_the_principal_of_the_stream(pki_dir: Path, serve: Any) -> None:
    s = await serve(files(pki_dir, "lb1"))
    own = new_event(RealServerHealth("TCP 203.0.113.10:80", "192.0.2.11:80", True, "lb2"), cluster="c",
                    origin="lb2", actor="lvs-agent")  # fmt: skip
    forged = new_event(RealServerHealth("TCP 203.0.113.10:80", "192.0.2.11:80", False, "lb1"), cluster="c",
                       origin="lb1", actor="lvs-agent")  # fmt: skip
    table = new_event(TableApplied("lb2", 7, "abc"), cluster="c", origin="lb2", actor="lvs-agent")
    drain = new_event(AdminOverride("TCP 203.0.113.10:80", "192.0.2.11:80", AdminAction.DRAIN), cluster="c",
                      origin="lb2", actor="lvs-agent")  # fmt: skip
    req = cpb.PublishRequest(events=[wire.event_to_pb(e) for e in (own, forged, table, drain)])
    async with _secure(pki_dir, "lb2", s.address) as ch:
        (a1, a2, a3, a4) = await call(ch, METHODS["Publish"], req)
    assert (a1.error_code, a3.error_code) == ("", "")
    assert a2.error_code == "PERMISSION_DENIED"
    assert a2.error == "director 'lb2' may not publish health as 'lb1'"
    assert a4.error == "director 'lb2' may not publish AdminOverride (allowed to: operators)"
    assert s.refusals.counts() == {
        ("director", "publish RealServerHealth"): 1,
        ("director", "publish AdminOverride"): 1,
    }


async def test_an_unknown_method_is_refused(pki_dir: Path, serve: Any) -> None:
    s = await serve(files(pki_dir, "lb1"))
    m = METHODS["Status"]
    s.server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Extra", {"Do": grpc.unary_unary_rpc_method_handler(lambda r, c: r, None, None)}
            )
        ]
    )
    async with _secure(pki_dir, "alice", s.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/test.Extra/Do")(b"", timeout=3.0)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not in the access policy" in str(e.value.details())
        await call(ch, m)  # the known methods still work


async def test_without_tls_every_caller_is_unverified(serve: Any) -> None:
    s = await serve(None)
    async with grpc.aio.insecure_channel(s.address) as ch:
        for m in METHODS.values():
            await call(ch, m)
    assert {p for _, p in s.calls.seen} == {UNVERIFIED}
    assert len(s.calls.seen) == len(METHODS)
    assert s.refusals.total == 0
