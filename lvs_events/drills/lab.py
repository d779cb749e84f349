"""A director pair in network namespaces on this host, for the HA drills (``lvs-events drill
--lab``, the tests and the bench).

Topology (one bridge in its own namespace, a veth per namespace)::

    <p>br:  br0 ── <p>-d1 ── dir1    198.51.100.1   etcd m0, coordinator, agent, service :80
                ── <p>-d2 ── dir2    198.51.100.2   etcd m1, coordinator, agent, service :80
                ── <p>-wi ── witness 198.51.100.3   etcd m2 (quorum with either director)
                ── <p>-cl ── client  198.51.100.100 the probe: connects to VIP:80 every 20 ms
                ── <p>-wa ── watch   198.51.100.101 asks "who has VIP" every 10 ms (ARP answers)

VIP 198.51.100.10/32. The "service" behind the VIP is a tiny TCP responder in each director
namespace that answers its node name: it stands in for IPVS, which this host's kernel lacks.
Documentation addresses are only used inside the namespaces; the test process talks to them only
through ``ip netns exec`` (helpers, curl) and netlink (``ip -n``), never over IP.

Trust: every gRPC connection is mutual TLS with a CA made for the lab (``<tmp>/pki``): the
coordinators and agents use their director's certificate (``dir1``, ``dir2``, their addresses
in the subject alternative names), each agent's Peer service admits only the other director,
and the helpers call as the operator ``drill``, or as a director to speak for it (the stale-term
publish of the fencing check). etcd is plaintext inside the namespaces.

Implements :class:`lvs_events.drills.drill.Pair`. For ``lvs-events drill`` against the lab as a running
pair (not ``--lab``), :meth:`NetnsLab.control` serves the faults on a Unix socket (a path: it works
across network namespaces) and :meth:`NetnsLab.operator_commands` gives the ``--*-command``
templates that reach it: ``python -m lvs_events.drills.lab ctl SOCKET ACTION NODE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from lvs_events.domain import codec
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.drills.etcd_lab import LabEtcd, find_etcd
from lvs_events.security import pki
from lvs_events.security.principal import Role

REPO = Path(__file__).resolve().parents[2]  # where the packages are (PYTHONPATH of the helpers)
NET = "198.51.100"
VIP = f"{NET}.10"
ADDR = {
    "dir1": f"{NET}.1",
    "dir2": f"{NET}.2",
    "witness": f"{NET}.3",
    "client": f"{NET}.100",
    "watch": f"{NET}.101",
}
CLUSTER = "drill"
OPERATOR = "drill"  # the helpers' and the CLI's identity in the lab
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None  # etcd data on tmpfs: no fsync latency
FAST_TIMING = {  # the drill profile: silence 0.05 * 4 = 0.2 s before a takeover, authority 0.3 s
    "--heartbeat-interval": "0.05",
    "--miss-limit": "4",
    "--keepalive-interval": "0.05",
    "--retry-deadline": "0.1",
    "--authority": "0.3",
    "--lease-ttl": "2",
}


def netns_available() -> str:
    """ "" when the lab can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("curl") is None:
        return "needs iproute2 and curl"
    if find_etcd() is None:
        return "needs the etcd binary"
    probe = f"lvprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return ""


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.decode().strip()}")


def lab_config() -> Config:
    web = VirtualService(
        protocol=Protocol.TCP,
        address=VIP,
        port=80,
        scheduler="wrr",
        reals=tuple(RealServer(f"192.0.2.{11 + i}", 80, weight=1) for i in range(3)),
        check=CheckSettings(checktype="on"),
    )
    return Config(globals=GlobalSettings(), virtuals=(web,))


