"""End to end through the installed programs: real etcd, ``lvs-coordinator``, two ``lvs-agent``
processes loading the seed's ldirectord.cf, and the ``lvs-events`` CLI as an operator runs it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvs_events.ldirectord import StaticResolver, parse_text
from tests.support.etcd import EtcdCluster, free_port

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LVS_SHARED_DIR", REPO.parent / "shared"))
SEED = SHARED / "seed" / "ldirectord.cf"
CLUSTER = "e2e"


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )


class Stack:
    def __init__(self, etcd: EtcdCluster, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.etcd = etcd
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_coordinator(self) -> None:
        self.procs["coordinator"] = _spawn(
            [
                "lvs_events.coordinator.main",
                "--listen",
                self.endpoint,
                "--etcd-endpoints",
                ",".join(self.etcd.endpoints),
                "--cluster",
                CLUSTER,
                "--log-format",
                "json",
            ],
            self.tmp / "coordinator.log",
        )

    def stop_coordinator(self) -> float:
        """SIGTERM the coordinator; the seconds it took to exit."""
        proc = self.procs.pop("coordinator")
        began = time.monotonic()
        proc.terminate()
        proc.wait(30)
        return time.monotonic() - began

    def start_agent(self, node: str, *, publish: bool, report_interval: float = 10.0) -> None:
        args = [
            "lvs_events.agent.main",
            "--node",
            node,
            "--cluster",
            CLUSTER,
            "--coordinators",
            self.endpoint,
            "--state-dir",
            str(self.tmp / node),
            "--config",
            str(SEED),
            "--log-format",
            "json",
            # the seed's real servers are documentation addresses: never probe them from the host
            "--no-health-checks",
            "--report-interval",
            str(report_interval),
        ]
        if publish:
            args.append("--publish-config")
        self.procs[node] = _spawn(args, self.tmp / f"{node}.log")

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "lvs_events.cli.main",
                "--endpoints",
                self.endpoint,
                "--cluster",
                CLUSTER,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"lvs-events {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def close(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def stack(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Stack]:
    if not SEED.exists():
        pytest.skip(f"{SEED} not found (set LVS_SHARED_DIR)")
    s = Stack(etcd, tmp_path)
    s.start_coordinator()
    try:
        yield s
    finally:
        s.close()


def _wait(pred: object, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _read_lines(proc: subprocess.Popen[str], until: object, timeout: float) -> list[str]:
    """Lines printed by a running process until ``until(lines)`` holds. Reads the pipe's bytes
    itself: a buffered ``readline`` after ``select`` would leave lines unseen in its buffer."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = _PENDING.get(proc.pid, b"")
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not until(lines):  # type: ignore[operator]
        if b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            lines.append(line.decode() + "\n")
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
    _PENDING[proc.pid] = pending
    return lines


_PENDING: dict[int, bytes] = {}  # bytes read past the last whole line, per process id


