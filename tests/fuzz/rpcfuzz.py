"""Fuzzing at the edge: generated and mutated messages for every RPC of every service, sent to a
live coordinator and a live agent's Peer service (real processes, real etcd).

The messages come from hypothesis strategies built from the protobuf descriptors (so every field
of every request type, and every new one, is covered without a hand-written list), in two kinds:

* **structured**: a message of the method's request type with fields drawn from pools of hostile
  values (empty, huge, control characters, NaN, year 9999, negative, unknown enum numbers);
* **mutated**: a valid request's bytes with bytes flipped, inserted, deleted or cut, sent raw
  (identity serializers), so the server's own parsing is exercised.

Each call has a deadline; server streams are read for a short while and cancelled. The verdict
(:class:`Tally`): a call that ended in ``UNKNOWN``/``INTERNAL`` (an exception escaped a handler)
or a server process that died is a crash; a Publish stream that closed OK with fewer acks than
events sent lost a refusal; afterwards every event in the log must pass the domain's validation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor as pbd
from google.protobuf import message as pbm
from google.protobuf import message_factory
from hypothesis import strategies as st

from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.pb.v1 import leadership_pb2 as lpb
from tests.support.etcd import EtcdCluster, free_ports

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "fuzz"

# Outcomes a hostile request may get. Anything else is a finding.
ACCEPTABLE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # our own deadline on a call the server may hold open
        grpc.StatusCode.CANCELLED,  # our own cancel of a server stream after reading a while
        grpc.StatusCode.UNAVAILABLE,  # e.g. etcd busy; the server is checked alive separately
    }
)
CRASHES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED})

# --- hostile value pools -------------------------------------------------------------------------

_STRINGS = [
    "",
    "master",
    "slave",
    "lvs-a",
    CLUSTER,
    "default",
    "TCP 203.0.113.10:80",
    "UDP 203.0.113.10:53",
    "FWM 5",
    "192.0.2.11:80",
    "[2001:db8::1]:80",
    "203.0.113.1O:80",
    "\x1b[31mred\x1b[0m\r\n\x07",
    "\x00",
    "é" * 40,
    "x" * 300,
    "../../etc/passwd",
    "/bin/sh -c 'touch /tmp/pwned'",
    "01HZZZZZZZZZZZZZZZZZZZZZZZ",
]
_BIG = ["y" * 70_000]  # beyond any per-field limit, well below the transport's
_INTS = [0, 1, -1, 2, 7, 63, 64, 255, 65535, 65536, 2**31 - 1, -(2**31), 2**32, 2**53, 2**63 - 1]
_UINTS = [0, 1, 2, 63, 64, 65535, 65536, 2**31, 2**32 - 1, 2**53, 2**64 - 1]
_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-9, 1e300, -1e300, math.inf, -math.inf, math.nan]
_FLOATS += [time.time(), 253402300799.0]  # now, and the last second of the year 9999

_T = pbd.FieldDescriptor


def _scalar(f: pbd.FieldDescriptor) -> st.SearchStrategy[Any]:  # noqa: PLR0911 -- one per wire type
    t = f.type
    if t == _T.TYPE_STRING:
        return st.one_of(st.sampled_from(_STRINGS), st.text(max_size=40), st.sampled_from(_BIG))
    if t == _T.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return st.one_of(st.sampled_from(_FLOATS), st.floats(allow_nan=True, allow_infinity=True, width=32))
    if t == _T.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.sampled_from([-1, 99, 2**31 - 1]))
    if t in (_T.TYPE_UINT32, _T.TYPE_FIXED32):
        return st.sampled_from([u for u in _UINTS if u < 2**32]) | st.integers(0, 2**32 - 1)
    if t in (_T.TYPE_UINT64, _T.TYPE_FIXED64):
        return st.sampled_from(_UINTS) | st.integers(0, 2**64 - 1)
    if t in (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32):
        return st.sampled_from([i for i in _INTS if -(2**31) <= i < 2**31]) | st.integers(-(2**31), 2**31 - 1)
    return st.sampled_from(_INTS) | st.integers(-(2**63), 2**63 - 1)


def _assign(msg: pbm.Message, f: pbd.FieldDescriptor, value: Any) -> None:
    if f.type == _T.TYPE_MESSAGE:
        if f.is_repeated:
            if f.message_type.GetOptions().map_entry:
                return  # no maps in our protos; skipped rather than guessed
            for v in value:
                getattr(msg, f.name).add().CopyFrom(v)
        else:
            getattr(msg, f.name).CopyFrom(value)
    elif f.is_repeated:
        getattr(msg, f.name).extend(value)
    else:
        setattr(msg, f.name, value)


_STRATEGIES: dict[tuple[str, int], st.SearchStrategy[pbm.Message]] = {}


def message_strategy(desc: pbd.Descriptor, depth: int = 0) -> st.SearchStrategy[pbm.Message]:
    """Messages of type ``desc``: each field set or not, one member per oneof, bounded depth."""
    key = (desc.full_name, depth)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _message_strategy(desc, depth)
    return _STRATEGIES[key]


def _message_strategy(desc: pbd.Descriptor, depth: int) -> st.SearchStrategy[pbm.Message]:
    cls = message_factory.GetMessageClass(desc)
    field_strategies: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.type == _T.TYPE_MESSAGE:
            if depth >= 4:
                continue
            inner = st.deferred(lambda d=f.message_type, k=depth: message_strategy(d, k + 1))
            value = st.lists(inner, max_size=3) if f.is_repeated else inner
        else:
            value = st.lists(_scalar(f), max_size=4) if f.is_repeated else _scalar(f)
        field_strategies[f.name] = st.none() | value

    oneofs = {o.name: [f.name for f in o.fields] for o in desc.oneofs}

    @st.composite
    def build(draw: st.DrawFn) -> pbm.Message:
        msg = cls()
        chosen_in_oneof = {name: draw(st.sampled_from([None, *members])) for name, members in oneofs.items()}
        allowed_oneof_members = {m for m in chosen_in_oneof.values() if m is not None}
        all_oneof_members = {m for members in oneofs.values() for m in members}
        for f in desc.fields:
            if f.name not in field_strategies:
                continue
            if f.name in all_oneof_members and f.name not in allowed_oneof_members:
                continue
            value = draw(field_strategies[f.name])
            if value is not None:
                with contextlib.suppress(ValueError, TypeError, OverflowError):
                    _assign(msg, f, value)
        return msg

    return build()


# --- valid seeds for the mutated kind -------------------------------------------------------------


def valid_event(node: str = "lvs-a") -> pb.Event:
    return pb.Event(
        event_id=os.urandom(8).hex(),
        cluster=CLUSTER,
        origin=node,
        actor="lvs-agent",
        reason="check",
        wall_time=time.time(),
        real_server_health=pb.RealServerHealth(
            virtual="TCP 203.0.113.10:80", real="192.0.2.11:80", up=True, observer=node
        ),
    )


def _seed_request(desc: pbd.Descriptor) -> pbm.Message:
    """A plausible, mostly valid request of each type (what the mutations start from)."""
    cls = message_factory.GetMessageClass(desc)
    msg = cls()
    if desc.full_name == cpb.PublishRequest.DESCRIPTOR.full_name:
        msg.events.add().CopyFrom(valid_event())  # type: ignore[attr-defined]
        return msg
    for f in desc.fields:
        if f.is_repeated or f.type == _T.TYPE_MESSAGE:
            continue
        if f.name == "cluster":
            setattr(msg, f.name, CLUSTER)
        elif f.type == _T.TYPE_STRING:
            setattr(msg, f.name, "master")
        elif f.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            setattr(msg, f.name, 1.0)
        elif f.type == _T.TYPE_BOOL:
            setattr(msg, f.name, True)
        elif f.type != _T.TYPE_ENUM:
            setattr(msg, f.name, 1)
    return msg


@st.composite
def mutated_bytes(draw: st.DrawFn, desc: pbd.Descriptor) -> bytes:
    data = bytearray(_seed_request(desc).SerializeToString())
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "varint"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[min(pos, len(data) - 1)]
        elif op == "cut":
            del data[pos:]
        elif op == "varint":  # an over-long length or tag: parsers must refuse, not loop or allocate
            data[pos:pos] = b"\xff" * draw(st.integers(1, 11))
    return bytes(data)


# --- the RPC table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    target: str  # "coordinator" or "peer"
    path: str  # /package.Service/Method
    method: pbd.MethodDescriptor

    @property
    def request(self) -> pbd.Descriptor:
        return self.method.input_type


def rpcs() -> list[Rpc]:
    """Every method of every service: the coordinator's (log, election) and the agents' Peer."""
    out = []
    for file_desc, target_of in (
        (cpb.DESCRIPTOR, lambda _s: "coordinator"),
        (lpb.DESCRIPTOR, lambda s: "peer" if s == "Peer" else "coordinator"),
    ):
        for service in file_desc.services_by_name.values():
            for m in service.methods:
                out.append(Rpc(target_of(service.name), f"/{service.full_name}/{m.name}", m))
    return out


@dataclass
class Case:
    rpc: Rpc
    requests: list[bytes]  # serialized (a structured message) or raw mutated bytes
    mutated: bool


def case_strategy(table: list[Rpc]) -> st.SearchStrategy[Case]:
    @st.composite
    def build(draw: st.DrawFn) -> Case:
        rpc = draw(st.sampled_from(table))
        mutated = draw(st.booleans())
        count = draw(st.integers(1, 3)) if rpc.method.client_streaming else 1
        reqs = []
        for _ in range(count):
            if mutated:
                reqs.append(draw(mutated_bytes(rpc.request)))
            else:
                reqs.append(draw(message_strategy(rpc.request)).SerializeToString())
        return Case(rpc, reqs, mutated)

    return build()


# --- sending ---------------------------------------------------------------------------------------


def _identity(b: bytes) -> bytes:
    return b


@dataclass
class Tally:
    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)

    def record(self, case: Case, code: grpc.StatusCode, detail: str, note: str = "") -> None:
        self.sent += 1
        self.codes[code.name] += 1
        if code in CRASHES or code not in ACCEPTABLE:
            kind = "mutated" if case.mutated else "structured"
            self.findings.append(f"{case.rpc.path} {kind}: {code.name} {detail}")
        if note:
            self.findings.append(f"{case.rpc.path}: {note}")


async def send(channel: grpc.aio.Channel, case: Case, tally: Tally, deadline: float = 2.0) -> None:
    m = case.rpc.method
    path = case.rpc.path
    code, detail, note = grpc.StatusCode.OK, "", ""
    try:
        if not m.client_streaming and not m.server_streaming:
            await channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)(
                case.requests[0], timeout=deadline
            )
        elif not m.client_streaming:
            call = channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)(
                case.requests[0], timeout=deadline
            )
            await _read_some(call)
        else:
            call = channel.stream_stream(path, request_serializer=_identity, response_deserializer=_identity)(
                iter(case.requests), timeout=deadline
            )
            acks = [cpb.PublishAck.FromString(r) async for r in call]
            note = _publish_note(case, acks)
    except grpc.aio.AioRpcError as e:
        code, detail = e.code(), (e.details() or "")[:200]
    tally.record(case, code, detail, note)


async def _read_some(call: Any, limit: int = 20, within: float = 0.3) -> None:
    """Read a server stream for a short while, then cancel it (Subscribe and Observe follow)."""

    async def reader() -> None:
        n = 0
        async for _ in call:
            n += 1
            if n >= limit:
                break

    try:
        await asyncio.wait_for(reader(), within)
    except TimeoutError:
        call.cancel()
        metadata = grpc.aio.Metadata()
        raise grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, metadata, metadata) from None
    call.cancel()


def _publish_note(case: Case, acks: list[cpb.PublishAck]) -> str:
    """A Publish stream that ended OK must have answered every event it was sent, refusals
    included (an error ack, never a silently closed stream)."""
    sent = 0
    for raw in case.requests:
        try:
            req = cpb.PublishRequest.FromString(raw)
        except pbm.DecodeError:
            return ""  # undecodable: the status code (INVALID_ARGUMENT expected) is the verdict
        sent += max(1, len(req.events))  # a request without events is refused with one error ack
    got = sum(len(a.acks) if a.acks else 1 for a in acks)
    return "" if got >= sent else f"stream ended OK with {got} acks for {sent} events"


# --- the live processes ------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Stack:
    etcd: EtcdCluster
    coordinator: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]
    coordinator_address: str
    peer_address: str
    workdir: Path

    def alive(self) -> dict[str, bool]:
        return {"coordinator": self.coordinator.poll() is None, "agent": self.agent.poll() is None}

    def log_tail(self, name: str, n: int = 40) -> str:
        p = self.workdir / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""


@contextlib.contextmanager
def live_stack(etcd_binary: str) -> Iterator[Stack]:
    """etcd, one coordinator and one agent with its Peer service, all on loopback."""
    work = Path(tempfile.mkdtemp(prefix="lvs-fuzz-"))
    coord_port, peer_port, other_peer = free_ports(3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with EtcdCluster(size=1, etcd_binary=etcd_binary) as etcd:
        coord_addr = f"127.0.0.1:{coord_port}"
        with (work / "coordinator.log").open("ab") as logf:
            coord = subprocess.Popen(
                [sys.executable, "-m", "lvs_events.coordinator.main", "--listen", coord_addr,
                 "--etcd-endpoints", ",".join(etcd.endpoints), "--cluster", CLUSTER,
                 "--grace", "2", "--log-format", "json", "--log-level", "WARNING"],
                stdout=logf, stderr=logf, cwd=REPO, env=env,
            )  # fmt: skip
        peer_addr = f"127.0.0.1:{peer_port}"
        with (work / "agent.log").open("ab") as logf:
            agent = subprocess.Popen(
                [sys.executable, "-m", "lvs_events.agent.main", "--node", "master", "--cluster", CLUSTER,
                 "--coordinators", coord_addr, "--state-dir", str(work / "state"), "--no-health-checks",
                 "--log-format", "json", "--log-level", "WARNING", "--peer", f"127.0.0.1:{other_peer}",
                 "--listen-peer", peer_addr, "--vip-mode", "external", "--vip", "198.51.100.10"],
                stdout=logf, stderr=logf, cwd=REPO, env=env,
            )  # fmt: skip
        stack = Stack(etcd, coord, agent, coord_addr, peer_addr, work)
        try:
            _wait_serving(stack)
            yield stack
        finally:
            for p in (agent, coord):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in (agent, coord):
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _wait_serving(stack: Stack, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    for address in (stack.coordinator_address, stack.peer_address):
        host, port = address.rsplit(":", 1)
        while True:
            if not all(stack.alive().values()):
                logs = f"{stack.log_tail('coordinator')}\n{stack.log_tail('agent')}"
                raise RuntimeError(f"a process died at start:\n{logs}")
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} not serving within {within}s")
            time.sleep(0.1)


async def read_whole_log(address: str) -> list[pb.Event]:
    """Every event of the log, read over Subscribe from revision 1 without following."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_stream(
            "/lvs_events.v1.Coordinator/Subscribe",
            request_serializer=cpb.SubscribeRequest.SerializeToString,
            response_deserializer=cpb.SubscribeResponse.FromString,
        )(cpb.SubscribeRequest(from_revision=1, follow=False), timeout=60)
        return [r.event async for r in call if r.WhichOneof("item") == "event"]


async def run_cases(stack: Stack, cases: list[Case], tally: Tally, *, concurrency: int = 32) -> None:
    """Send ``cases``, up to ``concurrency`` calls in flight at once (hostile clients do not wait
    for each other; a server stream that stays open costs its reading window, not the run's)."""
    async with (
        grpc.aio.insecure_channel(stack.coordinator_address) as coord,
        grpc.aio.insecure_channel(stack.peer_address) as peer,
    ):
        channels: dict[str, grpc.aio.Channel] = {"coordinator": coord, "peer": peer}
        slots = asyncio.Semaphore(concurrency)

        async def one(case: Case) -> None:
            try:
                await send(channels[case.rpc.target], case, tally)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tg:
            for case in cases:
                await slots.acquire()  # taken here, given back by the task: at most `concurrency` alive
                tg.create_task(one(case))
