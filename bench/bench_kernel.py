"""Kernel dataplane benchmark. Runs INSIDE the IPVS VM; prints one JSON object.

    python3 tests/vm/run_bench.py            # on the host (root): boots the VM, prints the JSON

Measured in the same run:

* ``bulk``: programming N services x M real servers (masq) into an empty table, three ways:
  ``IpvsDataplane.reconcile`` (dump + diff + batched netlink apply), and ``ipvsadm -R`` of the
  same rules (``format_ipvsadm_save``). The kernel is flushed before each; both are verified.
* ``weight_change``: one weight change reaching the kernel, K times, alternating drain / enable
  of one real server via ``AdminOverride`` events, through the agent's own code:
  ``event_to_ack_ms``: from the event handed to the agent's core (as the subscriber delivers it
  from the log) through ``ApplyCore.step`` (fold), ``ApplyCore.ready`` (incremental render of the
  touched service) and ``reconcile_changed`` (diff of that service, netlink apply, ack) -- what the
  agent's apply loop does before the kernel holds the change. ``after_ack_ms``: what the loop does
  next, off that path (the table digest, ``advance``, the TableApplied decision).
  ``full_path_ms``: a few changes the old way (render, diff and reconcile of the whole table).
  ``apply_ms``: the ``apply`` of the single edit-dest op alone (executor hop + netlink round trip).
* ``from_log``: the whole stack in the VM (``tests/vm/suite/stack.py``): etcd (Debian's
  ``etcd-server``), a coordinator and an ``lvs-agent --dataplane ipvs`` process, each its own
  process. ``bulk_from_log_s``: the N x M configuration published as one ``ConfigApplied`` event,
  until the kernel holds every rule. Then K weight changes (``AdminOverride`` WEIGHT events,
  alternating two weights on one real server) published through the coordinator into etcd; a
  poller process, from the ack on, dumps that service's destinations over netlink (1 ms apart)
  until it shows the new weight. ``publish_to_kernel_ms``: from the publish call to the kernel
  showing the weight (it includes the append into etcd: an upper bound of "from the log");
  ``ack_to_kernel_ms``: from the publisher's ack (the event is committed in etcd) to the kernel
  (0 when the kernel had it by the ack); ``publish_to_ack_ms``: the append. Clocks:
  CLOCK_MONOTONIC, system-wide. ``slowest``: (seconds into the run, ms) of the ten slowest.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from lvs_events.agent.core import ApplyCore, Policy
from lvs_events.agent.dataplane import reconcile_changed
from lvs_events.agent.dataplane.ipvs import IpvsDataplane
from lvs_events.domain.config import CheckSettings, Config, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Event
from lvs_events.domain.ipvsadm_save import format_ipvsadm_save
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold
from lvs_events.domain.table import Op


def config(n: int, m: int) -> Config:
    virtuals = tuple(
        VirtualService(
            protocol=Protocol.TCP,
            address=f"10.{1 + i // 250}.{i % 250}.1",
            port=80,
            scheduler="wrr",
            check=CheckSettings(checktype="on"),
            reals=tuple(
                RealServer(f"192.168.{i % 250}.{j + 10}", 80, Forwarding.MASQ, j + 1) for j in range(m)
            ),
        )
        for i in range(n)
    )
    return Config(virtuals=virtuals)


def ipvsadm(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ipvsadm", *args], input=stdin, capture_output=True, text=True, check=True).stdout


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))], 3)


async def bench(n: int, m: int, changes: int, drift_interval: str = "") -> dict[str, object]:
    cfg = config(n, m)
    cfg_event = Event("cfg", "bench", "vm", "bench", "", 1.0, ConfigApplied(cfg))
    state = fold(State(), cfg_event)
    desired = render(state)
    rules = format_ipvsadm_save(desired)
    out: dict[str, object] = {
        "services": n,
        "reals_per_service": m,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }

    # bulk: ipvsadm -R, then IpvsDataplane, then ipvsadm -R again (the median is compared)
    restore: list[float] = []
    ours: list[float] = []
    for rnd in range(2):
        ipvsadm("-C")
        t0 = time.perf_counter()
        ipvsadm("-R", stdin=rules)
        restore.append(time.perf_counter() - t0)
        if len(ipvsadm("-S", "-n").splitlines()) != n * (m + 1):
            raise RuntimeError("ipvsadm -R did not load every rule")
        ipvsadm("-C")
        async with IpvsDataplane() as dp:
            await dp.open()
            t0 = time.perf_counter()
            ops, _ = await dp.reconcile(desired)
            ours.append(time.perf_counter() - t0)
            if rnd == 0:
                check = await dp.dump_kernel()
                if check.digest() != desired.digest():
                    raise RuntimeError("IpvsDataplane did not load the table")
                t0 = time.perf_counter()
                await dp.dump_kernel()
                out["full_dump_s"] = round(time.perf_counter() - t0, 3)
    out["bulk"] = {
        "ops": len(ops),
        "ipvsdataplane_s": [round(x, 3) for x in ours],
        "ipvsadm_restore_s": [round(x, 3) for x in restore],
        "ratio": round(min(ours) / min(restore), 3),
        "target_ratio": 2.0,
    }

    out["weight_change"] = await weight_change(cfg, cfg_event, n, changes)
    out["from_log"] = await from_log(cfg, n, m, changes, drift_interval)
    return out


POLLER = r"""
import sys, time
from lvs_events.agent.dataplane._netlink import IpvsSocket
from lvs_events.domain.config import Protocol
from lvs_events.domain.table import Service
address, port, real, every = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sock = IpvsSocket()
sock.open()
svc = Service(Protocol.TCP, address, port)
print("ready", flush=True)
for line in sys.stdin:
    weight, polls = int(line), 0
    while True:
        polls += 1
        if any(d.address == real and d.weight == weight for d in sock.dump_dests(svc)):
            break
        time.sleep(every)
    print(time.monotonic(), polls, flush=True)
