"""connect, none, on/off and the combined N check against loopback TCP listeners."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from lvs_events.agent.checks import Checker
from lvs_events.agent.checks.probes import plan
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import CheckerHealth
from lvs_events.domain.state import State
from tests.checks.servers import (
    HOST,
    HUNG_TIMEOUT,
    TIMEOUT,
    check,
    check_hung,
    closed_port,
    make_spec,
    tcp_server,
)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def test_checks_connect_healthy() -> None:
    async with tcp_server(_silent) as port:
        r = await check(make_spec(port=port, checktype="connect"))
    assert r.up, r.detail


async def test_checks_connect_answers_wrong() -> None:
    # a connect check has no answer to get wrong: a listener that resets at once still passes,
    # as in ldirectord (the three-way handshake completed); what fails is a refused connection.
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = await check(make_spec(port=port, checktype="connect"))
    assert r.up, r.detail


async def test_checks_connect_hangs() -> None:
    # a full accept queue (backlog 0, one pending connection) leaves the SYN unanswered
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(0)
        port = s.getsockname()[1]
        fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect((HOST, port))
            fillers.append(f)
        try:
            r = await check_hung(make_spec(port=port, checktype="connect", timeout=HUNG_TIMEOUT))
        finally:
            for f in fillers:
                f.close()
    assert not r.up
    assert r.detail == f"connect: timeout after {HUNG_TIMEOUT:g}s"


async def test_checks_connect_port_closed() -> None:
    r = await check(make_spec(port=closed_port(), checktype="connect"))
    assert not r.up
    assert "ConnectionRefused" in r.detail


async def test_checks_none_is_up_without_contact() -> None:
    r = await check(make_spec("none", closed_port()))
    assert r.up


def test_checks_plan_timeouts() -> None:
    spec = make_spec("http", 80, checktype="3", checktimeout=2.0, negotiatetimeout=7.0)
    assert spec.checktype == "combined"
    assert spec.connects == 3
    assert plan(spec, False)[1:] == (2.0, "connect")
    assert plan(spec, True)[1:] == (7.0, "negotiate")
    assert plan(make_spec("ldap", 389, checktimeout=2.0, negotiatetimeout=7.0), False)[1] == 2.0
    assert plan(make_spec(port=5, checktype="ping", checktimeout=2.0, checkcount=3), False)[1] == 6.0


@pytest.mark.parametrize(("ct", "nt", "expect"), [
    (None, None, (5.0, 30.0)),
    (3.0, None, (3.0, 3.0)),
    (None, 8.0, (8.0, 8.0)),
    (3.0, 8.0, (3.0, 8.0)),
])  # fmt: skip
def test_checks_timeouts_are_mutual_defaults(
    ct: float | None, nt: float | None, expect: tuple[float, float]
) -> None:
    from lvs_events.agent.checks import spec_for

    v = VirtualService(
        Protocol.TCP, "10.0.0.1", 80, reals=(RealServer("10.0.0.2", 80),),
        check=CheckSettings(checktimeout=ct, negotiatetimeout=nt),
    )  # fmt: skip
    s = spec_for(v, v.reals[0], GlobalSettings())
    assert (s.checktimeout, s.negotiatetimeout) == expect


def test_checks_checkport_and_service_port() -> None:
    from lvs_events.agent.checks import spec_for

    v = VirtualService(Protocol.FWM, None, 0, fwmark=7, reals=(RealServer("10.0.0.2", 0),),
                       check=CheckSettings(service="https"))  # fmt: skip
    s = spec_for(v, v.reals[0], GlobalSettings())
    assert s.port == 443
    assert s.virtual_address == "7"
    v2 = VirtualService(Protocol.TCP, "10.0.0.1", 80, reals=(RealServer("10.0.0.2", 80),),
                        check=CheckSettings(service="http", checkport=8080))  # fmt: skip
    assert spec_for(v2, v2.reals[0], GlobalSettings()).port == 8080


# -- the Checker's own connect path (one epoll set, no task or timer per check) ---------------


def _connect_service(ports: list[int], timeout: float, vport: int = 80) -> VirtualService:
    return VirtualService(
        Protocol.TCP, "10.0.0.1", vport, reals=tuple(RealServer(HOST, p) for p in ports),
        check=CheckSettings(checktype="connect", checktimeout=timeout),
    )  # fmt: skip


def _connect_state(*services: VirtualService) -> State:
    return State(config=Config(GlobalSettings(checkinterval=0.05), services))


class _Reports:
    def __init__(self) -> None:
        self.items: list[tuple[str, bool, str]] = []
        self.checker_health: list[CheckerHealth] = []

    def report(
        self, virtual: str, real: str, up: bool, *, checktype: str, detail: str = "", latency_ms: float = 0.0
    ) -> bool:
        self.items.append((real, up, detail))
        return True

    def report_checker(self, health: CheckerHealth) -> bool:
        self.checker_health.append(health)
        return True


async def _until(cond: object, within: float = 10.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 -- polling test state
            await asyncio.sleep(0.005)


async def test_checks_checker_connect_up_refused_and_hung() -> None:
    reports = _Reports()
    checker = Checker("n1")
    with socket.socket() as up, socket.socket() as hung:
        up.bind((HOST, 0))
        up.listen(64)  # never accepts: the handshake completes in the kernel, as ldirectord's check
        hung.bind((HOST, 0))
        hung.listen(0)
        fillers = []
        for _ in range(4):  # fill the accept queue: further SYNs go unanswered
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(hung.getsockname())
            fillers.append(f)
        ports = [up.getsockname()[1], closed_port(), hung.getsockname()[1]]
        # the servers that answer (accept, refuse) get a timeout no loaded machine runs out of
        answering = _connect_service(ports[:2], TIMEOUT)
        checker.on_state(_connect_state(answering, _connect_service(ports[2:], 0.2, vport=81)))
        task = asyncio.create_task(checker.run(reports))
        try:
            await _until(lambda: len(reports.items) == 3)
            await _until(lambda: checker.stats.finished >= 12)  # several rounds: sockets are reused fds
            assert checker.inflight <= 3
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for f in fillers:
                f.close()
    by_port = {int(r.rsplit(":", 1)[1]): (u, d) for r, u, d in reports.items}
    assert by_port[ports[0]] == (True, "connected")
    assert by_port[ports[1]][0] is False
    assert "ECONNREFUSED" in by_port[ports[1]][1]
    assert by_port[ports[2]] == (False, "connect: timeout after 0.2s")
    assert checker.stats.timeouts >= 1
    assert checker.inflight == 0  # the run's end cancelled what was in flight


async def test_checks_checker_connect_removed_target_is_cancelled() -> None:
    reports = _Reports()
    checker = Checker("n1")
    with socket.socket() as hung:
        hung.bind((HOST, 0))
        hung.listen(0)
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(hung.getsockname())
        with filler:
            checker.on_state(_connect_state(_connect_service([hung.getsockname()[1]], 5.0)))
            task = asyncio.create_task(checker.run(reports))
            try:
                await _until(lambda: checker.inflight == 1)
                checker.on_state(State(config=Config(GlobalSettings(checkinterval=0.05), ())))
                assert checker.inflight == 0
                await asyncio.sleep(0.1)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert reports.items == []
    assert checker.stats.finished == 0
