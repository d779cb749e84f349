"""Remote code execution through the log, refused: real etcd, a real coordinator, the agent as a
``python -m lvs_events.agent.main`` subprocess with its health checks on, the CLI as a subprocess.

A client publishes a ``ConfigApplied`` whose external check and ``fallbackcommand`` would create a
file as root. The agent runs neither (the files never appear); the check is DOWN with the reason
as its evidence, one ``CommandRefused`` per command and configuration revision is in the log, and
``lvs-events tail`` shows it. The commands of the agent's own ``--config-json`` file and of its
``--allow-command`` list do run.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lvs_events.client.events import new_event
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import CommandRefused, ConfigApplied, Event, RealServerHealth
from tests.agent.cluster import CLUSTER, REPO, AgentProcess, coordinators
from tests.support.etcd import EtcdCluster

pytestmark = pytest.mark.slow

VIP = "TCP 203.0.113.10:80"
REAL = "127.0.0.2:80"


def _script(directory: Path, name: str) -> tuple[str, Path]:
    """An executable that creates ``<name>.ran`` (with its arguments) and exits 0."""
    marker = directory / f"{name}.ran"
    path = directory / f"{name}.sh"
    path.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 0\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path), marker


def _config(checkcommand: str, fallbackcommand: str | None = None) -> Config:
    web = VirtualService(
        Protocol.TCP,
        "203.0.113.10",
        80,
        reals=(RealServer("127.0.0.2", 80, weight=1),),
        check=CheckSettings(checktype="external", checkcommand=checkcommand),
        fallbackcommand=fallbackcommand,
    )
    return Config(
        GlobalSettings(checkinterval=1, checktimeout=3, fallback=RealServer("127.0.0.1", 80)), (web,)
    )


class ConsentingAgent(AgentProcess):
    """The agent with its health checks on, its own config file and an allowlist."""

    def __init__(self, endpoints: list[str], state_dir: Path, own: Config, allow: list[str]) -> None:
        super().__init__("lb1", endpoints, state_dir, own)
        self.allow = allow

    def start(self) -> None:
        assert self.config_path is not None
        args = [
            sys.executable, "-m", "lvs_events.agent.main",
            "--node", self.node, "--cluster", CLUSTER,
            "--coordinators", ",".join(self.endpoints),
            "--state-dir", str(self.state_dir),
            "--log-format", "json",
            "--config-json", str(self.config_path), "--publish-config",
            *(a for cmd in self.allow for a in ("--allow-command", cmd)),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=logf, cwd=REPO, env=env)


async def _log(client: CoordinatorClient) -> list[Event]:
    out: list[Event] = []
    async with client.subscribe(1, follow=False) as sub:
        async for item in sub:
            if isinstance(item, Event):
                out.append(item)
    return out


async def _until(
    client: CoordinatorClient, ok: Callable[[list[Event]], bool], agent: AgentProcess
) -> list[Event]:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        events = await _log(client)
        if ok(events):
            return events
        assert agent.proc is not None, "not started"
        assert agent.proc.poll() is None, agent.log_tail()
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not reached; agent log:\n{agent.log_tail()}")


async def _publish(client: CoordinatorClient, config: Config, who: str) -> int:
    (ack,) = await client.publish([new_event(ConfigApplied(config), cluster=CLUSTER, origin=who, actor=who)])
    assert ack.ok, ack.error
    return ack.revision


async def _tail(endpoints: list[str]) -> str:
    """``lvs-events tail --type CommandRefused`` as a subprocess (the coordinator runs on this
    event loop: the CLI is awaited, not waited for)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lvs_events.cli.main", "--endpoints", ",".join(endpoints),
        "--cluster", CLUSTER, "tail", "--type", "CommandRefused",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _health(events: list[Event], after: int) -> list[RealServerHealth]:
    return [e.payload for e in events if e.revision > after and isinstance(e.payload, RealServerHealth)]


async def test_commands_from_the_log_need_local_consent(etcd: EtcdCluster, tmp_path: Path) -> None:
    own_check, own_marker = _script(tmp_path, "own-check")
    allowed_check, allowed_marker = _script(tmp_path, "allowed-check")
    allowed_fb, allowed_fb_marker = _script(tmp_path, "allowed-fallback")
    evil_check, evil_marker = _script(tmp_path, "evil-check")
    evil_fb, evil_fb_marker = _script(tmp_path, "evil-fallback")
    async with coordinators(etcd.endpoints, 1) as (c1,):
        eps = [c1.address]
        agent = ConsentingAgent(eps, tmp_path / "lb1", _config(own_check), [allowed_check, allowed_fb])
        agent.start()
        try:
            async with CoordinatorClient(eps) as client:
                # 1. the agent's own file: its check runs, the server is UP
                await _until(client, lambda ev: any(h.up for h in _health(ev, 0)), agent)
                assert own_marker.read_text().split() == ["203.0.113.10", "80", "127.0.0.2", "80"]

                # 2. the attack: any client publishes a config naming its own commands
                attack = await _publish(client, _config(evil_check, evil_fb), "x")
                events = await _until(
                    client,
                    lambda ev: (
                        len([e for e in ev if isinstance(e.payload, CommandRefused)]) == 2
                        and any(not h.up for h in _health(ev, attack))
                    ),
                    agent,
                )
                refused = {e.payload.kind: e.payload for e in events if isinstance(e.payload, CommandRefused)}
                assert refused["checkcommand"].command == evil_check
                assert refused["fallbackcommand"].command == evil_fb
                assert {r.config_revision for r in refused.values()} == {attack}
                assert refused["checkcommand"].virtuals == (VIP,)
                assert "not in the local allowlist" in refused["checkcommand"].reason
                down = next(h for h in _health(events, attack) if not h.up)
                assert down.detail.startswith("checkcommand refused by local policy: "), down.detail
                # the server is down, so the fallback is in the table: its command was due, and
                # refused; the checks go on every second and refuse again, with no new event
                await asyncio.sleep(3)
                events = await _log(client)
                assert len([e for e in events if isinstance(e.payload, CommandRefused)]) == 2
                assert not evil_marker.exists()
                assert not evil_fb_marker.exists()
                assert "fallback.command_refused" in agent.log_path.read_text()

                # 3. the operator sees why, with lvs-events tail
                tail = await _tail(eps)
                assert f"lb1 REFUSED checkcommand '{evil_check}' ({VIP})" in tail
                assert f"lb1 REFUSED fallbackcommand '{evil_fb}'" in tail

                # 4. commands of the local allowlist run
                allowed = await _publish(client, _config(allowed_check, allowed_fb), "operator")
                await _until(client, lambda ev: any(h.up for h in _health(ev, allowed)), agent)
                assert allowed_marker.exists()
                # the server is back: the fallback leaves the table, and the allowed command runs
                deadline = time.monotonic() + 20
                while not allowed_fb_marker.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 -- a file the agent's child writes
                    await asyncio.sleep(0.1)
                assert allowed_fb_marker.read_text().split() == ["stop", "203.0.113.10:80", "tcp"]
                events = await _log(client)
                assert not any(isinstance(e.payload, CommandRefused) and e.revision > allowed for e in events)
                assert not evil_marker.exists()
                assert not evil_fb_marker.exists()
        finally:
            rc = agent.terminate()
            agent.close()
        assert rc == 0, agent.log_tail()
    assert not evil_fb_marker.exists()
