"""Launch real etcd servers (one member or a small cluster) for tests.

Everything here is synchronous (``subprocess.Popen`` plus HTTP polling of the
member's ``/health`` endpoint), so it can be used from plain code as well as
from pytest fixtures, including fixtures of async tests.

Typical use::

    with EtcdCluster(size=3) as cluster:
        client = Etcd3Client(cluster.endpoints)
        cluster.kill(0)
        cluster.start(0)

Each member gets its own temporary directory holding its data dir and a log
file (``member.log``); the log never goes to the test's stdout, but its tail is
included in the error raised when a member fails to come up.

Members may serve clients over TLS (``tls=EtcdTls(...)``: etcd's ``--cert-file``,
``--key-file``, ``--trusted-ca-file`` and, with ``client_cert_auth``, ``--client-cert-auth``);
the harness's own health and status requests then present the given client certificate.
:meth:`EtcdMember.pause` / :meth:`EtcdMember.resume` freeze a member (SIGSTOP / SIGCONT).

Members may run inside network namespaces (``netns=``): the command is then
prefixed with ``ip netns exec NAME``, and the health and status checks run
there too (``ip netns exec NAME curl``), so the test process needs no route
into the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "EtcdCluster",
    "EtcdError",
    "EtcdMember",
    "EtcdNotFoundError",
    "EtcdStartError",
    "EtcdTls",
    "find_etcd",
    "find_etcdctl",
    "free_port",
    "free_ports",
]

DEFAULT_START_TIMEOUT = 15.0
"""Seconds a member (or a whole cluster) gets to report healthy."""

_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 40
_PORT_RETRIES = 3


class EtcdError(RuntimeError):
    """Base class for errors raised by the test etcd harness."""


class EtcdNotFoundError(EtcdError):
    """The etcd (or etcdctl) binary is not installed."""


class EtcdStartError(EtcdError):
    """A member did not become healthy in time (or exited during start)."""

    def __init__(self, message: str, *, address_in_use: bool = False) -> None:
        super().__init__(message)
        self.address_in_use = address_in_use


def _find_binary(name: str, env_var: str) -> str | None:
    override = os.environ.get(env_var)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/bin", "/usr/local/bin", "/usr/sbin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_etcd() -> str | None:
    """Path of the etcd server binary (``$ETCD_BIN`` overrides ``PATH``), or None."""
    return _find_binary("etcd", "ETCD_BIN")


def find_etcdctl() -> str | None:
    """Path of the etcdctl binary (``$ETCDCTL_BIN`` overrides ``PATH``), or None."""
    return _find_binary("etcdctl", "ETCDCTL_BIN")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct ports that were free on ``host`` a moment ago.

    All sockets are held open until every port is chosen, so the ports are
    distinct from each other (another process may still grab one later).
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def default_tmp_root() -> str | None:
    """Where test members keep their data: ``$LVS_TEST_ETCD_TMP``, else a tmpfs (``/dev/shm``)
    when there is one. The tests exercise our code, not the disk: on a busy CI disk an etcd fsync
    can stall for seconds and turn a 5 s client deadline into a spurious failure."""
    env = os.environ.get("LVS_TEST_ETCD_TMP")
    if env:
        return env
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` (bind to port 0 and release)."""
    return free_ports(1, host)[0]


