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
  The log subscription itself (coordinator -> agent) is not in the VM.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from agent.core import ApplyCore, Policy
from agent.dataplane import reconcile_changed
from agent.dataplane.ipvs import IpvsDataplane
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


async def bench(n: int, m: int, changes: int) -> dict[str, object]:
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
    return out


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
    print(json.dumps(asyncio.run(bench(n, m, changes)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
