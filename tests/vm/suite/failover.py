"""Killing the active director under real traffic, INSIDE the VM: the whole stack, the kernel's IPVS.

Everything real: etcd (one member), a coordinator, two ``lvs-agent --dataplane ipvs`` processes
in HA (``--peer``, ``--vip``; the election through the coordinator and etcd), IPVS masquerading
(NAT) to two real servers (``python3 -m http.server``), a client opening connection after
connection to the VIP. Writes ``/job/out/failover.json``.

One-arm NAT: one L2 segment (``br0`` in the root namespace), the real servers' gateway IS the VIP,
so return traffic follows the VIP to whichever director is active::

    root      br0 10.0.0.3/24   etcd :2379, coordinator :7420, this script
    ha-d1     eth0 10.0.0.11/24 agent dir1 (+ VIP 10.0.0.100/32 while active)   IPVS: VIP:8000 masq
    ha-d2     eth0 10.0.0.12/24 agent dir2 (+ VIP 10.0.0.100/32 while active)   -> 10.0.0.21, .22
    ha-r1     eth0 10.0.0.21/24 default via 10.0.0.100 (the VIP), http.server :8000
    ha-r2     eth0 10.0.0.22/24 default via 10.0.0.100
    ha-cl     eth0 10.9.0.2/24  the client, in another subnet (so that a real server's reply
                                goes to its gateway, the VIP, never straight to the client);
                                10.0.0.100 on-link

Directors forward (``ip_forward``), send no ICMP redirects (they forward the real servers'
replies out of the interface they came in on), and reach 10.9.0.0/24 on-link. The agent adds the
VIP on becoming active, announces it (gratuitous ARP: the client's and the real servers' caches
move to the new director), and its guard process removes it when the agent dies.

The drill, in order:

1. ``before``: one active, the standby's kernel holds the same table (digest of a kernel dump
   in each namespace), the client gets answers from both real servers;
2. ``kill-active``: SIGKILL the active's agent; the standby detects the silence, takes over
   through etcd, adds the VIP; the client's attempts are counted from the kill;
3. the killed agent is started again: it comes back as the standby, same table;
4. ``cut-active``: the new active's namespace is cut off (its link on the bridge goes down):
   it loses etcd and its peer, lets go after ``authority``; the other takes over; then healed.

Never two VIP holders: ``ip -n <ns> monitor address`` on both directors for the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import Stack, environment_ok

JOB = Path(os.environ.get("JOB", "/job"))
OUT = JOB / "out"
SUITE = Path(__file__).resolve().parent
VIP, PORT = "10.0.0.100", 8000
CTL = "10.0.0.3"
NS = {"dir1": "ha-d1", "dir2": "ha-d2", "real1": "ha-r1", "real2": "ha-r2", "client": "ha-cl"}
ADDR = {"dir1": "10.0.0.11", "dir2": "10.0.0.12", "real1": "10.0.0.21", "real2": "10.0.0.22",
        "client": "10.9.0.2"}  # fmt: skip
NODES = ("dir1", "dir2")
# The VM is emulated (TCG): its processes stall for a second at a time when the host is busy (the
# agents log ha.stalled), and with the default timing (authority 2.5 s, keepalive deadline 0.75 s)
# the active kept losing its confirmations and the pair flapped. So a lenient profile: silence 2 s,
# keepalive every 0.5 s with a 1.5 s deadline, authority 5 s, lease TTL 6 s. A failover costs
# about silence + election + authority here; the figures are the VM's, not a tuned deployment's.
TIMING = ["--heartbeat-interval", "0.25", "--miss-limit", "8", "--keepalive-interval", "0.5",
          "--retry-deadline", "1.5", "--authority", "5", "--lease-ttl", "6"]  # fmt: skip
CLIENT_EVERY, CLIENT_TIMEOUT = 0.1, 0.5


def sh(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = list(args) if netns is None else ["ip", "netns", "exec", netns, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def port_of(name: str) -> str:
    """The bridge-side veth of a namespace (in the root namespace)."""
    return NS[name]


def topology() -> None:
    teardown()
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "addr", "add", f"{CTL}/24", "dev", "br0")
    sh("ip", "link", "set", "br0", "up")
    for name, ns in NS.items():
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
        sh("ip", "link", "add", port_of(name), "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", port_of(name), "master", "br0", "up")
        prefix = 24
        sh("ip", "addr", "add", f"{ADDR[name]}/{prefix}", "dev", "eth0", netns=ns)
        sh("ip", "link", "set", "eth0", "up", netns=ns)
        for k in ("all", "default", "eth0"):
            sh("sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0", netns=ns)
    for d in NODES:
        ns = NS[d]
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=ns)
        for k in ("all", "default", "eth0"):
            sh("sysctl", "-qw", f"net.ipv4.conf.{k}.send_redirects=0", netns=ns)
        sh("ip", "route", "add", "10.9.0.0/24", "dev", "eth0", netns=ns)
        sh("sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", netns=ns, check=False)
    for r in ("real1", "real2"):
        ns = NS[r]
        for k in ("all", "default", "eth0"):
            sh("sysctl", "-qw", f"net.ipv4.conf.{k}.accept_redirects=0", netns=ns)
        sh("ip", "route", "add", "default", "via", VIP, "dev", "eth0", netns=ns)
    sh("ip", "route", "add", f"{VIP}/32", "dev", "eth0", netns=NS["client"])


def teardown() -> None:
    for ns in NS.values():
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", "br0", check=False)


def config_json(path: Path) -> None:
    from lvs_events.domain import codec
    from lvs_events.domain.config import (
        CheckSettings,
        Config,
        Forwarding,
        Protocol,
        RealServer,
        VirtualService,
    )

    web = VirtualService(
        protocol=Protocol.TCP,
        address=VIP,
        port=PORT,
        scheduler="rr",
        reals=tuple(RealServer(ADDR[r], PORT, Forwarding.MASQ, 1) for r in ("real1", "real2")),
        check=CheckSettings(checktype="on"),
    )
    path.write_bytes(codec.dumps(Config(virtuals=(web,))))


def start_server(name: str) -> subprocess.Popen[bytes]:
    root = Path(f"/tmp/ha-www-{name}")
    root.mkdir(exist_ok=True)
    (root / "id").write_text(name)
    p = subprocess.Popen(
        ["ip", "netns", "exec", NS[name], sys.executable, "-m", "http.server", str(PORT),
         "--bind", ADDR[name], "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sh("ss", "-ltn", f"sport = :{PORT}", netns=NS[name]).count("LISTEN"):
            return p
        time.sleep(0.1)
    raise RuntimeError(f"{name}'s http.server did not start")


CLIENT = r"""
import http.client, json, os, sys, time
vip, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
every, timeout = float(sys.argv[4]), float(sys.argv[5])
while not os.path.exists(stop_file):
    t, m = time.time(), time.monotonic()
    try:
        c = http.client.HTTPConnection(vip, port, timeout=timeout)
        c.request("GET", "/id")
        r = c.getresponse()
        body = r.read().decode()
        c.close()
        what = body if r.status == 200 else f"HTTP {r.status}"
    except Exception as e:
        what = "ERR " + type(e).__name__
    sys.stdout.write(json.dumps([t, what]) + "\n")
    sys.stdout.flush()
    time.sleep(max(0.0, every - (time.monotonic() - m)))