def test_operator_workflow_end_to_end(stack: Stack) -> None:  # noqa: PLR0915 -- one operator session, in order
    # the coordinator is up when the CLI gets an answer
    _wait(lambda: stack.cli("status", check=False).returncode == 0, what="coordinator")

    # tail -f -o json shows both agents' events as they happen
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvs_events.cli.main",
            "--endpoints",
            stack.endpoint,
            "--cluster",
            CLUSTER,
            "tail",
            "-f",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        stack.start_agent("master", publish=True)
        stack.start_agent("slave", publish=False)

        def both_reported(lines: list[str]) -> bool:
            docs = [json.loads(x) for x in lines]
            config = [d["revision"] for d in docs if d["type"] == "ConfigApplied"]
            nodes = {
                d["payload"]["node"]
                for d in docs
                if d["type"] == "TableApplied" and config and d["payload"]["revision"] >= config[0]
            }
            return {"master", "slave"} <= nodes

        lines = _read_lines(follower, both_reported, timeout=60)
    finally:
        follower.terminate()
        follower.wait(10)
    docs = [json.loads(line) for line in lines]  # every line is valid JSON
    configs = [d for d in docs if d["type"] == "ConfigApplied"]
    # a plaintext coordinator on loopback vouches for nobody: the claimed actor, marked
    assert [(d["node"], d["actor"]) for d in configs] == [("master", "unverified:lvs-agent")]
    assert both_reported(lines)
    assert [d["revision"] for d in docs] == sorted(d["revision"] for d in docs)

    # the seed file is the config in force: validate passes, apply publishes nothing
    assert "4 virtual services, 12 real servers" in stack.cli("config", "validate", str(SEED)).stdout
    assert "no changes" in stack.cli("config", "apply", str(SEED), "--reason", "same").stdout

    # an operator drain is recorded with who and why, and reaches both agents' tables
    stack.cli(
        "drain", "TCP 203.0.113.10:80", "192.0.2.13:80", "--reason", "kernel upgrade", "--operator", "alice"
    )
    tail = stack.cli("tail", "--type", "AdminOverride").stdout
    assert "alice" in tail
    assert "reason='kernel upgrade'" in tail
    assert "drain TCP 203.0.113.10:80 -> 192.0.2.13:80" in tail

    table = stack.cli("table").stdout
    assert table.startswith("IP Virtual Server version")
    assert "TCP  203.0.113.10:80 wrr persistent 7200" in table
    assert "#" not in table  # the layout of ipvsadm -L -n, nothing else
    with_digest = stack.cli("table", "--digest").stdout
    assert with_digest.startswith(table)
    digest = with_digest.strip().splitlines()[-1].split()[-1]

    def in_sync() -> bool:
        doc = json.loads(stack.cli("status", "-o", "json", check=False).stdout)
        return all(doc["nodes"].get(n, {}).get("digest") == digest for n in ("master", "slave"))

    _wait(in_sync, what="both agents at the CLI's table digest")
    status = stack.cli("status", check=False).stdout
    assert "master" in status
    assert "slave" in status
    # no agent campaigns here (no --peer): the election service answers that nobody is active
    assert "leadership: no active director" in status
    assert json.loads(stack.cli("status", "-o", "json", check=False).stdout)["leadership"]["active"] is None
    refused = stack.cli("switchover", check=False)
    assert refused.returncode == 1
    assert "no active director" in refused.stderr

    # the table at an older revision differs (before the drain), and JSON output parses
    doc = json.loads(stack.cli("table", "-o", "json").stdout)
    assert doc["digest"] == digest
    old = json.loads(stack.cli("table", "-o", "json", "--at", "1").stdout)
    assert old["revision"] == 1
    save = stack.cli("table", "-o", "ipvsadm-save").stdout
    assert "-A -t 203.0.113.10:80 -s wrr -p 7200\n" in save
    assert all(line.startswith(("-A ", "-a ")) for line in save.splitlines())  # rules only

    # config show writes the config in force back as ldirectord.cf that parses to the same config
    shown = stack.cli("config", "show").stdout
    original = parse_text(SEED.read_text(), "ldirectord.cf", resolver=StaticResolver({}))
    again = parse_text(shown, "shown.cf", resolver=StaticResolver({}))
    assert again.virtuals == original.virtuals
    assert again.globals == original.globals


def test_unreachable_coordinator_is_one_line_and_exit_3() -> None:
    port = free_port()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvs_events.cli.main",
            "--endpoints",
            f"127.0.0.1:{port}",
            "--timeout",
            "1",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 3
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("lvs-events: no coordinator answered")


def test_a_refused_file_publishes_nothing(stack: Stack, tmp_path: Path) -> None:
    _wait(lambda: stack.cli("status", check=False).returncode == 0, what="coordinator")
    bad = tmp_path / "bad.cf"
    bad.write_text("virtual=203.0.113.10:80\n\treal=192.0.2.11:80 gate 10\n\tquiescent=maybe\n")
    res = stack.cli("config", "apply", str(bad), "--reason", "typo", check=False)
    assert res.returncode == 2
    assert "bad.cf:3" in res.stderr
    assert json.loads(stack.cli("status", "-o", "json").stdout)["head_revision"] == 0