class NetnsLab:
    def __init__(self, *, timing: dict[str, str] | None = None) -> None:
        p = f"lv{uuid.uuid4().hex[:5]}"
        self.prefix = p
        self.ns = {
            "br": f"{p}br",
            "dir1": f"{p}d1",
            "dir2": f"{p}d2",
            "witness": f"{p}wi",
            "client": f"{p}cl",
            "watch": f"{p}wa",
        }
        self.nodes: tuple[str, str] = ("dir1", "dir2")
        self.tmp = Path(tempfile.mkdtemp(prefix="lvs-drill-"))
        self.timing = timing or FAST_TIMING
        self.etcd: LabEtcd | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self._holders: dict[str, bool] = {"dir1": False, "dir2": False}
        self._holder_log: list[tuple[float, str, bool]] = []
        self._silent: dict[str, bool] = {"dir1": False, "dir2": False}
        self.silent_log: list[tuple[float, str, bool]] = []  # the ARP-silent copies on lo
        self._monitors: list[asyncio.subprocess.Process] = []
        self._monitor_tasks: list[asyncio.Task[None]] = []
        self._probe: asyncio.subprocess.Process | None = None
        self._probe_out: bytes = b""
        self._probe_task: asyncio.Task[bytes] | None = None
        self._arp: asyncio.subprocess.Process | None = None
        self._arp_task: asyncio.Task[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def _link(self, name: str) -> str:
        short = {"dir1": "d1", "dir2": "d2", "witness": "wi", "client": "cl", "watch": "wa"}
        return f"{self.prefix}-{short[name]}"

    def _net_up(self) -> None:
        br = self.ns["br"]
        for ns in self.ns.values():
            _run("ip", "netns", "add", ns)
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", br, "link", "set", "br0", "up")
        for name, addr in ADDR.items():
            ns, link = self.ns[name], self._link(name)
            _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", link, "netns", br)
            _run("ip", "-n", br, "link", "set", link, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _spawn(self, key: str, ns: str, argv: list[str]) -> None:
        full = ["ip", "netns", "exec", ns, *argv]
        self.argv[key] = full
        log = open(self.tmp / f"{key}.log", "ab")  # noqa: SIM115 -- owned by the process
        self.procs[key] = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        log.close()

    def coordinators(self) -> str:
        return f"{ADDR['dir1']}:7420,{ADDR['dir2']}:7420"

    @property
    def pki_dir(self) -> Path:
        return self.tmp / "pki"

    def _make_pki(self) -> None:
        pki.init(
            self.pki_dir,
            [
                pki.Identity("dir1", Role.DIRECTOR, (ADDR["dir1"],)),
                pki.Identity("dir2", Role.DIRECTOR, (ADDR["dir2"],)),
                pki.Identity(OPERATOR, Role.OPERATOR),
            ],
        )

    def tls_argv(self, name: str = "") -> list[str]:
        """``--tls-ca/--tls-cert/--tls-key`` of identity ``name`` (default: the operator)."""
        who = name or OPERATOR
        d = self.pki_dir
        return [
            *("--tls-ca", str(d / pki.CA_CERT)),
            *("--tls-cert", str(pki.cert_path(d, who)), "--tls-key", str(pki.key_path(d, who))),
        ]

    def tls_env(self, name: str = "") -> dict[str, str]:
        """The same identity as ``LVS_EVENTS_CA``/``_CERT``/``_KEY`` (for the CLI)."""
        who = name or OPERATOR
        d = self.pki_dir
        return {
            "LVS_EVENTS_CA": str(d / pki.CA_CERT),
            "LVS_EVENTS_CERT": str(pki.cert_path(d, who)),
            "LVS_EVENTS_KEY": str(pki.key_path(d, who)),
        }

    def _agent_argv(self, node: str) -> list[str]:
        other = "dir2" if node == "dir1" else "dir1"
        state = self.tmp / f"state-{node}"
        state.mkdir(exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "lvs_events.agent.main",
            "--node",
            node,
            "--cluster",
            CLUSTER,
            "--coordinators",
            f"{ADDR[node]}:7420,{ADDR[other]}:7420",
            "--state-dir",
            str(state),
            "--no-health-checks",
            "--log-format",
            "json",
            "--peer",
            f"{ADDR[other]}:7421",
            "--peer-node",
            other,
            *self.tls_argv(node),
            "--listen-peer",
            f"{ADDR[node]}:7421",
            "--vip",
            VIP,
            "--vip-interface",
            "eth0",
            "--no-config-vips",
            "--timeout",
            "2",
            "--drain-timeout",
            "2",
        ]
        for k, v in self.timing.items():
            argv += [k, v]
        if node == "dir1":
            argv += ["--config-json", str(self.tmp / "config.json"), "--publish-config"]
        return argv

    async def start(self) -> None:
        await asyncio.to_thread(self._make_pki)
        await asyncio.to_thread(self._net_up)
        for name in self.nodes:
            proc = await asyncio.create_subprocess_exec(
                "ip", "-n", self.ns[name], "monitor", "address", stdout=asyncio.subprocess.PIPE
            )
            self._monitors.append(proc)
            self._monitor_tasks.append(asyncio.create_task(self._watch(name, proc)))
        self.etcd = await asyncio.to_thread(
            LabEtcd,
            [self.ns["dir1"], self.ns["dir2"], self.ns["witness"]],
            [ADDR["dir1"], ADDR["dir2"], ADDR["witness"]],
            start_timeout=30.0,
            tmp_root=SHM,
            # a member coming back from a partition must not depose the raft leader (it would
            # stall every etcd call, and so the keepalives, for an election timeout)
            extra_args=["--pre-vote"],
        )
        (self.tmp / "config.json").write_bytes(codec.dumps(lab_config()))
        eps = self.etcd.endpoints
        for node, i in (("dir1", 0), ("dir2", 1)):
            order = [eps[i]] + [e for j, e in enumerate(eps) if j != i]
            self._spawn(
                f"coordinator-{node}",
                self.ns[node],
                [
                    sys.executable,
                    "-m",
                    "lvs_events.coordinator.main",
                    "--listen",
                    f"{ADDR[node]}:7420",
                    "--insecure",  # the lab's namespaces are its own network; no PKI in the lab
                    "--etcd-endpoints",
                    ",".join(order),
                    "--cluster",
                    CLUSTER,
                    "--etcd-timeout",
                    "1",
                    "--grace",
                    "1",
                    *self.tls_argv(node),
                    "--log-format",
                    "json",
                ],
            )
            self._spawn(
                f"service-{node}",
                self.ns[node],
                [sys.executable, "-m", "lvs_events.drills.drill", "serve", node, "--port", "80"],
            )
        for node in self.nodes:
            self._spawn(f"agent-{node}", self.ns[node], self._agent_argv(node))

    async def close(self) -> None:
        for key in [k for k in self.procs if k.startswith("agent-")]:
            p = self.procs[key]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for key, p in self.procs.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(p.wait, 5 if key.startswith("agent-") else 0.1)
            if p.poll() is None:
                p.kill()
                await asyncio.to_thread(p.wait, 5)
        for probe in (self._probe, self._arp):
            if probe is not None and probe.returncode is None:
                probe.kill()
                await probe.wait()
        for m in self._monitors:
            if m.returncode is None:
                m.kill()
                await m.wait()
        for t in self._monitor_tasks:
            t.cancel()
        await asyncio.gather(*self._monitor_tasks, return_exceptions=True)
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.close)
        await asyncio.to_thread(self._net_down)
        if os.environ.get("LVS_DRILL_KEEP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def __aenter__(self) -> NetnsLab:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _net_down(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    # -- VIP holders ---------------------------------------------------------------------------

    async def _watch(self, node: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            text = line.decode(errors="replace")
            if f" {VIP}/" not in text:
                continue
            # "[Deleted ]IDX: DEV    inet VIP/32 ...": held = on eth0 (answering ARP); on lo
            # it is the silent copy of a switchover, not a holder
            words = text.split()
            holds = words[0] != "Deleted"
            dev = words[1 if holds else 2]
            now = time.time()
            state, log = self._holders, self._holder_log
            if dev != "eth0":
                state, log = self._silent, self.silent_log
            if state[node] != holds:
                state[node] = holds
                log.append((now, node, holds))

    async def vip_holders(self) -> set[str]:
        return {n for n, h in self._holders.items() if h}

    def holder_log(self) -> list[tuple[float, str, bool]]:
        return list(self._holder_log)

    async def linked(self) -> bool:
        try:
            r = await self.helper("status")
        except RuntimeError:
            return False
        return bool(r.get("linked"))

    # -- the client ------------------------------------------------------------------------------

    async def start_probe(self, seconds: float) -> None:
        self._probe = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.ns["client"],
            sys.executable,
            "-m",
            "lvs_events.drills.drill",
            "probe",
            VIP,
            "--seconds",
            str(seconds),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self._arp = await asyncio.create_subprocess_exec(
            *("ip", "netns", "exec", self.ns["watch"], sys.executable, "-m", "lvs_events.drills.drill"),
            *("arpwatch", "eth0", ADDR["watch"], VIP, "--seconds", str(seconds), "--every", "0.01"),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

        async def read(proc: asyncio.subprocess.Process) -> bytes:
            out, _ = await proc.communicate()
            return out

        self._probe_task = asyncio.create_task(read(self._probe))
        self._arp_task = asyncio.create_task(read(self._arp))
        await asyncio.sleep(0.3)  # interpreter start-up

    async def probe_results(self) -> list[tuple[float, bool, str]]:
        if self._probe_task is None:
            return []
        async with asyncio.timeout(30):
            out = await self._probe_task
        self._probe_task = None
        rows = []
        for line in out.decode().splitlines():
            with contextlib.suppress(ValueError):
                t, ok, who = json.loads(line)
                rows.append((float(t), bool(ok), str(who)))
        return rows

    async def arp_results(self) -> list[tuple[float, list[str]]]:
        if self._arp_task is None:
            return []
        async with asyncio.timeout(30):
            out = await self._arp_task
        self._arp_task = None
        rows = []
        for line in out.decode().splitlines():
            with contextlib.suppress(ValueError):
                t, macs = json.loads(line)
                rows.append((float(t), [str(m) for m in macs]))
        return rows

    # -- faults --------------------------------------------------------------------------------

    async def kill_agent(self, node: str) -> None:
        p = self.procs[f"agent-{node}"]
        p.send_signal(signal.SIGKILL)
        await asyncio.to_thread(p.wait, 5)

    async def start_agent(self, node: str) -> None:
        self._spawn(f"agent-{node}", self.ns[node], self._agent_argv(node))

    async def stop_agent(self, node: str) -> None:
        p = self.procs[f"agent-{node}"]
        p.send_signal(signal.SIGTERM)
        await asyncio.to_thread(p.wait, 10)

    async def isolate(self, node: str) -> None:
        await asyncio.to_thread(_run, "ip", "-n", self.ns["br"], "link", "set", self._link(node), "down")

    async def heal(self, node: str) -> None:
        await asyncio.to_thread(_run, "ip", "-n", self.ns["br"], "link", "set", self._link(node), "up")

    async def stop_etcd(self, node: str) -> None:
        assert self.etcd is not None
        await asyncio.to_thread(self.etcd.kill, self.nodes.index(node))

    async def start_etcd(self, node: str) -> None:
        assert self.etcd is not None
        await asyncio.to_thread(self.etcd.start, self.nodes.index(node))

    # -- views ---------------------------------------------------------------------------------

    async def helper(self, *args: str) -> Any:
        """A drill helper in the witness namespace, as the operator; ``publish NODE TERM`` as
        NODE (a director speaks for itself only)."""
        identity = args[1] if args and args[0] == "publish" else OPERATOR
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.ns["witness"],
            sys.executable,
            "-m",
            "lvs_events.drills.drill",
            *args,
            "--coordinators",
            self.coordinators(),
            "--cluster",
            CLUSTER,
            *self.tls_argv(identity),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"helper {args}: {err.decode()[-2000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    async def leader(self) -> tuple[str, int]:
        """etcd's leader ("" while the coordinators are not answering yet)."""
        try:
            r = await self.helper("leader")
        except RuntimeError:
            return "", 0
        return str(r["node"]), int(r["term"])

    async def settle(self) -> None:
        return None  # the agents' own logs, read as they are

    def agent_events(self, node: str) -> list[dict[str, Any]]:
        out = []
        path = self.tmp / f"agent-{node}.log"
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if isinstance(d, dict):
                    out.append(d)
        return out

    def applied_digest(self, node: str) -> str:
        try:
            return str(json.loads((self.tmp / f"state-{node}" / "status.json").read_text()).get("digest", ""))
        except (OSError, ValueError):
            return ""

    # -- faults from outside (lvs-events drill against the lab as a running pair) -------------

    CONTROL_ACTIONS = ("kill", "start", "isolate", "heal", "etcd-stop", "etcd-start")

    async def _control_action(self, action: str, node: str) -> None:
        if node not in self.nodes:
            raise ValueError(f"unknown node {node!r}")
        fn = {
            "kill": self.kill_agent,
            "start": self.start_agent,
            "isolate": self.isolate,
            "heal": self.heal,
            "etcd-stop": self.stop_etcd,
            "etcd-start": self.start_etcd,
        }.get(action)
        if fn is None:
            raise ValueError(f"unknown action {action!r}")
        await fn(node)

    @contextlib.asynccontextmanager
    async def control(self) -> AsyncIterator[Path]:
        """Serve the faults on a Unix socket while the context is open; yields its path."""
        path = self.tmp / "control.sock"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                action, node = (await reader.readline()).decode().split()
                await self._control_action(action, node)
                writer.write(b"ok\n")
            except Exception as e:  # reported to the command, which exits 1
                writer.write(f"error {e}\n".encode())
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handle, path=str(path))
        try:
            yield path
        finally:
            server.close()
            await server.wait_closed()
            path.unlink(missing_ok=True)

    def operator_commands(self, control: Path) -> dict[str, str]:
        """``lvs-events drill --KEY-command`` templates acting on this lab through ``control``."""
        base = f"{sys.executable} -m lvs_events.drills.lab ctl {control}"
        return {a: f"{base} {a} {{node}}" for a in self.CONTROL_ACTIONS}

    def log_tail(self, key: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.tmp / f"{key}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return str(e)


def _ctl(path: str, action: str, node: str) -> int:
    """``python -m lvs_events.drills.lab ctl SOCKET ACTION NODE``: ask the lab's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(f"{action} {node}\n".encode())
        reply = s.makefile().readline().strip()
    if reply != "ok":
        print(f"lab control {action} {node}: {reply or 'no answer'}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != "ctl":
        print("usage: python -m lvs_events.drills.lab ctl SOCKET ACTION NODE", file=sys.stderr)
        return 2
    return _ctl(args[1], args[2], args[3])


if __name__ == "__main__":
    sys.exit(main())
