"""``lvs-events drill``: argument checks (no pair needed), and the drills in the namespace lab
(marker ``netns``: root and ``ip netns``; skipped otherwise, a failure under CI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvs_events.cli import main as cli
from lvs_events.drills.drill import SCENARIOS
from lvs_events.drills.running import SCENARIO_COMMANDS, missing_commands
from tests.conftest import in_ci

REPO = Path(__file__).resolve().parents[2]


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return int(e.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("scenario", ["kill-active", "partition-active", "etcd-member-down"])
def test_fault_scenario_without_commands_or_lab_is_refused(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _exit(["--endpoints", "127.0.0.1:1", "drill", scenario, "--vip", "127.0.0.1:1"], capsys)
    assert code == cli.EXIT_USAGE
    assert "--lab" in err
    for needed in missing_commands(scenario, {}):
        assert needed in err


def test_one_command_of_two_is_not_enough(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit(["drill", "kill-active", "--vip", "127.0.0.1:1", "--kill-command", "true"], capsys)
    assert code == cli.EXIT_USAGE
    assert "--start-command" in err
    assert "--kill-command" not in err


def test_running_pair_needs_the_vip_and_sane_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit(["drill", "switchover"], capsys)
    assert code == cli.EXIT_USAGE
    assert "--vip HOST:PORT" in err
    code, err = _exit(["drill", "switchover", "--vip", "127.0.0.1:1", "--runs", "0"], capsys)
    assert code == cli.EXIT_USAGE
    assert "--runs" in err


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _exit(["drill", "unplug-everything"], capsys)
    assert code == 2


def test_every_scenario_says_which_commands_it_needs() -> None:
    assert set(SCENARIO_COMMANDS) == set(SCENARIOS)
    assert missing_commands("switchover", {}) == []


# --- in the namespace lab ----------------------------------------------------------------------


def _lab_or_skip() -> None:
    from lvs_events.drills.lab import netns_available

    why = netns_available()
    if why:
        if in_ci():
            pytest.fail(f"netns drills cannot run: {why}; CI is set, so this is an error", pytrace=False)
        pytest.skip(why)


@pytest.mark.netns
@pytest.mark.slow
def test_drill_kill_active_in_the_lab_json() -> None:
    _lab_or_skip()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvs_events.cli.main",
            *("drill", "kill-active", "--lab", "--runs", "1", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 2, res.stdout  # one report, then the summary
    report, summary = lines
    assert report["scenario"] == "kill-active"
    assert report["new_active"]
    assert report["new_active"] != report["old_active"]
    assert report["two_holders"] is False
    assert report["digests_equal"] is True
    assert report["fenced_refused"] is True
    assert report["first_connection"] is not None
    assert summary["summary"] == "kill-active"
    assert summary["completed"] == 1
    assert summary["first_connection_p50"] == report["first_connection"]


@pytest.mark.netns
@pytest.mark.slow
async def test_drill_switchover_against_a_running_pair() -> None:
    """Without --lab: the CLI, run in the lab's client namespace, observes the pair only through
    its coordinators and probes the VIP itself."""
    _lab_or_skip()
    from lvs_events.drills.drill import _ready
    from lvs_events.drills.lab import CLUSTER, VIP, NetnsLab

    async with NetnsLab() as lab:
        await _ready(lab)
        proc = await asyncio.create_subprocess_exec(
            *("ip", "netns", "exec", lab.ns["client"], sys.executable, "-m", "lvs_events.cli.main"),
            *("--endpoints", lab.coordinators(), "--cluster", CLUSTER),
            *("drill", "switchover", "--vip", f"{VIP}:80", "-o", "json"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **lab.tls_env()},  # as the lab's operator
        )
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    report, summary = (json.loads(line) for line in out.decode().splitlines())
    assert report["new_active"] != report["old_active"], report
    assert report["vip"] is not None
    assert report["first_connection"] is not None
    assert report["two_holders"] is False
    assert report["digests_equal"] is True
    assert summary["completed"] == 1
