"""A three-member etcd for the drill lab (:mod:`lvs_events.drills.lab`): one member per network namespace.

The small part of the tests' etcd harness (``tests/support/etcd.py``) that the lab needs, so that
``lvs-events drill --lab`` runs from the installed package: each member runs in its own namespace
(``ip netns exec``), so the ports are fixed; health is polled from inside the namespace
(``ip netns exec NAME curl``), never over a route from this process. Synchronous (``Popen`` and
polling); the lab calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["LabEtcd", "find_etcd"]

CLIENT_PORT = 2379
PEER_PORT = 2380


def find_etcd() -> str | None:
    """Path of the etcd server binary (``$ETCD_BIN`` overrides ``PATH``), or None."""
    override = os.environ.get("ETCD_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("etcd")
    if found:
        return found
    for directory in ("/usr/bin", "/usr/local/bin", "/usr/sbin"):
        candidate = os.path.join(directory, "etcd")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class _Member:
    def __init__(
        self, name: str, netns: str, address: str, tmp_root: str | None, extra: Sequence[str]
    ) -> None:
        self.name, self.netns, self.address = name, netns, address
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f"lvs-drill-etcd-{name}-", dir=tmp_root))
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.initial_cluster = ""
        self.token = ""

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{CLIENT_PORT}"

    def argv(self, binary: str) -> list[str]:
        client, peer = f"http://{self.address}:{CLIENT_PORT}", f"http://{self.address}:{PEER_PORT}"
        return [
            "ip", "netns", "exec", self.netns, binary,
            f"--name={self.name}",
            f"--data-dir={self.tmp_dir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--auto-compaction-retention=0",
            "--logger=zap",
            "--log-outputs=stderr",
            *self.extra,
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self, binary: str) -> None:
        """Start (with an existing data dir etcd ignores ``--initial-*`` and rejoins)."""
        self.close_log()
        self._log = open(self.tmp_dir / "member.log", "ab")  # noqa: SIM115 -- closed in kill()
        self.proc = subprocess.Popen(
            self.argv(binary),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy(self) -> bool:
        argv = ["ip", "netns", "exec", self.netns, "curl", "-s", "-m", "0.5"]
        try:
            out = subprocess.run(
                [*argv, f"http://{self.address}:{CLIENT_PORT}/health"],
                capture_output=True,
                timeout=3,
                check=False,
            )
            body = json.loads(out.stdout.decode() or "{}")
        except (OSError, ValueError, subprocess.SubprocessError):
            return False
        return isinstance(body, dict) and str(body.get("health")).lower() == "true"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not self.running:
                raise RuntimeError(f"etcd member {self.name} exited before healthy:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"etcd member {self.name} not healthy after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.tmp_dir / "member.log").read_text(errors="replace")
        except OSError as e:
            return str(e)
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        self.close_log()

    def close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


class LabEtcd:
    """Members ``m0..`` in the given namespaces at the given addresses, started on construction;
    ``kill(i)`` (SIGKILL) and ``start(i)`` (rejoin with its data) per member."""

    def __init__(
        self,
        netns: Sequence[str],
        addresses: Sequence[str],
        *,
        start_timeout: float = 30.0,
        tmp_root: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        binary = find_etcd()
        if binary is None:
            raise RuntimeError("etcd binary not found (install the etcd-server package)")
        self.binary = binary
        self.start_timeout = start_timeout
        self.members = [
            _Member(f"m{i}", ns, addr, tmp_root, extra_args)
            for i, (ns, addr) in enumerate(zip(netns, addresses, strict=True))
        ]
        initial = ",".join(f"{m.name}=http://{m.address}:{PEER_PORT}" for m in self.members)
        token = f"drill-{uuid.uuid4().hex[:12]}"
        for m in self.members:
            m.initial_cluster, m.token = initial, token
        try:
            for m in self.members:  # all launched before waiting: no quorum, no health before
                m.launch(binary)
            deadline = time.monotonic() + start_timeout
            for m in self.members:
                m.wait_healthy(max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def start(self, index: int) -> None:
        m = self.members[index]
        m.launch(self.binary)
        m.wait_healthy(self.start_timeout)

    def close(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.kill()
        for m in self.members:
            shutil.rmtree(m.tmp_dir, ignore_errors=True)
