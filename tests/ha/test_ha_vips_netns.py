"""The VIPs of a real ``lvs-agent`` pair when an agent dies or stops, in network namespaces
made here: each director a namespace of its own with a VIP interface (its own address and an
unrelated one on it too); the coordinator runs in this process on a real etcd and both
agents reach it, and each other's Peer service, over unix sockets (the file system is shared
across namespaces).

* SIGKILL of the old active during a planned switchover's linger (its VIPs ARP-silent on ``lo``,
  the successor holding them): the crash guard is still armed and removes the silent copy; the
  successor keeps the VIPs. SIGTERM then: the agent removes the copy itself.
* SIGKILL of the active: the guard removes its VIPs, and nothing else.
* SIGTERM of the active (a clean close): it lets go of exactly its VIPs, resigns (the standby
  takes over at once), leaves every other address alone, and leaves no guard behind that could
  remove anything later.

Needs root and ``ip netns`` (skipped otherwise; under CI a missing capability is a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from lvs_events.client.ha import LeaderElectionClient, SwitchoverFailed, switchover
from lvs_events.domain import codec
from lvs_events.domain.config import Config, Protocol, RealServer, VirtualService
from lvs_events.drills.lab import netns_available
from tests.agent.cluster import CLUSTER, coordinators
from tests.conftest import in_ci
from tests.support.etcd import EtcdCluster

pytestmark = [pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STATIC_VIP = "10.77.0.10"
OWN = {"10.77.0.1/24", "10.77.0.99/32"}  # the interface's other addresses: never touched
HELD = {f"{STATIC_VIP}/32"}
LOOPBACK = "127.0.0.1/8"


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


class Director:
    """One director: a namespace with a VIP interface ``vip0``, and an ``lvs-agent`` in it."""

    def __init__(self, node: str, peer: str, base: Path, coordinator: str) -> None:
        self.node = node
        self.ns = f"lvv{os.getpid()}{uuid.uuid4().hex[:4]}{node[-1]}"
        self.peer_socket = f"unix:{base / f'{node}.peer'}"
        self.other_socket = f"unix:{base / f'{peer}.peer'}"
        self.coordinator = coordinator
        self.state_dir = base / node
        self.log_path = base / f"{node}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        _ip("netns", "add", self.ns)
        try:
            self.ip("link", "set", "lo", "up")
            # both ends of a veth pair in the namespace (no dummy driver everywhere): a link up
            self.ip("link", "add", "vip0", "type", "veth", "peer", "name", "vip0p")
            self.ip("link", "set", "vip0p", "up")
            self.ip("link", "set", "vip0", "up")
            for a in sorted(OWN):
                self.ip("addr", "add", a, "dev", "vip0")
        except BaseException:
            self.close()
            raise

    def ip(self, *args: str) -> str:
        return _ip("-n", self.ns, *args)

    def addrs(self, dev: str) -> set[str]:
        out = json.loads(self.ip("-j", "addr", "show", "dev", dev))
        return {
            f"{a['local']}/{a['prefixlen']}"
            for link in out
            for a in link.get("addr_info", [])
            if a["family"] == "inet"
        }

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.ns).split()]

    def start(self, config: Path, *, publish_config: bool) -> None:
        self.state_dir.mkdir(exist_ok=True)
        argv = [
            "ip", "netns", "exec", self.ns, sys.executable, "-m", "lvs_events.agent.main",
            "--node", self.node,
            "--cluster", CLUSTER,
            "--coordinators", self.coordinator,
            "--state-dir", str(self.state_dir),
            "--log-format", "json",
            "--no-health-checks",
            "--config-json", str(config),
            "--peer", self.other_socket,
            "--listen-peer", self.peer_socket,
            "--vip", STATIC_VIP,
            "--vip-interface", "vip0",
            # the VIP set is read when the VIPs are added, and an agent that starts without a
            # state file may win the election before it has folded the configuration: only
            # --vip, so the set is the same at every role change
            "--no-config-vips",
        ]  # fmt: skip
        if publish_config:
            argv.append("--publish-config")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=logf, cwd=REPO, env=env)

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids():  # a guard left behind by a failed test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False, timeout=30)


def _config() -> Config:
    web = VirtualService(Protocol.TCP, STATIC_VIP, 80, reals=(RealServer("10.77.0.50", 80),))
    return Config(virtuals=(web,))


async def until(condition: Callable[[], bool], what: str | Callable[[], str], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what if isinstance(what, str) else what()}")
        await asyncio.sleep(0.05)


@pytest.fixture
def base() -> Iterator[Path]:
    why = netns_available()
    if why:
        if in_ci():
            pytest.fail(f"netns tests cannot run: {why}; CI is set, so this is an error", pytrace=False)
        pytest.skip(why)
    # a short path: a unix socket's name is limited to about 100 bytes
    with tempfile.TemporaryDirectory(prefix="lvv") as d:
        yield Path(d)


@contextlib.asynccontextmanager
async def pair(
    etcd: EtcdCluster, base: Path, *, both: bool = True
) -> AsyncIterator[tuple[Director, Director]]:
    """A coordinator on ``etcd`` and director A, active (holding the VIPs), and B, started as
    its standby when ``both``."""
    socket = f"unix:{base / 'coordinator.sock'}"
    config = base / "config.json"
    config.write_bytes(codec.dumps(_config()))
    async with coordinators(etcd.endpoints, 1, listen=socket):
        a = Director("lbA", "lbB", base, socket)
        b = Director("lbB", "lbA", base, socket)
        try:
            a.start(config, publish_config=True)
            await until(lambda: a.addrs("vip0") >= HELD, lambda: f"lbA holding the VIPs\n{a.log_tail()}")
            if both:
                b.start(config, publish_config=False)
            yield a, b
        finally:
            a.close()
            b.close()


async def _switchover(socket: str, to: str, within: float = 60.0) -> None:
    """A planned switchover to ``to``, asked again while the pair is not ready for it."""
    deadline = time.monotonic() + within
    while True:
        try:
            report = await switchover([socket], to, within=10.0)
        except SwitchoverFailed as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no switchover within {within}s") from e
            await asyncio.sleep(0.2)
            continue
        assert report.to_node == to, report
        return


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_the_silent_copy_goes_when_the_old_active_dies_or_stops_in_its_linger(
    sig: signal.Signals, etcd: EtcdCluster, base: Path
) -> None:
    async with pair(etcd, base) as (a, b):
        await _switchover(f"unix:{base / 'coordinator.sock'}", "lbB")
        # answered: lbB holds the VIPs, lbA keeps its ARP-silent copy on lo for the linger
        silent = HELD & a.addrs("lo")
        assert silent == HELD, "the switchover returned after the linger ended: nothing to test"
        code = a.signal(sig)
        if sig is signal.SIGTERM:
            assert code == 0, a.log_tail()
        # killed: the guard removes the copy; stopped: the agent does, and stops its guard
        await until(
            lambda: not HELD & a.addrs("lo"),
            lambda: f"the silent copy removed; lo: {a.addrs('lo')}",
            within=20,
        )
        assert a.addrs("lo") == {LOOPBACK}
        assert a.addrs("vip0") == OWN
        assert b.addrs("vip0") >= HELD, b.addrs("vip0")
        await until(lambda: not a.pids(), "nothing of lbA left running")


async def test_the_guard_removes_exactly_the_vips_when_the_active_is_killed(
    etcd: EtcdCluster, base: Path
) -> None:
    async with pair(etcd, base, both=False) as (a, _):
        a.signal(signal.SIGKILL)
        await until(
            lambda: not HELD & a.addrs("vip0"),
            lambda: f"the guard removing the VIPs; vip0: {a.addrs('vip0')}",
            within=20,
        )
        assert a.addrs("vip0") == OWN
        assert a.addrs("lo") == {LOOPBACK}
        await until(lambda: not a.pids(), "the guard exiting once done")


async def test_a_clean_close_of_the_active_lets_go_of_its_vips_only_and_leaves_no_guard(
    etcd: EtcdCluster, base: Path
) -> None:
    socket = f"unix:{base / 'coordinator.sock'}"
    async with pair(etcd, base) as (a, b):
        election = LeaderElectionClient([socket], timeout=5.0)
        try:
            before = await election.get_leader()
            assert before.node == "lbA", before
            assert a.signal(signal.SIGTERM) == 0, a.log_tail()
            # exactly its VIPs are gone, on the interface and lo; its own addresses stay
            assert a.addrs("vip0") == OWN
            assert a.addrs("lo") == {LOOPBACK}
            # nothing of it is left to act later: no guard in the namespace (a guard would
            # remove whatever address it was given whenever it got to run)
            assert a.pids() == [], a.pids()
            # it let go of the leadership: the standby is elected and adds the VIPs
            await until(
                lambda: b.addrs("vip0") >= HELD, lambda: f"lbB taking over\n{b.log_tail()}", within=30
            )
            after = await election.get_leader()
            assert (after.node, after.term > before.term) == ("lbB", True), after
        finally:
            await election.close()