"""


def _stats(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 50), "p99": pct(xs, 99), "max": round(max(xs), 3), "min": round(min(xs), 3)}


SUITE = Path(__file__).resolve().parents[1] / "suite"  # the VM job's layout: /job/bench, /job/suite


async def from_log(cfg: Config, n: int, m: int, changes: int, drift_interval: str = "") -> dict[str, object]:
    """The weight change from the log: etcd, coordinator and agent processes (see the docstring)."""
    sys.path.insert(0, str(SUITE))
    from stack import Stack, environment_ok  # noqa: PLC0415 -- the VM job's layout

    from lvs_events import logs  # noqa: PLC0415
    from lvs_events.client.events import new_event  # noqa: PLC0415
    from lvs_events.client.log import CoordinatorClient  # noqa: PLC0415

    logs.configure("json", "WARNING", stream=sys.stderr)  # stdout is the report
    why = environment_ok()
    if why:
        return {"skipped": why}
    ipvsadm("-C")
    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-stack-")), cluster="bench")
    out: dict[str, object] = {}
    try:
        await asyncio.to_thread(stack.etcd, "127.0.0.1")
        stack.coordinator("127.0.0.1")
        stack.agent("lb1", *(["--drift-interval", drift_interval] if drift_interval else []))
        out["agent_drift_interval"] = drift_interval or "default"
        deadline = time.monotonic() + 120
        while not any(e.get("event") == "agent.start" for e in stack.events("agent-lb1")):
            if time.monotonic() > deadline or stack.procs["agent-lb1"].poll() is not None:
                raise RuntimeError(f"the agent did not start:\n{stack.tail('agent-lb1')}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # its subscription
        async with CoordinatorClient([stack.coordinator_endpoint], timeout=60.0) as c:
            t0 = time.monotonic()
            ev = new_event(ConfigApplied(cfg), cluster="bench", origin="bench", actor="bench")
            (ack,) = await c.publish([ev])
            if not ack.ok:
                raise RuntimeError(f"ConfigApplied refused: {ack.error}")
            while len(ipvsadm("-S", "-n").splitlines()) != n * (m + 1):
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"the agent did not load the table:\n{stack.tail('agent-lb1')}")
                await asyncio.sleep(0.1)
            out["bulk_from_log_s"] = round(time.monotonic() - t0, 3)
            await asyncio.sleep(2.0)  # the agent's work after the load (TableApplied, persist)

            async def publish(payload: AdminOverride) -> float:
                (ack,) = await c.publish([new_event(payload, cluster="bench", origin="bench", actor="bench")])
                if not ack.ok:
                    raise RuntimeError(f"weight change refused: {ack.error}")
                return time.monotonic()

            out.update(await weight_changes_from_log(cfg.virtuals[n // 2], changes, publish))
        names = [str(e.get("event")) for e in stack.events("agent-lb1")]
        out["agent_log_events"] = {k: names.count(k) for k in sorted(set(names))}
    finally:
        await asyncio.to_thread(stack.close)
        ipvsadm("-C")
    return out


async def weight_changes_from_log(
    v: VirtualService, changes: int, publish: Callable[[AdminOverride], Awaitable[float]]
) -> dict[str, object]:
    """K weight changes of ``v``'s first real server, one at a time, each timed to the kernel."""
    r = v.reals[0]
    poller = subprocess.Popen(  # noqa: ASYNC220 -- talked to line by line below
        [sys.executable, "-c", POLLER, str(v.address), str(v.port), r.address, "0.001"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    to_kernel: list[float] = []
    from_ack: list[float] = []
    to_ack: list[float] = []
    polls: list[int] = []
    series: list[tuple[float, float]] = []  # (seconds from the first change, publish -> kernel ms)
    try:
        stdin, stdout = poller.stdin, poller.stdout
        assert stdin is not None
        assert stdout is not None
        if (await asyncio.to_thread(stdout.readline)).strip() != "ready":
            raise RuntimeError("the poller did not start")
        start = time.monotonic()
        for k in range(changes):
            weight = 7 if k % 2 == 0 else 9
            t0 = time.monotonic()
            t_ack = await publish(AdminOverride(v.key, r.key, AdminAction.WEIGHT, weight=weight))
            # The poller starts at the ack (it would only steal the emulated CPUs from etcd, the
            # coordinator and the agent during the append): a change already in the kernel then
            # counts as reaching it at the ack, so ack_to_kernel >= 0 and publish_to_kernel is
            # still an upper bound.
            stdin.write(f"{weight}\n")
            stdin.flush()
            line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), 60)
            t_kernel, n_polls = line.split()
            to_kernel.append((float(t_kernel) - t0) * 1000)
            from_ack.append((float(t_kernel) - t_ack) * 1000)
            to_ack.append((t_ack - t0) * 1000)
            polls.append(int(n_polls))
            series.append((round(t0 - start, 3), round(to_kernel[-1], 1)))
            await asyncio.sleep(0.05)  # one change at a time: the agent's after-ack work done
    finally:
        poller.kill()
        poller.wait()
    return {
        "changes": changes,
        "publish_to_kernel_ms": _stats(to_kernel),
        "ack_to_kernel_ms": _stats(from_ack),
        "publish_to_ack_ms": _stats(to_ack),
        "polls_p50": sorted(polls)[len(polls) // 2],
        "slowest": sorted(series, key=lambda x: -x[1])[:10],
        "target_p99_ms": 20,
        "measured": "publish through the coordinator into etcd -> the agent's subscription -> fold, "
        "render, diff, netlink -> a poller sees the weight in the kernel",
    }


async def weight_change(cfg: Config, cfg_event: Event, n: int, changes: int) -> dict[str, object]:
    # weight change: the kernel holds the table (the last reconcile); alternate drain / enable
    v = cfg.virtuals[n // 2]
    r = v.reals[0]
    event_to_ack: list[float] = []
    after_ack: list[float] = []
    full_path: list[float] = []
    apply_only: list[float] = []
    core = ApplyCore("vm", policy=Policy(persist_interval=3600.0, resync_interval=3600.0))
    rev = 1
    core.step(replace(cfg_event, revision=rev))
    async with IpvsDataplane() as dp:
        ready = core.ready(0.0, caught_up=True)
        assert ready is not None
        assert ready.desired is not None
        await dp.reconcile(ready.desired)  # the first reconcile: the whole table
        core.advance(ready, 0.0, actual_digest=ready.desired_digest, published=True)
        for k in range(changes):
            rev += 1
            action = AdminAction.DRAIN if k % 2 == 0 else AdminAction.ENABLE
            ev = Event(
                f"w{k}", "bench", "vm", "op", "", 2.0 + k, AdminOverride(v.key, r.key, action), revision=rev
            )
            t0 = time.perf_counter()  # the event arrives from the log
            core.step(ev)
            ready = core.ready(0.0, caught_up=True)
            if ready is None or ready.changed is None:
                raise RuntimeError("expected the per-event path")
            ops, ok = await reconcile_changed(dp, ready.changed)
            t1 = time.perf_counter()  # the kernel acked
            core.advance(ready, 0.0, actual_digest=ready.desired_digest, published=False)
            core.ready(0.0, caught_up=True)  # the TableApplied decision
            t2 = time.perf_counter()
            event_to_ack.append((t1 - t0) * 1000)
            after_ack.append((t2 - t1) * 1000)
            if len(ops) != 1 or not ok:
                raise RuntimeError(f"expected one op per change, got {[str(o) for o in ops]} ok={ok}")
        state = core.state
        for k in range(min(changes, 10)):  # the old way: the whole table per event
            action = AdminAction.DRAIN if k % 2 == 0 else AdminAction.ENABLE
            ev = Event(f"f{k}", "bench", "vm", "op", "", 1000.0 + k, AdminOverride(v.key, r.key, action))
            state = fold(state, ev)
            t0 = time.perf_counter()
            ops, _ = await dp.reconcile(render(state))
            full_path.append((time.perf_counter() - t0) * 1000)
        kernel = await dp.dump_kernel()
        if kernel.digest() != render(state).digest():
            raise RuntimeError("the kernel does not hold the rendered table after the weight changes")
        svc = kernel.service(v.key)
        assert svc is not None
        dest = next(d for d in svc.dests if d.key == r.key)
        for k in range(changes):
            d = replace(dest, weight=(k % 5) + 1)
            t0 = time.perf_counter()
            await dp.apply([Op("edit-dest", svc, d)])
            apply_only.append((time.perf_counter() - t0) * 1000)
    ipvsadm("-C")
    return {
        "changes": changes,
        "event_to_ack_ms": {
            "p50": pct(event_to_ack, 50),
            "p99": pct(event_to_ack, 99),
            "max": round(max(event_to_ack), 3),
        },
        "after_ack_ms": {"p50": pct(after_ack, 50), "p99": pct(after_ack, 99)},
        "full_path_ms": {"p50": pct(full_path, 50), "max": round(max(full_path), 3), "n": len(full_path)},
        "apply_ms": {
            "p50": pct(apply_only, 50),
            "p99": pct(apply_only, 99),
            "max": round(max(apply_only), 3),
        },
        "mean_event_to_ack_ms": round(statistics.mean(event_to_ack), 3),
        "target_p99_ms": 20,
        "measured": "event handed to ApplyCore -> fold -> incremental render -> diff -> netlink ack",
    }


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    changes = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    drift_interval = sys.argv[4] if len(sys.argv) > 4 else ""  # the agent's --drift-interval (from_log)
    print(json.dumps(asyncio.run(bench(n, m, changes, drift_interval)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