def test_autoreload_applies_a_changed_file_and_records_a_broken_one(stack: Stack) -> None:
    _wait(lambda: stack.cli("status", check=False).returncode == 0, what="coordinator")
    cf = stack.tmp / "ldirectord.cf"
    seed = SEED.read_text().replace("checkinterval=5", "checkinterval=1")
    cf.write_text(seed)
    args = [
        "lvs_events.agent.main",
        "--node",
        "master",
        "--cluster",
        CLUSTER,
        "--coordinators",
        stack.endpoint,
        "--state-dir",
        str(stack.tmp / "master"),
        "--config",
        str(cf),
        "--publish-config",
        "--no-health-checks",
        "--log-format",
        "json",
    ]
    stack.procs["master"] = _spawn(args, stack.tmp / "master.log")

    def config_events() -> list[dict[str, object]]:
        out = stack.cli("tail", "-o", "json", "--type", "ConfigApplied", "--type", "ConfigRejected").stdout
        return [json.loads(line) for line in out.splitlines()]

    _wait(lambda: len(config_events()) == 1, what="the config published at start")

    # a changed weight is applied through the log
    time.sleep(1.1)  # a new mtime
    cf.write_text(seed.replace("real = 192.0.2.12:80 gate 20", "real = 192.0.2.12:80 gate 25"))
    _wait(lambda: len(config_events()) == 2, what="the reloaded config")
    reload_event = config_events()[1]
    assert reload_event["type"] == "ConfigApplied"
    assert reload_event["reason"] == "autoreload: file changed"
    same = stack.cli("config", "diff", str(cf))
    assert same.returncode == 0
    assert same.stdout.startswith("no changes")

    # a broken file keeps the config in force and is recorded once, with the line
    time.sleep(1.1)
    cf.write_text(seed.replace("scheduler = wrr", "scheduler = wrr\n    quiescent = maybe", 1))
    _wait(lambda: len(config_events()) == 3, what="the refusal")
    time.sleep(2.5)  # two more polls: not recorded again
    events = config_events()
    assert [e["type"] for e in events] == ["ConfigApplied", "ConfigApplied", "ConfigRejected"]
    assert "ldirectord.cf:" in str(events[2]["summary"])
    assert "quiescent" in str(events[2]["summary"])
    assert "last refused config" in stack.cli("status", check=False).stdout
    shown = stack.cli("config", "show").stdout
    assert "real=192.0.2.12:80 gate 25" in shown.replace(" = ", "=")


def test_tail_filters_are_the_servers_and_a_vip_shows_the_config_that_defines_it(
    stack: Stack, tmp_path: Path
) -> None:
    _wait(lambda: stack.cli("status", check=False).returncode == 0, what="coordinator")
    stack.cli("config", "apply", str(SEED), "--reason", "initial", "--operator", "alice")
    stack.cli("drain", "TCP 203.0.113.10:80", "192.0.2.13:80", "--reason", "disk", "--operator", "bob")
    stack.cli("drain", "TCP 203.0.113.20:80", "198.51.100.11:80", "--reason", "nic", "--operator", "bob")

    def kinds(*args: str) -> list[tuple[str, str]]:
        docs = [json.loads(x) for x in stack.cli("tail", "-o", "json", *args).stdout.splitlines()]
        return [(d["type"], d["reason"]) for d in docs]

    assert kinds("--vip", "203.0.113.10") == [("ConfigApplied", "initial"), ("AdminOverride", "disk")]
    assert kinds("--vip", "TCP 203.0.113.20:80") == [("ConfigApplied", "initial"), ("AdminOverride", "nic")]
    assert kinds("--vip", "203.0.113.20:443", "--type", "AdminOverride") == []
    assert kinds("--real", "198.51.100.11") == [("ConfigApplied", "initial"), ("AdminOverride", "nic")]
    assert kinds("--real", "192.0.2.13:80", "--vip", "203.0.113.20") == []
    assert kinds("--vip", "203.0.113.10", "--vip", "203.0.113.20", "--type", "AdminOverride") == [
        ("AdminOverride", "disk"),
        ("AdminOverride", "nic"),
    ]
    assert kinds("--node", "no-such-node") == []
    # --since: an hour back is everything, a time after the last event is nothing
    assert len(kinds("--since", "1h")) == 3
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert kinds("--since", later) == []
    bad = stack.cli("tail", "--type", "Healthz", check=False)
    assert bad.returncode == 2
    assert "Healthz" in bad.stderr
    assert "RealServerHealth" in bad.stderr


# --- the operator's conventions (issue: drains that expire, refusals, guards, tail, status) ------


def _coordinator_up(stack: Stack) -> None:
    _wait(lambda: stack.cli("status", check=False).returncode == 0, what="coordinator")


def _seed_on(tmp: Path) -> Path:
    """The seed with ``checktype = on``: every real server up without probing anything."""
    path = tmp / "ldirectord.cf"
    path.write_text(SEED.read_text().replace("checktype = negotiate", "checktype = on"))
    return path


def _head(stack: Stack) -> int:
    return int(json.loads(stack.cli("status", "-o", "json", check=False).stdout)["head_revision"])


