"""Health checks end to end: from stopping a real server to its DOWN event in the log.

One JSON report for 1,000 and 10,000 real servers at ``checkinterval = 1``, ``checktimeout = 1``
(``checktype = connect``), through the whole path, everything real and on this machine:

* a real etcd (``tests.support.etcd.EtcdCluster(1)``, its data in the system temp dir);
* a coordinator subprocess (``python -m lvs_events.coordinator.main``);
* an agent subprocess (``python -m lvs_events.agent.main --config-json ... --publish-config``, memory
  dataplane, health checks on: the real :class:`lvs_events.agent.checks.Checker`), so its CPU is its own;
* the real servers: loopback listeners ``127.1.x.y:8000`` in ``--listener-procs`` processes
  (bench_checks.py's listener processes, with an accept timestamp added, see below);
* in this process: a ``CoordinatorClient.subscribe(follow=True)`` for ``RealServerHealth``.

Per size: wait until the log says every server is up; measure a steady window; then stop
``--stops`` servers spread over one interval (each listener closed by its process, which
returns its CLOCK_MONOTONIC close time; the clock is system-wide) and wait for their DOWN events.

* ``detection_*``: from the listener's close to the **arrival of the first DOWN event for that
  server at the subscriber** in this process (after the agent published it, the coordinator
  appended it to etcd and streamed it back). The agent's own append acknowledgement is not
  observable from outside the agent; the arrival at a subscriber is what ``lvs-events tail``
  sees. Split: ``stop_to_report`` (to the event's ``wall_time``, stamped by the agent's
  publisher when the checker reported the verdict) and ``report_to_log`` (the rest).
* ``interval_*``: measured at the servers: the time between two consecutive connections
  accepted by the same listener during the window (so it includes the checker's lateness);
* ``agent_cpu_*``: the agent process's CPU time (user, system, /proc/<pid>/stat) over the
  window's wall time, 1.0 = one core; its runqueue wait (/proc/<pid>/task/*/schedstat): time it
  was runnable without a CPU; the other processes' CPU too, and the load average.

Usage: ``python bench/bench_checks_log.py [--sizes 1000,10000] [--window 10] [--stops 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_checks import (  # noqa: E402 -- after the path set-up
    PORT,
    TCP_COUNTERS,
    Listeners,
    address,
    pct,
    proc_cpu,
    raise_nofile,
    tcp_counters,
)

from lvs_events.client.log import CoordinatorClient  # noqa: E402
from lvs_events.domain import codec  # noqa: E402
from lvs_events.domain.config import (  # noqa: E402
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import Event, RealServerHealth  # noqa: E402
from lvs_events.errors import LvsEventsError  # noqa: E402
from tests.support.etcd import EtcdCluster, free_port  # noqa: E402

CLUSTER = "bench"
NODE = "lb1"
VIRTUAL = ("10.255.0.1", 80)


# -- the real servers ------------------------------------------------------------------------------


def serve_timed(indexes: list[int], ctl: Connection) -> None:  # noqa: PLR0912, PLR0915 -- one loop
    """bench_checks.serve for connect checks, plus accept times: a listener per index, accepted
    connections closed at once. ``ctl``: an index to stop (answered ``(index, close time)``),
    ``"measure"`` (start recording the gaps between two accepts of a listener), ``"report"``
    (answered ``(gaps, accepts)`` since "measure"; recording stops), ``"quit"``."""
    raise_nofile()
    ep = select.epoll()
    listeners: dict[int, socket.socket] = {}
    by_index: dict[int, socket.socket] = {}
    last: dict[int, float] = {}  # fd -> time of the last accept
    gaps: list[float] = []
    accepts = 0
    measuring = False
    for i in indexes:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address(i), PORT))
        s.listen(4096)
        s.setblocking(False)
        listeners[s.fileno()] = s
        by_index[i] = s
        ep.register(s.fileno(), select.EPOLLIN)
    ctl_fd = ctl.fileno()
    ep.register(ctl_fd, select.EPOLLIN)
    ctl.send("ready")
    while True:
        events = ep.poll()
        now = time.monotonic()
        for fd, _ in events:
            if fd == ctl_fd:
                msg = ctl.recv()
                if msg == "quit":
                    return
                if msg == "measure":
                    gaps, accepts, measuring = [], 0, True
                    last.clear()
                elif msg == "report":
                    measuring = False
                    ctl.send((gaps, accepts))
                else:
                    s = by_index.pop(msg)
                    del listeners[s.fileno()]
                    last.pop(s.fileno(), None)
                    s.close()
                    ctl.send((msg, time.monotonic()))
            elif (lst := listeners.get(fd)) is not None:
                for _ in range(64):
                    try:
                        conn, _addr = lst.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # reset before the accept: still a check that arrived
                        conn = None
                    if conn is not None:
                        conn.close()
                    if measuring:
                        accepts += 1
                        prev = last.get(fd)
                        if prev is not None:
                            gaps.append(now - prev)
                        last[fd] = now


class TimedListeners(Listeners):
    """bench_checks.Listeners (stop, cpu, alive, close) over :func:`serve_timed` processes."""

    def __init__(self, n: int, procs: int) -> None:  # the same fields, another target
        self.procs: list[mp.Process] = []
        self.ctls: list[Connection] = []
        for k in range(procs):
            parent, child = mp.Pipe()
            proc = mp.Process(target=serve_timed, args=(list(range(k, n, procs)), child), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.ctls.append(parent)
        for ctl, proc in zip(self.ctls, self.procs, strict=True):
            if not ctl.poll(60) or ctl.recv() != "ready":
                raise RuntimeError(f"listener process {proc.pid} did not start (exit code {proc.exitcode})")

    def measure(self) -> None:
        for ctl in self.ctls:
            ctl.send("measure")

    def report(self) -> tuple[list[float], int]:
        gaps: list[float] = []
        accepts = 0
        for ctl in self.ctls:
            ctl.send("report")
            if not ctl.poll(30):
                raise RuntimeError("listener process does not answer")
            g, a = ctl.recv()
            gaps += g
            accepts += a
        return gaps, accepts


# -- processes -----------------------------------------------------------------------------------


def schedstat_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` waited for a CPU while runnable."""
    total = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f,
            ):
                total += int(f.read().split()[1]) / 1e9
    return total


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log_path.open("ab") as logf:
        return subprocess.Popen(
            [sys.executable, *args], stdout=logf, stderr=logf, cwd=REPO, env=env, start_new_session=True
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def log_count(path: Path, text: str) -> int:
    """Lines of a log file that contain ``text``."""
    try:
        with path.open(errors="replace") as f:
            return sum(1 for line in f if text in line)
    except FileNotFoundError:
        return 0


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


# -- the log -------------------------------------------------------------------------------------


class LogFollower:
    """Every event of the log as it arrives here; for RealServerHealth: (arrival, up, revision,
    wall time) per real server."""

    def __init__(self, client: CoordinatorClient) -> None:
        self.client = client
        self.events: dict[str, list[tuple[float, bool, int, float]]] = {}
        self.latest: dict[str, bool] = {}
        self.up = 0
        self.by_type: collections.Counter[str] = collections.Counter()
        self.last_revision = 0
        self.last_arrival = 0.0

    async def run(self) -> None:
        while True:
            try:
                async with self.client.subscribe(0, follow=True) as sub:
                    async for item in sub:
                        now = time.monotonic()
                        if isinstance(item, Event):
                            self.add(item, now)
            except LvsEventsError:
                await asyncio.sleep(0.2)

    def add(self, event: Event, now: float) -> None:
        self.by_type[type(event.payload).__name__] += 1
        self.last_revision, self.last_arrival = event.revision, now
        p = event.payload
        if not isinstance(p, RealServerHealth):
            return
        self.events.setdefault(p.real, []).append((now, p.up, event.revision, event.wall_time))
        was = self.latest.get(p.real, False)
        self.latest[p.real] = p.up
        self.up += int(p.up) - int(was)

    def first_down_after(self, real: str, at: float) -> tuple[float, int, float] | None:
        for arrival, up, revision, wall in self.events.get(real, ()):
            if arrival >= at and not up:
                return arrival, revision, wall
        return None


def agent_revision(state_dir: Path) -> int:
    """The revision the agent has folded, from its status.json (0 when not written yet)."""
    try:
        return int(json.loads((state_dir / "status.json").read_bytes()).get("revision", 0))
    except (OSError, ValueError):
        return 0


async def wait_coordinator(client: CoordinatorClient, proc: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await client.get_state(within=2.0)
        except LvsEventsError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


# -- one size ------------------------------------------------------------------------------------


def make_config(n: int, interval: float, timeout: float) -> Config:
    reals = tuple(RealServer(address(i), PORT) for i in range(n))
    check = CheckSettings(checktype="connect", checktimeout=timeout)
    return Config(
        GlobalSettings(checkinterval=interval, checktimeout=timeout),
        (VirtualService(Protocol.TCP, VIRTUAL[0], VIRTUAL[1], reals=reals, check=check),),
    )


async def scenario(  # noqa: PLR0915 -- one measured run
    n: int, args: argparse.Namespace, work: Path
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    load0 = os.getloadavg()
    t_begin = time.monotonic()
    interval, timeout = args.interval, args.timeout
    with contextlib.ExitStack() as stack:
        extra = [f"--max-request-bytes={args.etcd_max_request_bytes}"] if args.etcd_max_request_bytes else []
        etcd = stack.enter_context(EtcdCluster(1, tmp_root=args.etcd_dir, extra_args=extra))
        etcd_pid = etcd[0].pid
        port = free_port()
        coord = spawn(
            [
                "-m", "lvs_events.coordinator.main",
                "--listen", f"127.0.0.1:{port}",
                "--etcd-endpoints", ",".join(etcd.endpoints),
                "--cluster", CLUSTER,
                "--log-format", "json", "--log-level", "WARNING",
            ],
            work / f"coordinator-{n}.log",
        )  # fmt: skip
        stack.callback(stop_process, coord)
        listeners = TimedListeners(n, args.listener_procs)
        stack.callback(listeners.close)
        config_path = work / f"config-{n}.json"
        config_path.write_bytes(codec.dumps(make_config(n, interval, timeout)))
        async with CoordinatorClient([f"127.0.0.1:{port}"], timeout=30.0) as client:
            await wait_coordinator(client, coord, 30)
            follower = LogFollower(client)
            follow_task = asyncio.create_task(follower.run())
            t_agent = time.monotonic()
            agent = spawn(
                [
                    "-m", "lvs_events.agent.main",
                    "--node", NODE,
                    "--cluster", CLUSTER,
                    "--coordinators", f"127.0.0.1:{port}",
                    "--state-dir", str(work / f"agent-{n}"),
                    "--config-json", str(config_path), "--publish-config",
                    "--drift-interval", "0",
                    "--log-format", "json", "--log-level", "WARNING",
                ],
                work / f"agent-{n}.log",
            )  # fmt: skip
            try:
                # warm-up: every server up in the log
                deadline = time.monotonic() + args.warmup_limit
                while follower.up < n and time.monotonic() < deadline and agent.poll() is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                all_up_s = time.monotonic() - t_agent
                if follower.up < n:
                    raise RuntimeError(
                        f"{n}: only {follower.up} servers up in the log after {all_up_s:.0f}s "
                        f"(agent exit {agent.poll()}):\n{tail(work / f'agent-{n}.log')}"
                    )
                # settle: the agent has folded the whole log (its own TableApplied included)
                # and the log has been quiet for a while: the warm-up's applying and
                # persisting is over, what follows is the steady state
                t_settle = time.monotonic()
                state_dir = work / f"agent-{n}"
                while time.monotonic() - t_settle < args.settle_limit:
                    quiet = time.monotonic() - follower.last_arrival
                    if quiet >= args.quiet and agent_revision(state_dir) >= follower.last_revision:
                        break
                    await asyncio.sleep(0.2)
                settled = agent_revision(state_dir) >= follower.last_revision
                settle_s = time.monotonic() - t_settle
                pids = {"agent": agent.pid, "coordinator": coord.pid, "etcd": etcd_pid or 0}
                # steady window
                types0 = collections.Counter(follower.by_type)
                folded0, head0 = agent_revision(state_dir), follower.last_revision
                tcp0 = tcp_counters()
                listeners.measure()
                cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
                own0, lst0 = os.times(), listeners.cpu()
                wait0, wall0 = schedstat_wait(agent.pid), time.monotonic()
                await asyncio.sleep(args.window)
                cpu1 = {k: proc_cpu(p) for k, p in pids.items()}
                own1, lst1 = os.times(), listeners.cpu()
                wait1, wall1 = schedstat_wait(agent.pid), time.monotonic()
                gaps, accepts = await loop.run_in_executor(None, listeners.report)
                tcp1 = tcp_counters()
                load_window = os.getloadavg()
                events_in_window = follower.by_type - types0
                folded1 = agent_revision(state_dir)
                wall = wall1 - wall0
                types1 = collections.Counter(follower.by_type)
                acpu0, await0, t_stop0 = proc_cpu(agent.pid), schedstat_wait(agent.pid), time.monotonic()
                # detection: stop servers the log has up, spread over one interval
                healthy = [i for i in range(n) if follower.latest.get(f"{address(i)}:{PORT}")]
                victims = random.Random(n).sample(healthy, min(args.stops, len(healthy)))
                stopped: dict[str, float] = {}
                for i in victims:
                    stopped[f"{address(i)}:{PORT}"] = await loop.run_in_executor(None, listeners.stop, i)
                    await asyncio.sleep(interval / len(victims))
                deadline = time.monotonic() + interval + timeout + args.detect_grace
                while time.monotonic() < deadline and not all(  # noqa: ASYNC110
                    follower.first_down_after(r, t) for r, t in stopped.items()
                ):
                    await asyncio.sleep(0.05)
                acpu1, await1, t_stop1 = proc_cpu(agent.pid), schedstat_wait(agent.pid), time.monotonic()
                events_in_detection = follower.by_type - types1
                wall_offset = time.time() - time.monotonic()
                detect: list[float] = []
                to_report: list[float] = []
                to_log: list[float] = []
                for r, t in stopped.items():
                    hit = follower.first_down_after(r, t)
                    if hit is None:
                        continue
                    arrival, _rev, wall_time = hit
                    reported = wall_time - wall_offset
                    detect.append(arrival - t)
                    to_report.append(reported - t)
                    to_log.append(arrival - reported)
                agent_rss = rss_mb(agent.pid)
                listeners_alive = listeners.alive()
            finally:
                agent_rc = stop_process(agent)
                follow_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follow_task
    cpu = {k: (cpu1[k][0] - cpu0[k][0], cpu1[k][1] - cpu0[k][1]) for k in cpu0}

    def share(x: float) -> float:
        return round(x / wall, 3)

    def ms(values: list[float], q: float) -> float:
        return round(pct(values, q), 4)

    return {
        "real_servers": n,
        "checktype": "connect",
        "checkinterval_s": interval,
        "checktimeout_s": timeout,
        "agent_start_to_all_up_in_log_s": round(all_up_s, 2),
        "settled": settled,
        "settle_s": round(settle_s, 2),
        "log_head_at_window": head0,
        "agent_folded_revision_window_start_end": [folded0, folded1],
        "window_s": round(wall, 2),
        "checks_per_s_at_servers": round(accepts / wall, 1),
        "interval_p50_s": ms(gaps, 0.5),
        "interval_p99_s": ms(gaps, 0.99),
        "interval_max_s": round(max(gaps), 4) if gaps else None,
        "agent_cpu_share": share(cpu["agent"][0] + cpu["agent"][1]),
        "agent_cpu_user": share(cpu["agent"][0]),
        "agent_cpu_sys": share(cpu["agent"][1]),
        "agent_runqueue_wait_share": share(wait1 - wait0),
        "agent_rss_mb": agent_rss,
        "coordinator_cpu_share": share(sum(cpu["coordinator"])),
        "etcd_cpu_share": share(sum(cpu["etcd"])),
        "listeners_cpu_share": share(lst1[0] - lst0[0] + lst1[1] - lst0[1]),
        "bench_process_cpu_share": share(own1.user - own0.user + own1.system - own0.system),
        "log_events_in_window": dict(events_in_window),
        "tcp_counters_in_window": {k: tcp1.get(k, 0) - tcp0.get(k, 0) for k in TCP_COUNTERS},
        "loadavg_1m_before_window_after": [
            round(load0[0], 2),
            round(load_window[0], 2),
            round(os.getloadavg()[0], 2),
        ],
        "stopped": len(stopped),
        "detection_phase_s": round(t_stop1 - t_stop0, 2),
        "agent_cpu_share_detection_phase": round((sum(acpu1) - sum(acpu0)) / (t_stop1 - t_stop0), 3),
        "agent_runqueue_wait_share_detection_phase": round((await1 - await0) / (t_stop1 - t_stop0), 3),
        "log_events_in_detection_phase": dict(events_in_detection),
        "detected": len(detect),
        "detection_p50_s": ms(detect, 0.5),
        "detection_p99_s": ms(detect, 0.99),
        "detection_max_s": round(max(detect), 4) if detect else None,
        "detection_mean_s": round(statistics.fmean(detect), 4) if detect else None,
        "detection_target_s": round(interval + timeout + 0.1, 3),
        "stop_to_report_p50_s": ms(to_report, 0.5),
        "stop_to_report_p99_s": ms(to_report, 0.99),
        "report_to_log_p50_s": ms(to_log, 0.5),
        "report_to_log_p99_s": ms(to_log, 0.99),
        "report_to_log_max_s": round(max(to_log), 4) if to_log else None,
        "listeners_alive": listeners_alive,
        "agent_exit_code": agent_rc,
        "coordinator_snapshot_failures": log_count(work / f"coordinator-{n}.log", "snapshot failed"),
        "scenario_s": round(time.monotonic() - t_begin, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--stops", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--listener-procs", type=int, default=2)
    ap.add_argument("--warmup-limit", type=float, default=90.0, help="seconds to wait for all servers up")
    ap.add_argument("--settle-limit", type=float, default=30.0, help="seconds to wait for a quiet log")
    ap.add_argument("--quiet", type=float, default=2.0, help="seconds without events that count as settled")
    ap.add_argument("--detect-grace", type=float, default=5.0, help="seconds past interval+timeout")
    ap.add_argument("--etcd-dir", default=None, help="etcd data parent dir (default: system temp dir)")
    ap.add_argument(
        "--etcd-max-request-bytes",
        type=int,
        default=0,
        help="etcd's --max-request-bytes (default: etcd's, 1.5 MiB)",
    )
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    nofile = raise_nofile()  # inherited by the agent: its checker holds up to 1,000 sockets
    load0 = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-checks-log-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            results.append(await scenario(n, args, Path(tmp)))
    print(
        json.dumps(
            {
                "benchmark": "health checks, stop to event in the log",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rlimit_nofile": nofile,
                "etcd_data": args.etcd_dir or tempfile.gettempdir(),
                "etcd_max_request_bytes": args.etcd_max_request_bytes or "default (1.5 MiB)",
                "loadavg_1m_5m_before_after": [
                    [round(x, 2) for x in load0[:2]],
                    [round(x, 2) for x in os.getloadavg()[:2]],
                ],
                "detection_measured_to": "arrival of the DOWN RealServerHealth event at a follow=True "
                "subscriber in the bench process (agent -> coordinator -> etcd -> Subscribe stream)",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
