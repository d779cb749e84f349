"""``lvs-events drill`` against a running pair (not ``--lab``), end to end: the namespace lab is
started here and left running as a deployed pair would be; the CLI runs in the lab's client
namespace and sees the pair only through its coordinators, probing the VIP itself. The faults are
the operator commands (``--kill-command`` ...), which reach the lab through its control socket.

Needs root and ``ip netns`` (skipped otherwise; under CI a missing capability is a failure).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from lvs_events.drills.drill import _ready
from lvs_events.drills.lab import CLUSTER, VIP, NetnsLab, netns_available
from lvs_events.drills.running import SCENARIO_COMMANDS
from tests.conftest import in_ci

pytestmark = [pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _lab_or_skip() -> None:
    why = netns_available()
    if why:
        if in_ci():
            pytest.fail(f"netns drills cannot run: {why}; CI is set, so this is an error", pytrace=False)
        pytest.skip(why)


async def _drill(scenario: str) -> tuple[int, str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run ``lvs-events drill SCENARIO`` against the lab as a running pair: exit status, stderr,
    the report, the summary, and the log's Leadership and DrillMarker events afterwards."""
    async with NetnsLab() as lab:
        await _ready(lab)
        async with lab.control() as sock:
            commands = lab.operator_commands(sock)
            options = [f"--{k}-command={commands[k]}" for k in SCENARIO_COMMANDS[scenario]]
            proc = await asyncio.create_subprocess_exec(
                *("ip", "netns", "exec", lab.ns["client"], sys.executable, "-m", "lvs_events.cli.main"),
                *("--endpoints", lab.coordinators(), "--cluster", CLUSTER),
                *("drill", scenario, "--vip", f"{VIP}:80", "-o", "json", *options),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), **lab.tls_env()},  # as the lab's operator
            )
            async with asyncio.timeout(180):
                out, err = await proc.communicate()
        log = await lab.helper("log", "1")
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 2, (out.decode(), err.decode()[-3000:])  # one report, then the summary
    assert proc.returncode is not None
    return proc.returncode, err.decode(), lines[0], lines[1], log


def _common(report: dict[str, Any], summary: dict[str, Any], log: list[dict[str, Any]]) -> None:
    assert report["two_holders"] is False, report
    assert report["digests_equal"] is True, report
    assert report["attempts"] > report["failed_connections"], report
    assert summary["completed"] == 1
    phases = [e["phase"] for e in log if e["kind"] == "marker" and e["drill_id"] == report["drill_id"]]
    assert phases == ["start", "end"], log


@pytest.mark.parametrize("scenario", ["kill-active", "partition-active"])
async def test_failover_drill_against_a_running_pair(scenario: str) -> None:
    _lab_or_skip()
    code, err, report, summary, log = await _drill(scenario)
    assert code == 0, err[-3000:]
    _common(report, summary, log)
    assert report["new_active"], report
    assert report["new_active"] != report["old_active"], report
    assert report["new_term"] > report["old_term"], report
    for key in ("detect", "elect", "vip", "first_connection"):
        assert report[key] is not None, (key, report)
    # the VIP was on neither node for at least the standby's authority wait: the probe saw it
    assert report["failed_connections"] > 0, report
    assert report["fenced_refused"] is True, "an event with the old active's term must be refused"
    # the log says who took over, and which term the fenced event was refused against
    acquired = [(e["node"], e["term"]) for e in log if e.get("change") == "acquired"]
    assert (report["new_active"], report["new_term"]) in acquired, log


async def test_etcd_member_down_against_a_running_pair() -> None:
    _lab_or_skip()
    code, err, report, summary, log = await _drill("etcd-member-down")
    assert code == 0, err[-3000:]
    _common(report, summary, log)
    assert report["new_active"] == report["old_active"], report  # quorum kept: no failover
    assert report["new_term"] == report["old_term"], report
    assert report["failed_connections"] == 0, report
    assert report["fenced_refused"] is None, report  # not tried: nobody was fenced