def _weight(stack: Stack, virtual: str, real: str) -> int:
    doc = json.loads(stack.cli("table", "-o", "json").stdout)
    for svc in doc["services"]:
        if svc["service"] == virtual:
            for d in svc["dests"]:
                if d["dest"] == real:
                    return int(d["weight"])
    raise AssertionError(f"{virtual} -> {real} not in the table: {doc}")


def test_a_timed_drain_expires_on_time_on_a_quiet_log(stack: Stack, tmp_path: Path) -> None:
    _coordinator_up(stack)
    stack.cli("config", "apply", str(_seed_on(tmp_path)), "--reason", "initial")
    vip, real = "TCP 203.0.113.10:80", "192.0.2.12:80"
    before = _weight(stack, vip, real)
    assert before > 0
    out = stack.cli("drain", vip, real, "--for", "15s", "--reason", "patch").stdout
    drained_at = int(out.rsplit(" ", 1)[-1])
    assert _weight(stack, vip, real) == 0
    # nothing else publishes here: no agent, no operator; only the coordinator's expiry moves time
    _wait(lambda: _weight(stack, vip, real) == before, timeout=20, what="the drain's expiry")
    docs = [json.loads(x) for x in stack.cli("tail", "-o", "json", "-n", "2").stdout.splitlines()]
    drain, expired = docs
    assert drain["revision"] == drained_at
    assert expired["type"] == "OverrideExpired"
    assert expired["actor"] == "lvs-coordinator"
    assert expired["revision"] == drained_at + 1 == _head(stack)  # recorded once, the only event since
    assert expired["payload"]["override_revision"] == drained_at
    # appended within a second of the expiry: 15 s after the drain, within 16
    late = expired["wall_time"] - drain["payload"]["expires_at"]
    assert 0.0 <= late <= 1.0, late
    assert expired["wall_time"] - drain["wall_time"] <= 16.0
    assert "expired" in stack.cli("tail", "-n", "1").stdout


def test_operations_on_what_is_not_configured_are_refused_with_exit_2(stack: Stack, tmp_path: Path) -> None:
    _coordinator_up(stack)
    stack.cli("config", "apply", str(_seed_on(tmp_path)), "--reason", "initial")
    head = _head(stack)
    for virtual, real, named in (
        ("TCP 203.0.113.10:80", "192.0.2.99:80", "192.0.2.11:80"),  # a typo'd real: the real ones are named
        ("UDP 203.0.113.10:80", "192.0.2.11:80", "TCP 203.0.113.10:80"),  # no such service
        ("TCP 203.0.113.99:80", "192.0.2.11:80", "TCP 203.0.113.10:80"),
        ("TCP 203.0.113.10:80", "192.0.2.1O:80", "192.0.2.11:80"),
        ("TCP 203.0.113.10:80", "192.0.2.99", "192.0.2.11:80"),
    ):
        res = stack.cli("drain", virtual, real, "--reason", "typo", check=False)
        assert res.returncode == 2, (virtual, real, res.stderr)
        assert named in res.stderr
        assert "Traceback" not in res.stderr
    bad_for = stack.cli(
        "drain", "TCP 203.0.113.10:80", "192.0.2.11:80", "--for", "0", "--reason", "x", check=False
    )
    assert bad_for.returncode == 2
    assert "> 0" in bad_for.stderr
    nothing = stack.cli("enable", "TCP 203.0.113.10:80", "192.0.2.11:80", "--reason", "x")
    assert "nothing recorded" in nothing.stdout
    assert _head(stack) == head  # none of them reached the log
    # a lowercase protocol and a bare IP that is unique in its service name a configured server
    stack.cli("weight", "tcp 203.0.113.10:80", "192.0.2.11", "3", "--reason", "canary")
    assert _weight(stack, "TCP 203.0.113.10:80", "192.0.2.11:80") == 3
    stack.cli("disable", "203.0.113.10:80", "192.0.2.11:80", "--reason", "out")
    doc = json.loads(stack.cli("table", "-o", "json").stdout)
    (svc,) = [svc for svc in doc["services"] if svc["service"] == "TCP 203.0.113.10:80"]
    assert [d["dest"] for d in svc["dests"]] == ["192.0.2.12:80", "192.0.2.13:80"]
    stack.cli("enable", "TCP 203.0.113.10:80", "192.0.2.11:80", "--reason", "back")
    assert _weight(stack, "TCP 203.0.113.10:80", "192.0.2.11:80") > 3
    for args in (
        ("table", "--at", "99999"),
        ("tail", "--type", "Bogus"),
        ("table", "--at", "-1"),
        ("tail", "--rev", "-5"),
    ):
        res = stack.cli(*args, check=False)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_removed_servers_take_their_overrides_with_them(stack: Stack, tmp_path: Path) -> None:
    _coordinator_up(stack)
    seed = _seed_on(tmp_path)
    stack.cli("config", "apply", str(seed), "--reason", "initial")
    stack.cli("drain", "TCP 203.0.113.10:80", "192.0.2.13:80", "--reason", "disk")
    smaller = tmp_path / "smaller.cf"
    smaller.write_text(seed.read_text().replace("192.0.2.13:80", "192.0.2.14:80"))
    diff = stack.cli("config", "diff", str(smaller), check=False)
    assert diff.returncode == 1  # like diff(1): it differs
    assert "-    real=192.0.2.13:80 gate" in diff.stdout.replace(" = ", "=")
    assert "+    real=192.0.2.14:80 gate" in diff.stdout.replace(" = ", "=")
    assert "override drain on TCP 203.0.113.10:80 -> 192.0.2.13:80" in diff.stdout
    assert "ends" in diff.stdout
    stack.cli("config", "apply", str(smaller), "--reason", "swap a server")
    # putting the server back brings it at its configured weight: the drain ended with the removal
    stack.cli("config", "apply", str(seed), "--reason", "back")
    assert _weight(stack, "TCP 203.0.113.10:80", "192.0.2.13:80") > 0
    assert stack.cli("config", "diff", str(seed)).returncode == 0


