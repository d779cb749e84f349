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

    def start_agent(self, node: str, *, publish: bool) -> None:
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
    """Lines printed by a running process until ``until(lines)`` holds."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(lines):  # type: ignore[operator]
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
    return lines


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
    digest = table.strip().splitlines()[-1].split()[-1]

    def in_sync() -> bool:
        doc = json.loads(stack.cli("status", "-o", "json").stdout)
        return all(doc["nodes"].get(n, {}).get("digest") == digest for n in ("master", "slave"))

    _wait(in_sync, what="both agents at the CLI's table digest")
    status = stack.cli("status").stdout
    assert "master" in status
    assert "slave" in status
    # no agent campaigns here (no --peer): the election service answers that nobody is active
    assert "leadership: no active director" in status
    assert json.loads(stack.cli("status", "-o", "json").stdout)["leadership"]["active"] is None
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
    assert stack.cli("config", "diff", str(cf)).stdout == "no changes\n"

    # a broken file keeps the config in force and is recorded once, with the line
    time.sleep(1.1)
    cf.write_text(seed.replace("scheduler = wrr", "scheduler = wrr\n    quiescent = maybe", 1))
    _wait(lambda: len(config_events()) == 3, what="the refusal")
    time.sleep(2.5)  # two more polls: not recorded again
    events = config_events()
    assert [e["type"] for e in events] == ["ConfigApplied", "ConfigApplied", "ConfigRejected"]
    assert "ldirectord.cf:" in str(events[2]["summary"])
    assert "quiescent" in str(events[2]["summary"])
    assert "last refused config" in stack.cli("status").stdout
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
