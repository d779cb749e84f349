"""Real traffic through IPVS, INSIDE the VM: drain, restore and stop a real server under load.

Namespaces: ``client`` (10.0.0.2) -- ``director`` (10.0.0.1, VIP 10.0.0.100, IPVS masq/NAT,
programmed by :class:`IpvsDataplane`) -- ``real1`` (10.1.1.2) and ``real2`` (10.1.2.2), each
running ``python3 -m http.server``. The client opens a new TCP connection (HTTP GET /id) to the
VIP in a loop while the director's table changes; every attempt is recorded with its time, the
server that answered, or the error. Writes ``/job/out/traffic.json``.

Killing the active director under traffic is ``failover.py`` (the whole stack, two directors).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

JOB = Path(os.environ.get("JOB", "/job"))
OUT = JOB / "out"
VIP, PORT = "10.0.0.100", 8000


def sh(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = list(args) if netns is None else ["ip", "netns", "exec", netns, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def topology() -> None:
    for ns in ("client", "director", "real1", "real2"):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
    sh("ip", "link", "add", "c0", "type", "veth", "peer", "name", "d0")
    sh("ip", "link", "set", "c0", "netns", "client")
    sh("ip", "link", "set", "d0", "netns", "director")
    sh("ip", "addr", "add", "10.0.0.2/24", "dev", "c0", netns="client")
    sh("ip", "link", "set", "c0", "up", netns="client")
    sh("ip", "addr", "add", "10.0.0.1/24", "dev", "d0", netns="director")
    sh("ip", "addr", "add", f"{VIP}/32", "dev", "d0", netns="director")
    sh("ip", "link", "set", "d0", "up", netns="director")
    for n in (1, 2):
        sh("ip", "link", "add", f"r{n}", "type", "veth", "peer", "name", f"e{n}")
        sh("ip", "link", "set", f"r{n}", "netns", f"real{n}")
        sh("ip", "link", "set", f"e{n}", "netns", "director")
        sh("ip", "addr", "add", f"10.1.{n}.2/24", "dev", f"r{n}", netns=f"real{n}")
        sh("ip", "link", "set", f"r{n}", "up", netns=f"real{n}")
        sh("ip", "route", "add", "default", "via", f"10.1.{n}.1", netns=f"real{n}")
        sh("ip", "addr", "add", f"10.1.{n}.1/24", "dev", f"e{n}", netns="director")
        sh("ip", "link", "set", f"e{n}", "up", netns="director")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns="director")
    sh("sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", netns="director", check=False)


def enter_netns(name: str) -> None:
    """setns(2) this thread (threads started later inherit it); Python 3.11 has no os.setns."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def start_server(n: int) -> subprocess.Popen[bytes]:
    root = Path(f"/tmp/www{n}")
    root.mkdir(exist_ok=True)
    (root / "id").write_text(f"real{n}")
    p = subprocess.Popen(
        ["ip", "netns", "exec", f"real{n}", sys.executable, "-m", "http.server", str(PORT),
         "--bind", f"10.1.{n}.2", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sh("ss", "-ltn", f"sport = :{PORT}", netns=f"real{n}").count("LISTEN"):
            return p
        time.sleep(0.1)
    raise RuntimeError(f"real{n}'s http.server did not start")


def wait_http(n: int, timeout: float = 30) -> None:
    """Until real n's http.server answers a GET (listening is not yet serving: a just-started
    server may refuse or reset its first connection). From the director's namespace."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(f"10.1.{n}.2", PORT, timeout=1)
            c.request("GET", "/id")
            ok = c.getresponse().read().decode() == f"real{n}"
            c.close()
            if ok:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"real{n}'s http.server does not answer")


CLIENT = r"""
import http.client, json, sys, time
vip, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import os
out = []
up = False
while not os.path.exists(stop_file):
    t = time.time()
    try:
        c = http.client.HTTPConnection(vip, port, timeout=2)
        c.request("GET", "/id")
        r = c.getresponse()
        body = r.read().decode()
        c.close()
        out.append([t, body if r.status == 200 else f"HTTP {r.status}"])
        if not up:
            open(stop_file + ".up", "w").close()  # the drill starts its phases from here
            up = True
    except Exception as e:
        out.append([t, "ERR " + type(e).__name__])
print(json.dumps(out))
"""


def stop_server(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    p.wait()


async def client_answered(client: subprocess.Popen[bytes], up: Path) -> None:
    """A loaded (emulated) VM takes seconds to start the client: phases count from its first answer."""
    deadline = time.monotonic() + 60
    while not up.exists():  # noqa: ASYNC240 -- a script: nothing else runs
        if time.monotonic() > deadline or client.poll() is not None:
            raise RuntimeError("the client never got an answer from the VIP")
        await asyncio.sleep(0.05)


async def drill() -> dict[str, object]:
    sys.path.insert(0, str(JOB / "src"))
    from lvs_events.domain.config import Forwarding, Protocol
    from lvs_events.domain.table import Dest, Service, Table

    def table(w1: int | None, w2: int = 1) -> Table:
        dests = [] if w1 is None else [Dest("10.1.1.2", PORT, Forwarding.MASQ, w1)]
        dests.append(Dest("10.1.2.2", PORT, Forwarding.MASQ, w2))
        return Table((Service(Protocol.TCP, VIP, PORT, scheduler="rr", dests=tuple(dests)),))

    topology()
    servers = {1: start_server(1), 2: start_server(2)}
    # The director's agent: this process, in the director's network namespace.
    enter_netns("director")
    from lvs_events.agent.dataplane.ipvs import IpvsDataplane

    marks: list[tuple[float, float, str]] = []
    stop_file = "/tmp/client.stop"
    Path(stop_file).unlink(missing_ok=True)  # noqa: ASYNC240 -- a script: nothing else runs
    Path(stop_file + ".up").unlink(missing_ok=True)  # noqa: ASYNC240
    async with IpvsDataplane() as dp:
        await dp.reconcile(table(1))
        client = subprocess.Popen(  # noqa: ASYNC220 -- started once, read at the end
            ["ip", "netns", "exec", "client", sys.executable, "-c", CLIENT, VIP, str(PORT), stop_file],
            stdout=subprocess.PIPE,
        )
        await client_answered(client, Path(stop_file + ".up"))

        async def phase(name: str, t: Table | None, seconds: float) -> None:
            begin = time.time()
            if t is not None:
                await dp.reconcile(t)
            marks.append((begin, time.time(), name))  # the phase counts from the kernel's ack
            await asyncio.sleep(seconds)

        async def transition(name: str) -> None:
            """Ends the phase before an action outside the table (a server stopped or started):
            attempts begun from here until the next phase belong to ``~name``, no phase of note.
            The action waits a moment, so that attempts begun before it completed."""
            now = time.time()
            marks.append((now, now, f"~{name}"))
            await asyncio.sleep(0.5)

        await phase("both", None, 4)
        await phase("drain-real1", table(0), 5)  # weight 0: no new connections
        await phase("restore-real1", table(1), 4)
        await phase("stop-real1-drained", table(0), 1)  # graceful stop: drain, remove, stop
        await phase("stop-real1-removed", table(None), 0.5)
        await transition("stopping-real1")
        stop_server(servers[1])
        await phase("real1-stopped", None, 3)
        await transition("starting-real1")
        servers[1] = start_server(1)
        wait_http(1)  # serving, not just listening, before it goes back into the table
        await phase("real1-restarted-added", table(1), 4)
        await transition("killing-real1")
        stop_server(servers[1])  # abrupt stop: the table still sends to real1 until a check acts
        await phase("real1-killed-in-table", None, 2)
        await phase("real1-removed-after-kill", table(None), 3)
        marks.append((time.time(), time.time(), "end"))
        Path(stop_file).write_text("")  # noqa: ASYNC240
        out, _ = client.communicate(timeout=60)
    for p in servers.values():
        p.terminate()
    attempts: list[list[object]] = json.loads(out)
    return summarize(attempts, marks)


def summarize(attempts: list[list[object]], marks: list[tuple[float, float, str]]) -> dict[str, object]:
    """Attempts per phase, by answer. A phase runs from its table's ack to the start of the next
    phase's change: attempts begun while a change is on its way belong to no phase."""
    phases: dict[str, dict[str, int]] = {}
    offsets: dict[str, tuple[float, float]] = {}
    for i, (_begin, start, name) in enumerate(marks[:-1]):
        end = marks[i + 1][0]
        counts: dict[str, int] = {}
        for t, what in attempts:
            if start <= float(t) < end:  # type: ignore[arg-type]
                counts[str(what)] = counts.get(str(what), 0) + 1
        phases[name] = counts
        # when, after the phase's table was acked, each server first/last answered, or each kind
        # of failure first/last happened (ms)
        for t, what in attempts:
            if start <= float(t) < end:  # type: ignore[arg-type]
                key = f"{name}:{what}:ms"
                off = round((float(t) - start) * 1000, 1)  # type: ignore[arg-type]
                lo, hi = offsets.get(key, (off, off))
                offsets[key] = (min(lo, off), max(hi, off))
    total = len(attempts)
    failed = sum(1 for _, w in attempts if str(w).startswith(("ERR", "HTTP")))
    return {"attempts": total, "failed": failed, "phases": phases, "first_last_ms": offsets,
            "seconds": round(marks[-1][1] - marks[0][0], 2)}  # fmt: skip


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result = {"ok": True, "detail": asyncio.run(drill())}
    except Exception as e:
        import traceback

        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    (OUT / "traffic.json").write_text(json.dumps({"drill": result}, indent=1))
    print(json.dumps(result)[:2000], flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