def test_a_destructive_config_needs_confirmation_and_a_stale_one_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    _coordinator_up(stack)
    stack.cli("config", "apply", str(SEED), "--reason", "initial")
    empty = tmp_path / "empty.cf"
    empty.write_text("checktimeout=3\n")
    validated = stack.cli("config", "validate", str(empty))
    assert "0 virtual services" in validated.stdout
    assert "warning" in validated.stderr
    head = _head(stack)
    refused = stack.cli("config", "apply", str(empty), "--reason", "oops", check=False)
    assert refused.returncode == 1
    assert "--yes" in refused.stderr
    assert "removes 4 of 4 virtual services" in refused.stderr
    assert _head(stack) == head
    assert "TCP  203.0.113.10:80" in stack.cli("table").stdout
    # a config diff read at revision R applies only while R's config is still the one in force
    shown = stack.cli("config", "diff", str(empty), check=False).stdout
    in_force = int(shown.split("revision ", 1)[1].split(")", 1)[0])
    stale = stack.cli(
        "config", "apply", str(empty), "--yes", "--replaces", str(in_force - 1), "--reason", "x", check=False
    )
    assert stale.returncode == 1
    assert f"revision {in_force}" in stale.stderr
    stack.cli("config", "apply", str(empty), "--yes", "--replaces", str(in_force), "--reason", "decommission")
    assert "TCP " not in stack.cli("table").stdout


def test_tail_is_like_tail_and_follows_across_a_coordinator_restart(stack: Stack) -> None:
    _coordinator_up(stack)
    stack.cli("config", "apply", str(SEED), "--reason", "initial")
    reals = ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"]
    for r in reals:
        stack.cli("drain", "TCP 203.0.113.10:80", r, "--reason", f"a {r}")
    # the last N events (like tail), not the whole log
    last2 = [
        json.loads(x)["revision"] for x in stack.cli("tail", "-n", "2", "-o", "json").stdout.splitlines()
    ]
    assert last2 == [3, 4]
    assert len(stack.cli("tail").stdout.splitlines()) == 4
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvs_events.cli.main",
            "tail",
            "-f",
            "-n",
            "1",
            "-o",
            "json",
            "--endpoints",
            stack.endpoint,
            "--cluster",
            CLUSTER,
            "--timeout",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        seen = _read_lines(follower, lambda lines: len(lines) >= 1, timeout=20)
        stack.cli("enable", "TCP 203.0.113.10:80", reals[0], "--reason", "before")
        seen += _read_lines(follower, lambda lines: len(lines) >= 1, timeout=20)
        took = stack.stop_coordinator()
        assert took < 5, f"the coordinator's SIGTERM waited {took:.1f}s for a following stream"
        time.sleep(3)  # longer than --timeout: the follower keeps trying
        assert follower.poll() is None
        stack.start_coordinator()
        _coordinator_up(stack)
        stack.cli("enable", "TCP 203.0.113.10:80", reals[1], "--reason", "after")
        stack.cli("enable", "TCP 203.0.113.10:80", reals[2], "--reason", "after")
        seen += _read_lines(follower, lambda lines: len(lines) >= 2, timeout=30)
    finally:
        follower.terminate()
        follower.wait(10)
    revisions = [json.loads(x)["revision"] for x in seen]
    assert revisions == [4, 5, 6, 7], revisions  # no gap, no duplicate


