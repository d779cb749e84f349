"""Failover benchmark: each drill N times (default 20) on a director pair in network namespaces.

Prints one JSON object: per scenario the distribution (p50/p99/max) of the time from the fault
(or the switchover request) to the first successful client connection answered by the new
active, of the VIP move, the failed client connections, and whether two VIP holders were ever
seen. Needs root (``ip netns``) and etcd. No IPVS: a TCP responder on the VIP stands in for it.

    sudo .venv/bin/python bench/bench_failover.py [--runs 20] [--scenarios switchover,kill-active,...]

Targets: unplanned (kill-active) p99 <= 1.0 s; planned (switchover) <= 0.3 s, no failed connection.
Every drill of :data:`lvs_events.drills.drill.SCENARIOS` by default; the host's load average is printed
with the figures (before and after), so a noisy run shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvs_events.drills.drill import SCENARIOS, DrillReport
from lvs_events.drills.lab import FAST_TIMING, NetnsLab, netns_available


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))], 3)


def summary(reports: list[DrillReport]) -> dict[str, Any]:
    def dist(name: str) -> dict[str, Any]:
        vals = [getattr(r, name) for r in reports if getattr(r, name) is not None]
        return {
            "p50": pct(vals, 0.5),
            "p99": pct(vals, 0.99),
            "max": round(max(vals), 3) if vals else None,
            "n": len(vals),
        }

    failed = [r.failed_connections for r in reports]
    return {
        "runs": len(reports),
        "first_connection_s": dist("first_connection"),
        "vip_s": dist("vip"),
        "detect_s": dist("detect"),
        "elect_s": dist("elect"),
        "failed_connections": {
            "total": sum(failed),
            "max": max(failed, default=0),
            "mean": statistics.fmean(failed) if failed else 0,
        },
        "changed_active": sum(1 for r in reports if r.new_active and r.new_active != r.old_active),
        "two_holders_runs": sum(1 for r in reports if r.two_holders),
        "two_arp_answers_runs": sum(1 for r in reports if r.two_arp_answers),
        "arp_requests": sum(r.arp_requests for r in reports),
        "fenced_refused_runs": sum(1 for r in reports if r.fenced_refused),
        "digests_equal_runs": sum(1 for r in reports if r.digests_equal),
    }


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--raw", action="store_true", help="include every run's report")
    args = p.parse_args()
    why = netns_available()
    if why:
        print(json.dumps({"error": why}))
        return 2
    out: dict[str, Any] = {
        "timing": FAST_TIMING,
        "runs": args.runs,
        "loadavg_before": os.getloadavg(),
        "scenarios": {},
    }
    started = time.monotonic()
    async with NetnsLab() as lab:
        for name in [s for s in args.scenarios.split(",") if s]:
            reports = []
            for i in range(args.runs):
                try:
                    reports.append(await SCENARIOS[name](lab))
                except Exception as e:  # one broken run is data, not the end of the benchmark
                    print(f"{name} run {i}: {e}", file=sys.stderr)
            out["scenarios"][name] = summary(reports)
            if args.raw:
                out["scenarios"][name]["reports"] = [json.loads(r.to_json()) for r in reports]
    out["seconds"] = round(time.monotonic() - started, 1)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
