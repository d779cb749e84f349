"""The real stack INSIDE the VM: etcd (Debian's ``etcd-server`` in the image), a coordinator and
agents, each its own process (``python3 -m lvs_events.coordinator.main``,
``python3 -m lvs_events.agent.main``), in the
root network namespace or in a given one (``ip netns exec``, which execs: a process's pid is the
program's own, so a SIGKILL hits the agent itself).

Used by ``failover.py`` (two directors, HA) and by ``bench/bench_kernel.py`` (one agent, the
weight change from the log). Logs go to ``<tmp>/<key>.log``; ``tail(key)`` reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
COORDINATOR_PORT = 7420


def ns_argv(netns: str | None, argv: list[str]) -> list[str]:
    return argv if netns is None else ["ip", "netns", "exec", netns, *argv]


class Stack:
    def __init__(self, tmp: Path, cluster: str = "vm") -> None:
        self.tmp = tmp
        self.cluster = cluster
        tmp.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.etcd_endpoint = ""
        self.coordinator_endpoint = ""

    def spawn(self, key: str, argv: list[str], netns: str | None = None) -> subprocess.Popen[bytes]:
        full = ns_argv(netns, argv)
        self.argv[key] = full
        with open(self.tmp / f"{key}.log", "ab") as log:
            p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs[key] = p
        return p

    def respawn(self, key: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{key}.log", "ab") as log:
            p = subprocess.Popen(
                self.argv[key], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[key] = p
        return p

    def tail(self, key: str, lines: int = 25) -> str:
        try:
            text = (self.tmp / f"{key}.log").read_text(errors="replace")
        except OSError as e:
            return str(e)
        return "\n".join(text.splitlines()[-lines:])

    def events(self, key: str) -> list[dict[str, object]]:
        """The JSON log lines of a process (``--log-format json``)."""
        out: list[dict[str, object]] = []
        with contextlib.suppress(OSError):
            for line in (self.tmp / f"{key}.log").read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    d = json.loads(line)
                    if isinstance(d, dict):
                        out.append(d)
        return out

    # -- etcd ----------------------------------------------------------------------------------

    def etcd(self, address: str, netns: str | None = None, timeout: float = 60) -> str:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        client = f"http://{address}:{ETCD_CLIENT_PORT}"
        peer = f"http://{address}:{ETCD_PEER_PORT}"
        self.spawn(
            "etcd",
            [
                binary,
                "--name=m0",
                f"--data-dir={self.tmp / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=m0={peer}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
            netns,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = subprocess.run(
                ns_argv(netns, ["curl", "-s", "-m", "1", f"{client}/health"]),
                capture_output=True,
                text=True,
                check=False,
            )
            with contextlib.suppress(ValueError):
                if str(json.loads(p.stdout or "{}").get("health")).lower() == "true":
                    self.etcd_endpoint = f"{address}:{ETCD_CLIENT_PORT}"
                    return self.etcd_endpoint
            if self.procs["etcd"].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"etcd did not become healthy:\n{self.tail('etcd')}")

    # -- coordinator and agents ----------------------------------------------------------------

    def coordinator(self, address: str, netns: str | None = None) -> str:
        self.coordinator_endpoint = f"{address}:{COORDINATOR_PORT}"
        self.spawn(
            "coordinator",
            [
                sys.executable, "-m", "lvs_events.coordinator.main",
                "--listen", self.coordinator_endpoint,
                "--etcd-endpoints", self.etcd_endpoint,
                "--cluster", self.cluster,
                "--grace", "1",
                "--log-format", "json",
                # plaintext off loopback (a namespace's address): this suite tests IPVS, not TLS
                *([] if address.startswith("127.") else ["--insecure"]),
            ],
            netns,
        )  # fmt: skip
        return self.coordinator_endpoint

    def agent(self, node: str, *args: str, netns: str | None = None) -> subprocess.Popen[bytes]:
        state = self.state_dir(node)
        state.mkdir(parents=True, exist_ok=True)
        return self.spawn(
            f"agent-{node}",
            [
                sys.executable, "-m", "lvs_events.agent.main",
                "--node", node,
                "--cluster", self.cluster,
                "--coordinators", self.coordinator_endpoint,
                "--state-dir", str(state),
                "--dataplane", "ipvs",
                "--no-health-checks",
                "--log-format", "json",
                *args,
            ],
            netns,
        )  # fmt: skip

    def state_dir(self, node: str) -> Path:
        return self.tmp / f"state-{node}"

    def applied(self, node: str) -> dict[str, object]:
        """The agent's status file (revision, digest of the applied table), {} before the first."""
        try:
            data = json.loads((self.state_dir(node) / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def kill(self, key: str) -> None:
        p = self.procs[key]
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def close(self) -> None:
        agents = [k for k in self.procs if k.startswith("agent-")]
        for key in [*agents, *(k for k in self.procs if k not in agents)]:
            p = self.procs[key]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def environment_ok() -> str:
    """ "" if the stack can run here, else why not."""
    if shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK):
        return "no etcd binary in the VM image (EXTRA_PKGS etcd-server)"
    return ""
