"""Real traffic through the kernel dataplane (``suite/traffic.py`` in the VM): a client opens
connection after connection to the VIP while a real server is drained, restored, stopped
gracefully, restarted, and killed abruptly. Killing the active director: ``test_vm_failover.py``."""

from __future__ import annotations

import pytest

from tests.vm.conftest import assert_case
from tests.vm.vm import VmRun

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def _drill(vm_run: VmRun) -> dict[str, object]:
    detail = assert_case(vm_run, "traffic:drill")["detail"]
    assert isinstance(detail, dict)
    return detail


def _phase(vm_run: VmRun, name: str) -> dict[str, int]:
    phases = _drill(vm_run)["phases"]
    assert isinstance(phases, dict)
    return dict(phases[name])


def _errors(counts: dict[str, int]) -> int:
    return sum(n for what, n in counts.items() if what.startswith(("ERR", "HTTP")))


def test_vm_traffic_both_servers_answer(vm_run: VmRun) -> None:
    both = _phase(vm_run, "both")
    assert both.get("real1", 0) > 0
    assert both.get("real2", 0) > 0
    assert _errors(both) == 0


def test_vm_traffic_drained_server_gets_no_new_connections(vm_run: VmRun) -> None:
    drained = _phase(vm_run, "drain-real1")
    assert drained.get("real2", 0) > 10
    assert _errors(drained) == 0
    # At most a connection already on its way when the weight-0 ack came back (within 100 ms).
    late = _drill(vm_run)["first_last_ms"].get("drain-real1:real1:ms")  # type: ignore[attr-defined]
    assert late is None or late[1] <= 100, f"real1 answered {late} ms into its drain"


def test_vm_traffic_restored_server_gets_connections_again(vm_run: VmRun) -> None:
    restored = _phase(vm_run, "restore-real1")
    assert restored.get("real1", 0) > 10
    assert restored.get("real2", 0) > 10
    assert _errors(restored) == 0


def test_vm_traffic_graceful_stop_and_restart_lose_nothing(vm_run: VmRun) -> None:
    for name in ("stop-real1-drained", "stop-real1-removed", "real1-stopped"):
        counts = _phase(vm_run, name)
        assert counts.get("real1", 0) == 0 or name == "stop-real1-drained", (name, counts)
        assert _errors(counts) == 0, (name, counts)
    back = _phase(vm_run, "real1-restarted-added")
    assert back.get("real1", 0) > 10
    assert _errors(back) == 0, back  # the drill waits until the restarted server answers


def test_vm_traffic_abrupt_kill_fails_until_the_table_drops_the_server(vm_run: VmRun) -> None:
    killed = _phase(vm_run, "real1-killed-in-table")
    after = _phase(vm_run, "real1-removed-after-kill")
    assert _errors(killed) > 0  # nobody removed it yet: ~half the connections are refused
    assert _errors(after) == 0
    assert after.get("real2", 0) > 10
