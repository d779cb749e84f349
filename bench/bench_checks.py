"""Health-check benchmark: 1,000 and 10,000 real servers at checkinterval=1, one JSON report.

The real servers are loopback listeners in a *separate* process (a plain ``selectors`` loop that
accepts and closes, or answers a fixed HTTP response), one listener per address
``127.1.x.y:8000``, so the CPU measured is the checker's alone. The checker runs in this process:
the real :class:`agent.checks.Checker` with the real probes.

Measured per scenario:

* ``interval_p50`` / ``interval_p99``: time between two consecutive check starts of the same
  real server (target: the checkinterval);
* ``cpu_share``: process CPU time / wall time over the steady window (1.0 = one core);
* ``detection_p50`` / ``detection_p99``: from the server process closing a listener (its
  CLOCK_MONOTONIC timestamp, system-wide on Linux) to the down verdict reaching the reporter.
  The reporter stands in for "the event in the log": the full agent -> coordinator -> etcd path
  is not part of this benchmark.

Usage: ``python bench/bench_checks.py [--sizes 1000,10000] [--modes connect,http] [--window 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import resource
import selectors
import socket
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.checks import Checker, CheckSpec, Result
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.state import State

PORT = 8000
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nOK web1"


def address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(n: int, http: bool, ctl: Connection) -> None:  # noqa: PLR0912 -- one select loop
    """The real servers: n listeners; ``ctl`` receives indexes to stop, answers close times."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    listeners: dict[int, socket.socket] = {}
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address(i), PORT))
        s.listen(128)
        s.setblocking(False)
        listeners[i] = s
        sel.register(s, selectors.EVENT_READ, ("listen", i))
    sel.register(ctl.fileno(), selectors.EVENT_READ, ("ctl", -1))
    ctl.send("ready")
    while True:
        for key, _ in sel.select():
            kind, i = key.data
            if kind == "ctl":
                msg = ctl.recv()
                if msg == "quit":
                    return
                s = listeners.pop(msg)
                sel.unregister(s)
                s.close()
                ctl.send((msg, time.monotonic()))
            elif kind == "listen":
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                for _ in range(64):
                    try:
                        conn, _addr = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    if http:
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ, ("conn", -1))
                    else:
                        conn.close()
            else:
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(4096)
                    if data:
                        conn.send(HTTP_RESPONSE)
                except OSError:
                    pass
                sel.unregister(conn)
                conn.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Recorder:
    def __init__(self) -> None:
        self.down_at: dict[str, float] = {}
        self.reports = 0

    def report(
        self, virtual: str, real: str, up: bool, *, checktype: str, detail: str = "", latency_ms: float = 0.0
    ) -> bool:
        self.reports += 1
        if not up:
            self.down_at.setdefault(real, time.monotonic())
        return True


async def scenario(  # noqa: PLR0915, PLR0917 -- one measured run
    n: int,
    mode: str,
    window: float,
    stops: int,
    interval: float,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, object]:
    parent, child = mp.Pipe()
    proc = mp.Process(target=serve, args=(n, mode == "http", child), daemon=True)
    proc.start()
    assert parent.recv() == "ready"
    reals = tuple(RealServer(address(i), PORT) for i in range(n))
    check = CheckSettings(
        checktype="connect" if mode == "connect" else "negotiate",
        service="http",
        request="/",
        receive="OK web1",
        checktimeout=timeout,
        negotiatetimeout=timeout,
    )
    config = Config(
        GlobalSettings(checkinterval=interval),
        (VirtualService(Protocol.TCP, "10.255.0.1", 80, reals=reals, check=check),),
    )
    last_start: dict[str, float] = {}
    gaps: list[float] = []
    measuring = False
    failures = 0

    def on_check(spec: CheckSpec, result: Result, started: float, ended: float) -> None:
        nonlocal failures
        prev = last_start.get(spec.real)
        last_start[spec.real] = started
        if measuring:
            if prev is not None:
                gaps.append(started - prev)
            if not result.up:
                failures += 1

    rec = Recorder()
    checker = Checker("bench", on_check=on_check, max_concurrency=2000)
    checker.observe(State(config=config))
    task = asyncio.create_task(checker.run(rec))
    loop = asyncio.get_running_loop()
    # warm up: every server checked and up
    t_end = time.monotonic() + interval * 3 + 5
    while rec.reports < n and time.monotonic() < t_end:  # noqa: ASYNC110 -- polling counters
        await asyncio.sleep(0.1)
    up_reported = rec.reports
    await asyncio.sleep(interval)
    measuring = True
    checks0 = checker.stats.finished
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    cpu1, wall1 = time.process_time(), time.monotonic()
    checks = checker.stats.finished - checks0
    measuring = False
    # detection: stop `stops` servers spread over one interval
    victims = random.Random(n).sample(range(n), stops)
    stopped: dict[str, float] = {}
    for i in victims:
        await loop.run_in_executor(None, parent.send, i)
        idx, at = await loop.run_in_executor(None, parent.recv)
        stopped[f"{address(idx)}:{PORT}"] = at
        await asyncio.sleep(interval / stops)
    deadline = time.monotonic() + interval + timeout + 3
    while time.monotonic() < deadline and not all(r in rec.down_at for r in stopped):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    detect = [rec.down_at[r] - t for r, t in stopped.items() if r in rec.down_at]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    parent.send("quit")
    proc.join(5)
    return {
        "real_servers": n,
        "mode": "connect" if mode == "connect" else "negotiate:http",
        "checkinterval_s": interval,
        "checktimeout_s": timeout,
        "initial_up_reports": up_reported,
        "checks_per_s": round(checks / (wall1 - wall0), 1),
        "failed_checks_in_window": failures,
        "interval_p50_s": round(pct(gaps, 0.5), 4),
        "interval_p99_s": round(pct(gaps, 0.99), 4),
        "interval_max_s": round(max(gaps), 4) if gaps else None,
        "cpu_share": round((cpu1 - cpu0) / (wall1 - wall0), 3),
        "late_starts": checker.stats.late_starts,
        "stopped": len(stopped),
        "detected": len(detect),
        "detection_p50_s": round(pct(detect, 0.5), 4),
        "detection_p99_s": round(pct(detect, 0.99), 4),
        "detection_max_s": round(max(detect), 4) if detect else None,
        "detection_target_s": interval + timeout + 0.1,
        "detection_mean_s": round(statistics.fmean(detect), 4) if detect else None,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--modes", default="connect,http")
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--stops", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    args = ap.parse_args()
    # the checker logs every transition at INFO; keep the report clean (and the warm-up cheap)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    nofile = raise_nofile()
    results = []
    for mode in args.modes.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            results.append(
                await scenario(n, mode, args.window, min(args.stops, n), args.interval, args.timeout)
            )
    print(
        json.dumps(
            {
                "benchmark": "health checks",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rlimit_nofile": nofile,
                "detection_measured_to": "the reporter (stand-in for the event in the log)",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
