"""A PKI made once per session with :mod:`lvs_events.security.pki`, a second unrelated CA, an
expired certificate, and a real grpc.aio server serving every method of the three services
behind :class:`~lvs_events.security.interceptor.AuthInterceptor`."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from lvs_events import wire
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.security import pki
from lvs_events.security.interceptor import AuthInterceptor, Refusals, current_principal
from lvs_events.security.policy import publish_action
from lvs_events.security.principal import Principal, Role
from lvs_events.security.tls import TlsFiles, server_credentials
from tests.support.pki import make_pki

PEER = "lb2"  # the configured peer of the test Peer service


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    identities = [
        pki.Identity("lb1", Role.DIRECTOR, ("192.0.2.201", "lb1.example.net")),
        pki.Identity("lb2", Role.DIRECTOR, ("192.0.2.202",)),
        pki.Identity("w1", Role.WITNESS, ("192.0.2.203",)),
        pki.Identity("alice", Role.OPERATOR),
        pki.Identity("monitor", Role.READER),
    ]
    return make_pki(tmp_path_factory.mktemp("pki"), identities, expired="old")


@pytest.fixture(scope="session")
def rogue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, with a director 'lb1' and an operator 'alice' of its own."""
    d = tmp_path_factory.mktemp("rogue")
    pki.init(d, [pki.Identity("lb1", Role.DIRECTOR), pki.Identity("alice", Role.OPERATOR)])
    return d


@pytest.fixture
def server_dir(pki_dir: Path, tmp_path: Path) -> Path:
    """A copy of the PKI the test may rotate files in."""
    d = tmp_path / "server"
    shutil.copytree(pki_dir, d)
    return d


def every_method() -> Iterator[tuple[ServiceDescriptor, MethodDescriptor]]:
    for module in (cpb, lpb):
        for service in module.DESCRIPTOR.services_by_name.values():
            yield from ((service, m) for m in service.methods)


def message_class(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


@dataclass
class Calls:
    """What the test servicer saw: (method name, principal) per admitted call."""

    seen: list[tuple[str, Principal]] = field(default_factory=list)


def _handlers(calls: Calls, refusals: Refusals) -> list[grpc.GenericRpcHandler[Any, Any]]:
    out: list[grpc.GenericRpcHandler[Any, Any]] = []
    for service, m in every_method():
        req_cls, resp_cls = message_class(m.input_type), message_class(m.output_type)
        handler: Callable[..., Any]
        name = m.name
        kind = (m.client_streaming, m.server_streaming)
        if name == "Publish":

            async def publish(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
                who = current_principal()
                calls.seen.append(("Publish", who))
                async for req in requests:
                    for ev in req.events:
                        d = refusals.check(who, publish_action(wire.event_from_pb(ev)))
                        yield cpb.PublishAck(
                            event_id=ev.event_id,
                            error_code="" if d.allowed else "PERMISSION_DENIED",
                            error="" if d.allowed else d.reason,
                        )

            out.append(
                grpc.method_handlers_generic_handler(
                    service.full_name,
                    {
                        name: grpc.stream_stream_rpc_method_handler(
                            publish, req_cls.FromString, resp_cls.SerializeToString
                        )
                    },
                )
            )
            continue
        if kind == (False, False):

            async def unary(request: Any, context: Any, name: str = name, resp_cls: Any = resp_cls) -> Any:
                who = current_principal()
                calls.seen.append((name, who))
                resp = resp_cls()
                if name == "Status":
                    resp.reason = f"{who.role.value}:{who.name}"
                return resp

            handler = grpc.unary_unary_rpc_method_handler(
                unary, req_cls.FromString, resp_cls.SerializeToString
            )
        elif name == "Subscribe":  # a coroutine that writes through the context

            async def writes(request: Any, context: Any, name: str = name, resp_cls: Any = resp_cls) -> None:
                calls.seen.append((name, current_principal()))
                await context.write(resp_cls())

            handler = grpc.unary_stream_rpc_method_handler(
                writes, req_cls.FromString, resp_cls.SerializeToString
            )
        else:  # an async generator

            async def yields(
                request: Any, context: Any, name: str = name, resp_cls: Any = resp_cls
            ) -> AsyncIterator[Any]:
                calls.seen.append((name, current_principal()))
                yield resp_cls()

            handler = grpc.unary_stream_rpc_method_handler(
                yields, req_cls.FromString, resp_cls.SerializeToString
            )
        out.append(grpc.method_handlers_generic_handler(service.full_name, {name: handler}))
    return out


@dataclass
class Served:
    address: str
    calls: Calls
    refusals: Refusals
    server: grpc.aio.Server


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``await serve(files_or_None)``: a server on 127.0.0.1 (TLS when given files)."""
    servers: list[grpc.aio.Server] = []

    async def start(tls: TlsFiles | None, *, peer: str = PEER) -> Served:
        calls, refusals = Calls(), Refusals()
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(verified=tls is not None, peer=peer, refusals=refusals)]
        )
        server.add_generic_rpc_handlers(_handlers(calls, refusals))
        if tls is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
        await server.start()
        servers.append(server)
        return Served(f"127.0.0.1:{port}", calls, refusals, server)

    yield start
    for s in servers:
        await s.stop(None)


async def call(
    channel: grpc.aio.Channel, m: MethodDescriptor, request: Any = None, *, deadline: float = 5.0
) -> Any:
    """Call method ``m`` with ``request`` (default: an empty one); the reply or the replies."""
    service = m.containing_service.full_name
    path = f"/{service}/{m.name}"
    req_cls, resp_cls = message_class(m.input_type), message_class(m.output_type)
    req = request if request is not None else req_cls()
    ser, de = req_cls.SerializeToString, resp_cls.FromString
    if m.client_streaming:

        async def one() -> AsyncIterator[Any]:
            yield req

        return [r async for r in channel.stream_stream(path, ser, de)(one(), timeout=deadline)]
    if m.server_streaming:
        return [r async for r in channel.unary_stream(path, ser, de)(req, timeout=deadline)]
    return await channel.unary_unary(path, ser, de)(req, timeout=deadline)
