"""Check credentials are served to directors and operators only: the coordinator's own servicer
behind AuthInterceptor on a TLS port, called with a director's, an operator's, a reader's and the
witness's certificates (issue #12)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from lvs_events.coordinator.server import RunningCoordinator
from lvs_events.domain import codec
from lvs_events.domain.redact import REDACTED
from lvs_events.domain.state import State
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.security import pki
from lvs_events.security.interceptor import AuthInterceptor
from lvs_events.security.principal import Role
from lvs_events.security.tls import TlsFiles, server_credentials
from tests.coordinator.conftest import StartCoordinator
from tests.coordinator.helpers import config_event, health_event, publish_all

SEE = ("lb1", "alice")  # a director, an operator
HIDDEN = ("monitor", "w1")  # a reader, the witness


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init(
        d,
        [
            pki.Identity("lb1", Role.DIRECTOR),
            pki.Identity("w1", Role.WITNESS),
            pki.Identity("alice", Role.OPERATOR),
            pki.Identity("monitor", Role.READER),
        ],
    )
    return d


def _with_credentials(event_id: str) -> Any:
    ev = config_event(event_id)
    check = ev.config_applied.config.virtuals[0].check
    check.login, check.passwd, check.secret = "probe", "s3cret", "shared"
    ev.config_applied.digest = "digest-of-the-source"
    return ev


@pytest.fixture
async def tls_stub(pki_dir: Path) -> AsyncIterator[Callable[[RunningCoordinator, str], Any]]:
    """``tls_stub(coordinator, name)``: a stub calling ``coordinator``'s servicer over TLS as ``name``."""
    servers: dict[int, tuple[grpc.aio.Server, int]] = {}
    channels: list[grpc.aio.Channel] = []
    ca = (pki_dir / pki.CA_CERT).read_bytes()

    async def stub(c: RunningCoordinator, name: str) -> Any:
        if id(c) not in servers:
            server = grpc.aio.server(interceptors=[AuthInterceptor(verified=True)])
            cpb_grpc.add_CoordinatorServicer_to_server(c.service, server)
            creds = server_credentials(TlsFiles(pki_dir / pki.CA_CERT, *_pair(pki_dir, "lb1")))
            port = server.add_secure_port("127.0.0.1:0", creds)
            await server.start()
            servers[id(c)] = (server, port)
        _, port = servers[id(c)]
        cert, key = _pair(pki_dir, name)
        creds = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
        ch = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)
        channels.append(ch)
        return cpb_grpc.CoordinatorStub(ch)

    yield stub
    for ch in channels:
        await ch.close(None)
    for server, _ in servers.values():
        await server.stop(None)


def _pair(d: Path, name: str) -> tuple[Path, Path]:
    return pki.cert_path(d, name), pki.key_path(d, name)


def _check_of(state_json: bytes) -> tuple[str | None, str | None, str | None]:
    state = codec.loads(State, state_json)
    assert state.config is not None
    c = state.config.virtuals[0].check
    return c.login, c.passwd, c.secret


async def test_readers_get_events_and_states_without_credentials(
    coordinator: RunningCoordinator, stub: Any, tls_stub: Callable[..., Any]
) -> None:
    await publish_all(stub, [health_event("h1"), _with_credentials("cfg"), health_event("h2")])
    views = {}
    for name in SEE + HIDDEN:
        s = await tls_stub(coordinator, name)
        events = [r.event async for r in s.Subscribe(cpb.SubscribeRequest(from_revision=1), timeout=10)]
        views[name] = (events, await s.GetState(cpb.GetStateRequest(), timeout=10))
    plain = ("probe", "s3cret", "shared")
    for name, (events, state) in views.items():
        assert [e.event_id for e in events] == ["h1", "cfg", "h2"]
        check = events[1].config_applied.config.virtuals[0].check
        expected = plain if name in SEE else (REDACTED,) * 3
        assert (check.login, check.passwd, check.secret) == expected, name
        assert _check_of(state.state) == expected, name
        # everything else is the same for everyone
        assert events[1].config_applied.digest == "digest-of-the-source"
        assert state.table_digest == views["lb1"][1].table_digest
        assert state.table == views["lb1"][1].table
        assert events[0] == views["lb1"][0][0]
        assert events[1].config_applied.config.virtuals[0].reals == (
            views["lb1"][0][1].config_applied.config.virtuals[0].reals
        )


async def test_a_snapshot_sent_to_a_reader_is_redacted(
    start_coordinator: StartCoordinator, tls_stub: Callable[..., Any]
) -> None:
    async with (
        start_coordinator(retention=2, snapshot_every=1_000_000) as c,
        grpc.aio.insecure_channel(c.address) as channel,
    ):
        plain_stub = cpb_grpc.CoordinatorStub(channel)
        await publish_all(plain_stub, [_with_credentials("cfg")] + [health_event(f"e{i}") for i in range(9)])
        assert await c.states.snapshot_once() is not None
        request = cpb.SubscribeRequest(from_revision=1, snapshot_if_compacted=True)
        for name, expected in (("monitor", (REDACTED,) * 3), ("lb1", ("probe", "s3cret", "shared"))):
            s = await tls_stub(c, name)
            items = [r async for r in s.Subscribe(request, timeout=10)]
            assert items[0].WhichOneof("item") == "snapshot"
            assert _check_of(items[0].snapshot.state) == expected
