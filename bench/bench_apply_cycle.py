"""The agent's apply cycle in one process: how much one event costs in a big virtual service.

One virtual service of ``--reals`` real servers, all up (folded and applied once, the whole table),
then ``--events`` cycles of one ``RealServerHealth`` each (a server going down, ``quiescent = no``:
its destination leaves the table), each carried out as the agent's shell does it: fold, ``ready``,
the per-event reconcile of the memory dataplane (the whole table when the core asks for it), the
digest checked, ``advance``. With ``--files`` the memory dataplane also writes its files (in the
background, as in the agent). Prints one JSON object: the cycle's wall time (mean, p50, p99) and the
process CPU per cycle. No network, no event loop contention: this is the apply loop's own cost.

Usage: ``python bench/bench_apply_cycle.py [--reals 10000] [--events 200] [--files]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lvs_events.agent.core import ApplyCore  # noqa: E402
from lvs_events.agent.dataplane import reconcile, reconcile_changed  # noqa: E402
from lvs_events.agent.dataplane.memory import MemoryDataplane  # noqa: E402
from lvs_events.domain.config import CheckSettings, Config, Protocol, RealServer, VirtualService  # noqa: E402
from lvs_events.domain.events import ConfigApplied, Event, RealServerHealth  # noqa: E402


def make_config(n: int) -> Config:
    reals = tuple(RealServer(f"127.1.{i // 250}.{i % 250 + 1}", 8000) for i in range(n))
    check = CheckSettings(checktype="connect")
    return Config(virtuals=(VirtualService(Protocol.TCP, "10.255.0.1", 80, reals=reals, check=check),))


def event(revision: int, payload: ConfigApplied | RealServerHealth, wall: float) -> Event:
    return Event(f"e{revision}", "bench", "lb1", "bench", "", wall, payload, revision=revision)


async def cycle(core: ApplyCore, dp: MemoryDataplane, now: float) -> None:
    """One Ready, carried out as ``lvs_events.agent.runtime`` does it."""
    ready = core.ready(now, caught_up=True)
    if ready is None:
        return
    digest = None
    if ready.desired is not None:
        if ready.changed is not None:
            _ops, ok = await reconcile_changed(dp, ready.changed)
            digest = ready.desired_digest if ok else None
        if digest is None:
            _ops, actual = await reconcile(dp, ready.desired)
            digest = actual.digest()
    core.advance(ready, now, actual_digest=digest, published=True)


async def run(n: int, events: int, files: Path | None) -> dict[str, object]:
    cfg = make_config(n)
    v = cfg.virtuals[0]
    core = ApplyCore("lb1")
    dp = MemoryDataplane(files)
    rev = 1
    core.step(event(rev, ConfigApplied(cfg), 1000.0))
    for r in v.reals:
        rev += 1
        core.step(event(rev, RealServerHealth(v.key, r.key, True, "lb1", "connect"), 1000.0))
    t0 = time.perf_counter()
    await cycle(core, dp, 0.0)  # the first reconcile: the whole table
    first = time.perf_counter() - t0
    walls: list[float] = []
    cpu0 = time.process_time()
    for i in range(events):
        rev += 1
        down = RealServerHealth(v.key, v.reals[i % n].key, False, "lb1", "connect")
        t = time.perf_counter()
        core.step(event(rev, down, 1001.0 + i))
        await cycle(core, dp, 1.0 + i)
        walls.append(time.perf_counter() - t)
        await asyncio.sleep(0)  # the loop turns, as in the agent (the files' writer runs)
    cpu = time.process_time() - cpu0
    flush = getattr(dp, "flush", None)  # (a memory dataplane that writes its files in apply has none)
    if flush is not None:
        await flush()
    walls.sort()
    return {
        "real_servers": n,
        "events": events,
        "files": files is not None,
        "first_reconcile_s": round(first, 3),
        "cycle_mean_ms": round(statistics.fmean(walls) * 1000, 2),
        "cycle_p50_ms": round(walls[len(walls) // 2] * 1000, 2),
        "cycle_p99_ms": round(walls[min(len(walls) - 1, int(len(walls) * 0.99))] * 1000, 2),
        "cpu_per_cycle_ms": round(cpu / events * 1000, 2),
        "files_written": dp.files_written if hasattr(dp, "files_written") else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reals", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--files", action="store_true", help="the memory dataplane writes its files")
    args = ap.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-apply-cycle-") as tmp:
        result = asyncio.run(run(args.reals, args.events, Path(tmp) if args.files else None))
    out = {
        "benchmark": "agent apply cycle, one event in one big virtual service",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        **result,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