@dataclass(frozen=True)
class EtcdTls:
    """TLS for a member's client listener: its certificate and key, the CA clients' certificates
    must chain to (``client_cert_auth``: required), and the client pair the harness presents."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    client_cert_auth: bool = True

    def args(self) -> list[str]:
        out = [f"--cert-file={self.cert}", f"--key-file={self.key}"]
        # etcd requires a client certificate whenever it is given a trusted CA
        return [*out, f"--trusted-ca-file={self.ca}", "--client-cert-auth"] if self.client_cert_auth else out

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None and self.client_key is not None:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def _url(host: str, port: int, scheme: str = "http") -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


class EtcdMember:
    """One etcd server process with its own temporary data dir and log file.

    Normally created by :class:`EtcdCluster`, which wires ``--initial-cluster``.
    """

    def __init__(
        self,
        name: str,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        bind_address: str = "127.0.0.1",
        netns: str | None = None,
        etcd_binary: str | None = None,
        heartbeat_interval_ms: int = 50,
        election_timeout_ms: int = 500,
        extra_args: Sequence[str] = (),
        tmp_root: str | None = None,
        tls: EtcdTls | None = None,
    ) -> None:
        binary = etcd_binary or find_etcd()
        if binary is None:
            raise EtcdNotFoundError("etcd binary not found (install the etcd-server package)")
        if tls is not None and netns is not None:
            raise ValueError("a TLS member inside a network namespace is not supported")
        self.name = name
        self.tls = tls
        self.bind_address = bind_address
        self.netns = netns
        self.etcd_binary = binary
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.election_timeout_ms = election_timeout_ms
        self.extra_args = list(extra_args)
        if client_port is None or peer_port is None:
            ports = free_ports(2, bind_address) if netns is None else free_ports(2)
            client_port = client_port or ports[0]
            peer_port = peer_port or ports[1]
        self.client_port = client_port
        self.peer_port = peer_port
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f"etcd-test-{name}-", dir=tmp_root or default_tmp_root()))
        self.data_dir = self.tmp_dir / "data"
        self.log_path = self.tmp_dir / "member.log"
        self.initial_cluster = f"{name}={self.peer_url}"
        self.initial_cluster_token = f"test-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener (what gRPC clients want)."""
        host = self.bind_address
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return _url(self.bind_address, self.client_port, "https" if self.tls is not None else "http")

    @property
    def peer_url(self) -> str:
        return _url(self.bind_address, self.peer_port)

    # -- process control ---------------------------------------------------

    def command(self) -> list[str]:
        """The full argv used to launch this member."""
        argv = [
            self.etcd_binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.initial_cluster_token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.heartbeat_interval_ms}",
            f"--election-timeout={self.election_timeout_ms}",
            "--auto-compaction-retention=0",
            "--logger=zap",
            "--log-outputs=stderr",
            *(self.tls.args() if self.tls is not None else ()),
            *self.extra_args,
        ]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def launch(self) -> None:
        """Start the process without waiting for it to become healthy.

        With an existing data dir etcd ignores the ``--initial-*`` flags and
        rejoins the cluster it belonged to.
        """
        if self.running:
            raise EtcdError(f"etcd member {self.name} is already running (pid {self.pid})")
        self._close_log()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self._log_file.write(f"--- launch: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Launch the process and wait until ``/health`` reports healthy."""
        self.launch()
        self.wait_healthy(timeout)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM the member and wait for it (SIGKILL after ``timeout``)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout)
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP the member: its sockets stay open and take requests, nothing answers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused member: it goes on with what it received meanwhile."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the member (simulates a crash) and reap it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(_STOP_TIMEOUT)
        self._close_log()

    def close(self) -> None:
        """Stop the process and delete the member's temporary directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    # -- health ------------------------------------------------------------

    def _netns_http(self, path: str, timeout: float, post: bool = False) -> bytes:
        """An HTTP request made from inside the member's namespace (``ip netns exec ... curl``): the
        test process may have no route there, and must not send traffic to in-namespace addresses."""
        assert self.netns is not None
        argv = ["ip", "netns", "exec", self.netns, "curl", "-s", "-m", f"{timeout:g}"]
        if post:
            argv += ["-X", "POST", "-H", "Content-Type: application/json", "-d", "{}"]
        out = subprocess.run(
            [*argv, f"{self.client_url}{path}"], capture_output=True, timeout=timeout + 2, check=False
        )
        if out.returncode != 0:
            raise OSError(f"curl in {self.netns}: exit {out.returncode}")
        return out.stdout

    def health(self, timeout: float = 1.0) -> bool:
        """True if the member's ``/health`` endpoint answers ``{"health": "true"}``."""
        if self.netns is not None:
            try:
                body = json.loads(self._netns_http("/health", timeout).decode() or "{}")
            except (OSError, ValueError, subprocess.SubprocessError):
                return False
            return isinstance(body, dict) and str(body.get("health")).lower() == "true"
        try:
            with self._open(f"{self.client_url}/health", timeout) as resp:
                body = json.loads(resp.read().decode() or "{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and str(body.get("health")).lower() == "true"

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """The member's Maintenance/Status reply via the JSON gateway.

        Keys include ``header.member_id``, ``leader``, ``raftTerm`` (as strings).
        """
        if self.netns is not None:
            try:
                data: dict[str, Any] = json.loads(
                    self._netns_http("/v3/maintenance/status", timeout, post=True)
                )
            except subprocess.SubprocessError as e:
                raise OSError(str(e)) from e
            return data
        request = urllib.request.Request(
            f"{self.client_url}/v3/maintenance/status",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with self._open(request, timeout) as resp:
            body: dict[str, Any] = json.loads(resp.read().decode())
        return body

    def _open(self, request: str | urllib.request.Request, timeout: float) -> Any:
        ctx = self.tls.context() if self.tls is not None else None
        return urllib.request.urlopen(request, timeout=timeout, context=ctx)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Last ``lines`` lines of the member's log file."""
        return _tail(self.log_path, lines)

    def wait_healthy(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Poll ``/health`` until healthy; raise :class:`EtcdStartError` on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            if self.health(timeout=0.5):
                return
            proc = self.proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise self._start_error(f"etcd member {self.name} exited (code {code}) before healthy")
            if time.monotonic() >= deadline:
                raise self._start_error(
                    f"etcd member {self.name} at {self.client_url} not healthy after {timeout:.1f}s"
                )
            time.sleep(0.05)

    def _start_error(self, message: str) -> EtcdStartError:
        self._close_log()
        tail = self.log_tail()
        in_use = "address already in use" in tail
        return EtcdStartError(f"{message}\n--- last lines of {self.log_path}:\n{tail}", address_in_use=in_use)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EtcdMember({self.name!r}, {self.endpoint}, {state})"


class EtcdCluster:
    """A cluster of ``size`` etcd members (1 or 3 in practice), started on construction.

    Members are indexed ``0..size-1``. ``bind_address`` may be one address
    for all members or one per member; ``netns`` (if given) has one entry
    per member, ``None`` meaning "run in the current namespace".
    """

    def __init__(
        self,
        size: int = 1,
        *,
        bind_address: str | Sequence[str] = "127.0.0.1",
        netns: Sequence[str | None] | None = None,
        etcd_binary: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        heartbeat_interval_ms: int = 50,
        election_timeout_ms: int = 500,
        extra_args: Sequence[str] = (),
        start: bool = True,
        tmp_root: str | None = None,
        tls: Sequence[EtcdTls] | EtcdTls | None = None,
    ) -> None:
        """``tls``: one for every member, or one per member."""
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        addresses = [bind_address] * size if isinstance(bind_address, str) else list(bind_address)
        self._tls = [tls] * size if tls is None or isinstance(tls, EtcdTls) else list(tls)
        if len(self._tls) != size:
            raise ValueError("tls needs one entry per member")
        namespaces = list(netns) if netns is not None else [None] * size
        if len(addresses) != size or len(namespaces) != size:
            raise ValueError("bind_address and netns need one entry per member")
        binary = etcd_binary or find_etcd()
        if binary is None:
            raise EtcdNotFoundError("etcd binary not found (install the etcd-server package)")
        self.size = size
        self.start_timeout = start_timeout
        self._addresses = addresses
        self._namespaces = namespaces
        self._member_kwargs: dict[str, Any] = {
            "etcd_binary": binary,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "election_timeout_ms": election_timeout_ms,
            "extra_args": tuple(extra_args),
            "tmp_root": tmp_root,  # e.g. a tmpfs: no fsync latency (the drills measure our code)
        }
        self.members: list[EtcdMember] = []
        self._make_members()
        if start:
            try:
                self.start_all()
            except BaseException:
                self.close()
                raise

    def _make_members(self) -> None:
        for member in self.members:
            member.close()
        self.members = [
            EtcdMember(
                f"m{i}",
                bind_address=self._addresses[i],
                netns=self._namespaces[i],
                tls=self._tls[i],
                **self._member_kwargs,
            )
            for i in range(self.size)
        ]
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"test-{uuid.uuid4().hex[:12]}"
        for member in self.members:
            member.initial_cluster = initial_cluster
            member.initial_cluster_token = token

    # -- lifecycle ---------------------------------------------------------

    def start_all(self) -> None:
        """Start every member and wait until all are healthy.

        All processes are launched before waiting, since a multi-member
        cluster has no quorum (hence no health) until enough members run.
        If a port chosen by :func:`free_ports` was taken meanwhile, the whole
        cluster is recreated with fresh ports (a few times).
        """
        for attempt in range(_PORT_RETRIES):
            try:
                for member in self.members:
                    member.launch()
                deadline = time.monotonic() + self.start_timeout
                for member in self.members:
                    member.wait_healthy(max(deadline - time.monotonic(), 0.1))
            except EtcdStartError as exc:
                for member in self.members:
                    member.kill()
                if not exc.address_in_use or attempt == _PORT_RETRIES - 1:
                    raise
                self._make_members()
            else:
                return

    def close(self) -> None:
        """Stop all members and remove their temporary directories.

        Members are SIGKILLed: their data is deleted anyway, and a graceful
        stop of a leader that has lost its quorum waits seconds for a
        leadership transfer that cannot happen. Use :meth:`stop` to test
        graceful shutdown.
        """
        for member in self.members:
            with contextlib.suppress(Exception):
                member.kill()
        for member in self.members:
            member.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- per-member control ------------------------------------------------

    def __getitem__(self, index: int) -> EtcdMember:
        return self.members[index]

    def __len__(self) -> int:
        return len(self.members)

    def stop(self, index: int) -> None:
        """Gracefully stop member ``index`` (SIGTERM + wait)."""
        self.members[index].stop()

    def kill(self, index: int) -> None:
        """Crash member ``index`` (SIGKILL).

        If it was the leader, proposals already forwarded to it are lost and the
        callers wait for etcd's request timeout (~6 s with the default settings);
        call :meth:`leader` first to wait for the survivors' new election.
        """
        self.members[index].kill()

    def start(self, index: int, timeout: float | None = None) -> None:
        """Restart a stopped member with its existing data dir and wait until healthy."""
        self.members[index].start(self.start_timeout if timeout is None else timeout)

    # -- inspection --------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` client endpoints of all members (running or not)."""
        return [m.endpoint for m in self.members]

    @property
    def running_endpoints(self) -> list[str]:
        """``host:port`` client endpoints of the members whose process is running."""
        return [m.endpoint for m in self.members if m.running]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def healthy(self) -> list[bool]:
        """``/health`` result per member."""
        return [m.health() for m in self.members]

    def leader(self, timeout: float = DEFAULT_START_TIMEOUT) -> int:
        """Index of the current raft leader, asking running members until one knows."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[str, int] = {}
            leader_id: str | None = None
            for i, member in enumerate(self.members):
                if not member.running:
                    continue
                try:
                    status = member.status(timeout=0.5)
                except (OSError, ValueError):
                    continue
                ids[str(status.get("header", {}).get("member_id"))] = i
                reported = status.get("leader")
                if reported not in (None, "0"):
                    leader_id = str(reported)
            if leader_id is not None and leader_id in ids:
                return ids[leader_id]
            if time.monotonic() >= deadline:
                raise EtcdError(f"no etcd leader found among running members within {timeout:.1f}s")
            time.sleep(0.05)

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until every running member reports healthy."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        for member in self.members:
            if member.running:
                member.wait_healthy(max(deadline - time.monotonic(), 0.1))

    def __repr__(self) -> str:
        return f"EtcdCluster({self.members!r})"