def test_status_sees_a_killed_agent_go_silent(stack: Stack) -> None:
    _coordinator_up(stack)
    stack.start_agent("master", publish=True, report_interval=1)
    stack.start_agent("slave", publish=False, report_interval=1)

    def healthy() -> bool:
        res = stack.cli("status", "--silent-after", "5", check=False)
        return res.returncode == 0 and "slave" in res.stdout and "master" in res.stdout

    _wait(healthy, what="both agents reporting, in sync")
    doc = json.loads(stack.cli("status", "-o", "json", "--silent-after", "5").stdout)
    for node in ("master", "slave"):
        n = doc["nodes"][node]
        assert n["lag"] == doc["head_revision"] - n["applied_revision"]
        assert n["seen_ago"] < 5
    stack.procs["slave"].kill()
    killed = time.monotonic()

    def slave_silent() -> bool:
        return stack.cli("status", "--silent-after", "5", check=False).returncode == 5

    _wait(slave_silent, timeout=20, what="the killed slave shown silent")
    # the stated time: the threshold and a report interval; plus a generous allowance for the CLI's
    # own round trips on a loaded runner
    assert time.monotonic() - killed < 5 + 1 + 6
    res = stack.cli("status", "--silent-after", "5", check=False)
    slave = next(line for line in res.stdout.splitlines() if line.startswith("slave"))
    assert "SILENT" in slave
    master = next(line for line in res.stdout.splitlines() if line.startswith("master"))
    assert "SILENT" not in master


def test_conventions_cluster_options_escapes_and_unreachable_etcd(stack: Stack) -> None:
    _coordinator_up(stack)
    stack.cli("config", "apply", str(SEED), "--reason", "initial")
    # global options after the subcommand; a cluster these coordinators do not serve
    other = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvs_events.cli.main",
            "status",
            "--endpoints",
            stack.endpoint,
            "--cluster",
            "prod",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert other.returncode == 2
    assert "'prod'" in other.stderr
    assert "'e2e'" in other.stderr
    # a control sequence in a name is printed escaped, never interpreted
    stack.cli("drain", "TCP 203.0.113.10:80", "192.0.2.11:80", "--reason", "x", "--operator", "ev\x1b[31mil")
    line = stack.cli("tail", "-n", "1").stdout
    assert "\x1b" not in line
    assert "ev\\x1b[31mil" in line
    # etcd down behind a live coordinator: named as such, exit 4, quickly
    stack.etcd.members[0].stop()
    time.sleep(3)  # the coordinator's health check notices
    began = time.monotonic()
    res = stack.cli("status", check=False)
    assert res.returncode == 4, res.stderr
    assert "etcd unreachable" in res.stderr
    assert time.monotonic() - began < 4


def test_a_director_restarted_with_an_older_file_does_not_replace_the_config_in_force(
    stack: Stack, tmp_path: Path
) -> None:
    _coordinator_up(stack)
    stack.start_agent("master", publish=True)
    _wait(lambda: "ConfigApplied" in stack.cli("tail").stdout, what="the config the master published")
    newer = tmp_path / "newer.cf"
    newer.write_text(SEED.read_text().replace("real = 192.0.2.12:80 gate 20", "real = 192.0.2.12:80 gate 25"))
    stack.cli("config", "apply", str(newer), "--reason", "heavier", "--operator", "alice")
    stack.procs.pop("master").terminate()
    stack.start_agent("master", publish=True)  # the seed file: older than the config in force

    def refusal() -> list[dict[str, object]]:
        out = stack.cli("tail", "-o", "json", "--type", "ConfigRejected").stdout
        return [json.loads(line) for line in out.splitlines()]

    _wait(lambda: len(refusal()) == 1, what="the refusal of the older file")
    assert "not published at start" in str(refusal()[0]["summary"])
    assert "gate 25" in stack.cli("config", "show").stdout.replace(" = ", "=")
    assert stack.cli("config", "diff", str(newer)).returncode == 0