"""


T0 = time.monotonic()


def progress(what: str) -> None:
    print(f"[failover +{time.monotonic() - T0:6.1f}s] {what}", flush=True)


def ok(what: str) -> bool:
    return not what.startswith(("ERR", "HTTP"))


class Drill:
    def __init__(self) -> None:
        self.stack = Stack(Path("/tmp/ha"), cluster="vm-ha")
        self.holders: dict[str, bool] = dict.fromkeys(NODES, False)
        self.holder_log: list[tuple[float, str, bool]] = []
        self.two_holders_at: list[float] = []
        self.monitors: list[asyncio.subprocess.Process] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.attempts: list[tuple[float, str]] = []
        self.client: asyncio.subprocess.Process | None = None
        self.servers: list[subprocess.Popen[bytes]] = []
        self.stop_file = Path("/tmp/ha-client.stop")

    # -- observation -----------------------------------------------------------------------------

    async def _watch(self, node: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace")
            if f" {VIP}/" not in text:
                continue
            holds = not text.startswith("Deleted")
            if self.holders[node] != holds:
                self.holders[node] = holds
                now = time.time()
                self.holder_log.append((now, node, holds))
                if sum(self.holders.values()) > 1:
                    self.two_holders_at.append(now)

    async def _read_client(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            with contextlib.suppress(ValueError):
                t, what = json.loads(line)
                self.attempts.append((float(t), str(what)))

    def holder_set(self) -> set[str]:
        return {n for n, h in self.holders.items() if h}

    async def leader(self) -> tuple[str, int]:
        from lvs_events.client.ha import LeaderElectionClient

        client = LeaderElectionClient([self.stack.coordinator_endpoint], timeout=2.0)
        try:
            info = await client.get_leader()
        except Exception:
            return "", 0
        finally:
            await client.close()
        return info.node, info.term

    async def kernel(self, node: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", NS[node], sys.executable, str(SUITE / "director.py"), "--dump",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"kernel dump in {node}: {err.decode()[-1000:]}")
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    async def tables(self) -> dict[str, Any]:
        """Each director's applied digest (its status file) and kernel dump."""
        out: dict[str, Any] = {}
        for n in NODES:
            out[n] = {"applied": str(self.stack.applied(n).get("digest", "")), **(await self.kernel(n))}
        return out

    async def wait_for(self, what: Any, cond: Any, within: float, step: float = 0.05) -> float:
        """Until ``await cond()``; else raise naming ``what`` (a string, or a function giving one)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if await cond():
                return time.monotonic() - t0
            await asyncio.sleep(step)
        raise RuntimeError(f"{what() if callable(what) else what}: not within {within:.0f}s")

    async def same_tables(self, within: float = 60) -> dict[str, Any]:
        """Until both agents applied the same table and both kernels hold it."""
        last: dict[str, Any] = {}
        rounds = [0]

        async def cond() -> bool:
            # cheap first: the status files, then the kernels
            rounds[0] += 1
            applied = {n: str(self.stack.applied(n).get("digest", ""))[:12] for n in NODES}
            if len(set(applied.values())) != 1 or "" in applied.values():
                if rounds[0] % 10 == 1:
                    progress(f"waiting for the same applied table: {applied}")
                return False
            last.update(await self.tables())
            digests = {last[n]["digest"] for n in NODES} | {last[n]["applied"] for n in NODES}
            same = len(digests) == 1 and all(last[n]["dests"] == 2 for n in NODES)
            if not same:
                progress(f"kernels differ: {last}")
            return same

        took = await self.wait_for(lambda: f"both kernels hold the applied table ({last})", cond, within, 0.5)
        return {**last, "rounds": rounds[0], "seconds": round(took, 2)}

    async def ready(self, within: float = 120) -> tuple[str, int]:
        state: dict[str, Any] = {}

        async def cond() -> bool:
            node, term = await self.leader()
            state["leader"] = (node, term)
            return bool(node) and self.holder_set() == {node}

        await self.wait_for(
            lambda: f"one active holding the VIP ({state}, holders {self.holders})", cond, within, 0.2
        )
        node, term = state["leader"]
        await asyncio.sleep(2.0)  # and still the same one a moment later
        if await self.leader() != (node, term) or self.holder_set() != {node}:
            return await self.ready(within)
        return str(node), int(term)

    # -- the run ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(topology)
        for n in NODES:
            proc = await asyncio.create_subprocess_exec(
                "ip", "-n", NS[n], "monitor", "address", stdout=asyncio.subprocess.PIPE
            )
            self.monitors.append(proc)
            self.tasks.append(asyncio.create_task(self._watch(n, proc)))
        await asyncio.to_thread(self.stack.etcd, CTL)
        self.stack.coordinator(CTL)
        cfg = self.stack.tmp / "config.json"
        config_json(cfg)
        self.servers = [await asyncio.to_thread(start_server, r) for r in ("real1", "real2")]
        for n in NODES:
            self.stack.agent(n, *self.ha_args(n), *(
                ["--config-json", str(cfg), "--publish-config"] if n == "dir1" else []
            ), netns=NS[n])  # fmt: skip

    def ha_args(self, node: str) -> list[str]:
        other = "dir2" if node == "dir1" else "dir1"
        return [
            "--peer", f"{ADDR[other]}:7421", "--listen-peer", f"{ADDR[node]}:7421",
            "--insecure",  # a plaintext Peer service off loopback: this suite tests IPVS, not TLS
            "--vip", VIP, "--vip-interface", "eth0", "--no-config-vips",
            "--timeout", "2", "--drain-timeout", "2", *TIMING,
        ]  # fmt: skip

    async def start_client(self) -> None:
        self.stop_file.unlink(missing_ok=True)
        self.client = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", NS["client"], sys.executable, "-c", CLIENT, VIP, str(PORT),
            str(self.stop_file), str(CLIENT_EVERY), str(CLIENT_TIMEOUT),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.tasks.append(asyncio.create_task(self._read_client(self.client)))

        async def answered() -> bool:
            return any(ok(w) for _, w in self.attempts)

        await self.wait_for("the client's first answer from the VIP", answered, 60, 0.1)

    def window(self, start: float, end: float) -> list[tuple[float, str]]:
        return [(t, w) for t, w in self.attempts if start <= t < end]

    async def fault(self, name: str, old: str, old_term: int, act: Any, after: float) -> dict[str, Any]:
        """Inflict ``act`` on the active ``old``; wait for the other to hold the VIP; probe ``after``
        seconds more; report the client's attempts from the fault on."""
        new = "dir2" if old == "dir1" else "dir1"
        t0 = time.time()
        await act()

        async def moved() -> bool:
            return self.holder_set() == {new}

        progress(f"{name}: done, waiting for {new} to hold the VIP")
        await self.wait_for(f"{name}: {new} holds the VIP", moved, 60, 0.02)
        progress(f"{name}: {new} holds the VIP")
        await asyncio.sleep(after)
        t_end = time.time()
        leader, term = await self.leader()
        rows = self.window(t0, t_end)
        gained = [t for t, n, h in self.holder_log if n == new and h and t >= t0]
        lost = [t for t, n, h in self.holder_log if n == old and not h and t >= t0]
        vip_at = min(gained)
        after_vip = [t for t, w in rows if t >= vip_at and ok(w)]
        first = min(after_vip) if after_vip else None
        failed = [t for t, w in rows if not ok(w)]
        return {
            "old_active": old,
            "old_term": old_term,
            "new_active": leader,
            "new_term": term,
            "attempts": len(rows),
            "failed": len(failed),
            "errors": sorted({w for _, w in rows if not ok(w)}),
            "ok_before_vip": sum(1 for t, w in rows if t < vip_at and ok(w)),
            "failed_after_first_connection": sum(1 for t in failed if first is not None and t > first),
            "last_failure_s": round(max(failed) - t0, 3) if failed else None,
            "old_let_go_s": round(min(lost) - t0, 3) if lost else None,
            "vip_s": round(vip_at - t0, 3),
            "first_connection_s": None if first is None else round(first - t0, 3),
            "answered_by": sorted({w for t, w in rows if first is not None and t >= first and ok(w)}),
            "last_10_ok": all(ok(w) for _, w in rows[-10:]) and len(rows) >= 10,
            "probe_seconds": round(t_end - t0, 2),
        }

    async def fenced(self, node: str, term: int) -> bool:
        """An event carrying the old active's term is refused by the coordinator."""
        from lvs_events.client.events import new_event
        from lvs_events.client.log import CoordinatorClient
        from lvs_events.domain.events import RealServerHealth

        async with CoordinatorClient([self.stack.coordinator_endpoint], timeout=6.0) as c:
            ev = new_event(
                RealServerHealth(f"TCP {VIP}:{PORT}", f"{ADDR['real1']}:{PORT}", up=True, observer=node),
                cluster=self.stack.cluster, origin=node, actor="vm-drill", term=term,
            )  # fmt: skip
            (ack,) = await c.publish([ev])
        return ack.error_code == "FAILED_PRECONDITION"

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        t_start = time.time()
        await self.start()
        progress("started etcd, coordinator, real servers, agents")
        old, old_term = await self.ready()
        progress(f"{old} is active (term {old_term})")
        out["before"] = {"active": old, "term": old_term, "tables": await self.same_tables()}
        progress("both kernels hold the table")
        await self.start_client()
        progress("the client is answered")
        t_client = time.time()
        await asyncio.sleep(2.0)
        rows = self.window(t_client, time.time())
        out["before"]["attempts"] = len(rows)
        out["before"]["failed"] = sum(1 for _, w in rows if not ok(w))
        out["before"]["answered_by"] = sorted({w for _, w in rows if ok(w)})

        # 2. SIGKILL the active's agent
        async def kill() -> None:
            await asyncio.to_thread(self.stack.kill, f"agent-{old}")

        kill_r = await self.fault("kill-active", old, old_term, kill, after=4.0)
        kill_r["fenced_refused"] = await self.fenced(old, old_term)
        out["kill_active"] = kill_r
        # 3. the killed agent comes back as the standby, with the same table
        self.stack.respawn(f"agent-{old}")
        progress(f"{old}'s agent restarted")
        kill_r["tables_after_restart"] = await self.same_tables()
        new, new_term = await self.ready()
        kill_r["active_after_restart"] = new
        progress(f"{new} is active (term {new_term}), both kernels hold the table")

        # 4. cut the new active off (its link on the bridge), then heal
        async def cut() -> None:
            await asyncio.to_thread(sh, "ip", "link", "set", port_of(new), "down")

        cut_r = await self.fault("cut-active", new, new_term, cut, after=4.0)
        await asyncio.to_thread(sh, "ip", "link", "set", port_of(new), "up")
        progress(f"{new} healed")
        cut_r["tables_after_heal"] = await self.same_tables()
        progress("both kernels hold the table")
        out["cut_active"] = cut_r
        await asyncio.sleep(1.0)  # the healed node's first decisions count too
        out["end_active"] = (await self.ready())[0]
        out["end_holders"] = sorted(self.holder_set())
        out["two_holders"] = bool(self.two_holders_at)
        out["holder_log"] = [(round(t - t_start, 3), n, h) for t, n, h in self.holder_log]
        out["total_attempts"] = len(self.attempts)
        out["total_failed"] = sum(1 for _, w in self.attempts if not ok(w))
        out["timing"] = " ".join(TIMING)
        out["client"] = {"every_s": CLIENT_EVERY, "timeout_s": CLIENT_TIMEOUT}
        out["roles"] = {
            n: [
                (e.get("role"), e.get("term"))
                for e in self.stack.events(f"agent-{n}")
                if e.get("event") == "ha.role"
            ]
            for n in NODES
        }
        return out

    async def close(self) -> None:
        self.stop_file.write_text("")
        if self.client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.client.wait()
            if self.client.returncode is None:
                self.client.kill()
                await self.client.wait()
        await asyncio.to_thread(self.stack.close)
        for m in self.monitors:
            if m.returncode is None:
                m.kill()
                await m.wait()
        for p in self.servers:
            p.terminate()
            p.wait()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def drill() -> dict[str, Any]:
    why = environment_ok()
    if why:
        raise RuntimeError(why)
    from lvs_events import logs

    logs.configure("json", "WARNING")  # this process's clients: quiet
    d = Drill()
    try:
        return await d.run()
    except BaseException:
        for key in d.stack.procs:
            print(f"--- {key}\n{d.stack.tail(key)}", flush=True)
        raise
    finally:
        await d.close()
        await asyncio.to_thread(teardown)
        logs = OUT / "failover-logs"  # for a look from the host: OUT_DIR/failover-logs/
        logs.mkdir(exist_ok=True)
        for f in d.stack.tmp.glob("*.log"):
            (logs / f.name).write_bytes(f.read_bytes()[-2_000_000:])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result: dict[str, Any] = {"ok": True, "detail": asyncio.run(drill())}
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    (OUT / "failover.json").write_text(json.dumps({"drill": result}, indent=1))
    print(json.dumps(result)[:3000], flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
