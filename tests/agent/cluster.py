"""Integration helpers for the agent tests: coordinators on a real etcd, agents in process or as
``python -m lvs_events.agent.main`` subprocesses, a realistic mix of events, convergence waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from lvs_events.client.log import CoordinatorClient
from lvs_events.coordinator.server import CoordinatorSettings, RunningCoordinator, serve_coordinator
from lvs_events.domain import codec
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Payload, RealServerHealth

CLUSTER = "it"
REPO = Path(__file__).resolve().parents[2]


def demo_config(variant: int = 0, n_reals: int = 6) -> Config:
    """Two virtual services; ``variant`` changes weights and the scheduler (a new config)."""
    web = VirtualService(
        protocol=Protocol.TCP,
        address="203.0.113.10",
        port=80,
        scheduler=("wrr", "wlc", "rr")[variant % 3],
        reals=tuple(
            RealServer(f"192.0.2.{11 + i}", 80, weight=1 + (i + variant) % 4) for i in range(n_reals)
        ),
        fallback=RealServer("127.0.0.1", 80, weight=1),
        check=CheckSettings(checktype="negotiate"),
    )
    dns = VirtualService(
        protocol=Protocol.UDP,
        address="203.0.113.10",
        port=53,
        scheduler="rr",
        reals=tuple(RealServer(f"192.0.2.{31 + i}", 53) for i in range(n_reals // 2)),
        quiescent=True,
        check=CheckSettings(checktype="negotiate"),
    )
    return Config(globals=GlobalSettings(quiescent=variant % 2 == 1), virtuals=(web, dns))


def mixed_payloads(n: int, rng: random.Random, observer: str) -> list[Payload]:
    """About 1% ConfigApplied, 79% RealServerHealth up/down, 20% AdminOverride drain/enable."""
    cfgs = [demo_config(v) for v in range(3)]
    targets = [(v.key, r.key) for v in cfgs[0].virtuals for r in v.reals]
    out: list[Payload] = []
    for _ in range(n):
        x = rng.random()
        if x < 0.01:
            out.append(ConfigApplied(rng.choice(cfgs)))
            continue
        vkey, rkey = rng.choice(targets)
        if x < 0.80:
            out.append(
                RealServerHealth(vkey, rkey, up=rng.random() < 0.7, observer=observer, checktype="negotiate")
            )
        else:
            action = AdminAction.DRAIN if rng.random() < 0.5 else AdminAction.ENABLE
            out.append(AdminOverride(vkey, rkey, action))
    return out


@contextlib.asynccontextmanager
async def coordinators(
    etcd_endpoints: Sequence[str], n: int = 2, **overrides: Any
) -> AsyncIterator[list[RunningCoordinator]]:
    """``n`` in-process coordinators against one etcd."""
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for _ in range(n):
            settings: dict[str, Any] = {
                "etcd_endpoints": list(etcd_endpoints),
                "cluster": CLUSTER,
                "grace": 3.0,
            }
            settings.update(overrides)
            running.append(
                await stack.enter_async_context(serve_coordinator(CoordinatorSettings(**settings)))
            )
        yield running


async def wait_converged(client: CoordinatorClient, digests: dict[str, Any], *, within: float = 60.0) -> str:
    """Wait until every ``digests[name]()`` equals GetState's table digest; return that digest."""
    deadline = time.monotonic() + within
    last: dict[str, str] = {}
    want = ""
    while time.monotonic() < deadline:
        view = await client.get_state()
        want = view.table_digest
        last = {name: fn() for name, fn in digests.items()}
        if all(d == want for d in last.values()):
            return want
        await asyncio.sleep(0.2)
    raise AssertionError(f"no convergence in {within}s: coordinator {want}, agents {last}")


class AgentProcess:
    """``python -m lvs_events.agent.main`` in a subprocess, with its own state dir. ``options``:
    its flags past node, cluster, coordinators, state dir and log format; by default without
    health checks (the tests publish the health events; the reals are documentation addresses)."""

    def __init__(
        self,
        node: str,
        endpoints: Sequence[str],
        state_dir: Path,
        config: Config | None = None,
        *,
        options: Sequence[str] = ("--no-health-checks",),
    ) -> None:
        self.node = node
        self.options = list(options)
        self.endpoints = list(endpoints)
        self.state_dir = state_dir
        self.config_path: Path | None = None
        if config is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.config_path = state_dir.parent / f"{node}-config.json"
            self.config_path.write_bytes(codec.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{node}.log"

    def start(self) -> None:
        args = [
            sys.executable, "-m", "lvs_events.agent.main",
            "--node", self.node,
            "--cluster", CLUSTER,
            "--coordinators", ",".join(self.endpoints),
            "--state-dir", str(self.state_dir),
            "--log-format", "json",
            *self.options,
        ]  # fmt: skip
        if self.config_path is not None:
            args += ["--config-json", str(self.config_path), "--publish-config"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=logf, cwd=REPO, env=env)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def digest(self) -> str:
        return str(self.status().get("digest", ""))

    def starts(self) -> list[dict[str, Any]]:
        try:
            lines = (self.state_dir / "starts.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""
