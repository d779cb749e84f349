"""Kernel dataplane benchmark. Runs INSIDE the IPVS VM; prints one JSON object.

    python3 tests/vm/run_bench.py            # on the host (root): boots the VM, prints the JSON

Measured in the same run:

* ``bulk``: programming N services x M real servers (masq) into an empty table, three ways:
  ``IpvsDataplane.reconcile`` (dump + diff + batched netlink apply), and ``ipvsadm -R`` of the
  same rules (``format_ipvsadm_save``). The kernel is flushed before each; both are verified.
* ``weight_change``: one weight change reaching the kernel, K times, alternating drain / enable
  of one real server via ``AdminOverride`` events. ``from_fold_ms``: from the event folded into the
  state (``fold`` done) through render, diff and the netlink ack (``IpvsDataplane.reconcile``
  returning) -- the agent's per-event path minus the log subscription, which is not in the VM.
  ``apply_ms``: the ``apply`` of the single edit-dest op alone (executor hop + netlink round trip).
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
    state = fold(State(), Event("cfg", "bench", "vm", "bench", "", 1.0, ConfigApplied(cfg)))
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

    # weight change: the kernel holds the table (the last reconcile); alternate drain / enable
    v = cfg.virtuals[n // 2]
    r = v.reals[0]
    from_fold: list[float] = []
    apply_only: list[float] = []
    async with IpvsDataplane() as dp:
        await dp.reconcile(desired)
        for k in range(changes):
            action = AdminAction.DRAIN if k % 2 == 0 else AdminAction.ENABLE
            ev = Event(f"w{k}", "bench", "vm", "op", "", 2.0 + k, AdminOverride(v.key, r.key, action))
            state = fold(state, ev)
            t0 = time.perf_counter()  # the event is folded
            ops, _ = await dp.reconcile(render(state))
            from_fold.append((time.perf_counter() - t0) * 1000)
            if len(ops) != 1:
                raise RuntimeError(f"expected one op per change, got {[str(o) for o in ops]}")
        svc = (await dp.dump()).service(v.key)
        assert svc is not None
        dest = next(d for d in svc.dests if d.key == r.key)
        for k in range(changes):
            d = replace(dest, weight=(k % 5) + 1)
            t0 = time.perf_counter()
            await dp.apply([Op("edit-dest", svc, d)])
            apply_only.append((time.perf_counter() - t0) * 1000)
    ipvsadm("-C")
    out["weight_change"] = {
        "changes": changes,
        "from_fold_ms": {
            "p50": pct(from_fold, 50),
            "p99": pct(from_fold, 99),
            "max": round(max(from_fold), 3),
        },
        "apply_ms": {
            "p50": pct(apply_only, 50),
            "p99": pct(apply_only, 99),
            "max": round(max(apply_only), 3),
        },
        "mean_from_fold_ms": round(statistics.mean(from_fold), 3),
        "target_p99_ms": 20,
        "measured": "event folded -> render -> diff -> netlink ack (IpvsDataplane.reconcile returns)",
    }
    return out


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    changes = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    print(json.dumps(asyncio.run(bench(n, m, changes)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
