"""fallbackcommand: transitions (pure) and the runner executing a real script."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from lvs_events.agent.commands import NO_CONSENT, Allowlist, CommandGate
from lvs_events.agent.fallback import FallbackRunner
from lvs_events.domain.config import Config, GlobalSettings, Protocol, RealServer, VirtualService
from lvs_events.domain.events import ConfigApplied, Event, Payload, RealServerHealth
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold

VIP = "TCP 203.0.113.10:80"


def _state(cmd: str) -> State:
    v = VirtualService(
        Protocol.TCP, "203.0.113.10", 80, reals=(RealServer("192.0.2.11", 80, weight=5),), fallbackcommand=cmd
    )
    cfg = Config(GlobalSettings(fallback=RealServer("127.0.0.1", 0)), (v,))
    return fold(State(), Event("e1", "c", "n", "a", "", 1.0, ConfigApplied(cfg), revision=1))


def _then(s: State, payload: Payload) -> State:
    return fold(s, Event(f"e{s.revision + 1}", "c", "n", "a", "", 1.0, payload, revision=s.revision + 1))


def test_global_fallback_without_port_takes_the_virtual_port() -> None:
    svc = render(_state("/bin/true")).service(VIP)
    assert svc is not None
    assert [d.key for d in svc.dests] == ["127.0.0.1:80"]


def test_transitions_start_then_stop() -> None:
    r = FallbackRunner(NO_CONSENT)  # transitions are decided whatever the consent
    s = _state("/usr/local/bin/sorry")
    [start] = r.transitions(s, render(s))
    assert start.args == ("start", "203.0.113.10:80", "tcp")
    assert r.transitions(s, render(s)) == []
    s = _then(s, RealServerHealth(VIP, "192.0.2.11:80", True, "n"))
    [stop] = r.transitions(s, render(s))
    assert stop.args[0] == "stop"


async def test_runner_runs_the_script_with_ldirectords_arguments(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    script = tmp_path / "sorry.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    r = FallbackRunner(CommandGate("lb1", Allowlist(frozenset({(str(script),)}))), timeout=5)
    task = asyncio.create_task(r.run())
    try:
        s = _state(str(script))
        r.on_applied(s, render(s))
        s = _then(s, RealServerHealth(VIP, "192.0.2.11:80", True, "n"))
        r.on_applied(s, render(s))
        async with asyncio.timeout(10):
            while len(r.ran) < 2:  # noqa: ASYNC110 -- polling a plain list the runner appends to
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert out.read_text().splitlines() == ["start 203.0.113.10:80 tcp", "stop 203.0.113.10:80 tcp"]
    assert os.access(script, os.X_OK)


async def test_the_per_event_path_looks_at_the_changed_services_only(tmp_path: Path) -> None:
    from lvs_events.agent.dataplane.memory import MemoryDataplane
    from lvs_events.agent.runtime import Agent, AgentSettings
    from lvs_events.domain.table import Table

    reals = (RealServer("192.0.2.11", 80, weight=5),)
    virtuals = tuple(
        VirtualService(Protocol.TCP, f"203.0.113.{10 + i}", 80, reals=reals, fallbackcommand="/bin/true")
        for i in range(3)
    )
    cfg = Config(GlobalSettings(fallback=RealServer("127.0.0.1", 0)), virtuals)
    settings = AgentSettings("lb1", "test", ("127.0.0.1:1",), tmp_path, health_checks=False)
    agent = Agent(settings, MemoryDataplane())
    seen: list[list[str]] = []
    on_applied = agent.fallbacks.on_applied

    def spy(state: State, table: Table) -> None:
        seen.append([s.key for s in table.services])
        on_applied(state, table)

    agent.fallbacks.on_applied = spy  # type: ignore[method-assign]
    agent.core.step(Event("e1", "c", "n", "a", "", 1.0, ConfigApplied(cfg), revision=1))
    for rev in (1, 2):
        if rev == 2:  # the second virtual's real server comes up: its fallback stops
            up = RealServerHealth(virtuals[1].key, "192.0.2.11:80", True, "lb1", "connect")
            agent.core.step(Event("e2", "c", "lb1", "a", "", 2.0, up, revision=2))
        ready = agent.core.ready(float(rev), caught_up=True)
        assert ready is not None
        await agent._execute(ready, float(rev))
    assert sorted(seen[0]) == sorted(v.key for v in virtuals)  # the whole table first
    assert seen[1] == [virtuals[1].key]  # then just the service that changed
    queued = [(fc.virtual, fc.args[0]) for fc in agent.fallbacks.queue._queue]  # type: ignore[attr-defined]
    assert queued == [*((v.key, "start") for v in virtuals), (virtuals[1].key, "stop")]
    await agent.client.close()
