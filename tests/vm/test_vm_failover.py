"""Killing the active director under real traffic (``suite/failover.py`` in the VM): etcd, a
coordinator, two ``lvs-agent --dataplane ipvs`` in HA, IPVS masquerading to two real servers, a
client connecting to the VIP in a loop; the active's agent is SIGKILLed, later the new active's
namespace is cut off. No timed assertions: the times are in the report (and in the docs)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.vm.conftest import assert_case
from tests.vm.vm import VmRun

pytestmark = [pytest.mark.vm, pytest.mark.slow]

NODES = ("dir1", "dir2")


def _drill(vm_run: VmRun) -> dict[str, Any]:
    detail = assert_case(vm_run, "failover:drill")["detail"]
    assert isinstance(detail, dict)
    return detail


def _same_tables(tables: dict[str, Any]) -> None:
    """Both kernels (a dump in each director's namespace) hold the table both agents applied."""
    digests = {tables[n]["digest"] for n in NODES} | {tables[n]["applied"] for n in NODES}
    assert len(digests) == 1, tables
    assert all(tables[n]["services"] == 1 and tables[n]["dests"] == 2 for n in NODES), tables


def _failover(r: dict[str, Any]) -> None:
    """What every fault on the active must give: the other director takes over with a new term,
    the client's failures are counted and confined to the gap, then the new active serves."""
    assert r["new_active"], r
    assert r["new_active"] != r["old_active"], r
    assert r["new_term"] > r["old_term"], r
    assert r["first_connection_s"] is not None, r  # a connection succeeded through the new active
    assert r["failed"] >= 1, r  # the VIP was nowhere for a while: counted, not hidden
    assert r["failed"] < r["attempts"], r
    assert r["failed_after_first_connection"] == 0, r  # no failure once the new active answered
    assert r["last_10_ok"], r
    assert set(r["answered_by"]) == {"real1", "real2"}, r  # both real servers through the new one


def test_vm_failover_pair_starts_with_warm_identical_kernels(vm_run: VmRun) -> None:
    before = _drill(vm_run)["before"]
    assert before["active"] in NODES
    _same_tables(before["tables"])  # the standby's kernel is already programmed
    assert before["failed"] == 0, before
    assert before["attempts"] > 0, before
    assert set(before["answered_by"]) == {"real1", "real2"}, before


def test_vm_failover_kill_active_agent(vm_run: VmRun) -> None:
    r = _drill(vm_run)["kill_active"]
    _failover(r)
    assert r["fenced_refused"], "an event carrying the killed active's term must be refused"
    # the killed agent, started again, is the standby with the same table in its kernel
    assert r["active_after_restart"] == r["new_active"], r
    _same_tables(r["tables_after_restart"])


def test_vm_failover_cut_active_namespace(vm_run: VmRun) -> None:
    r = _drill(vm_run)["cut_active"]
    _failover(r)
    assert r["old_let_go_s"] is not None, r  # the cut-off active removed the VIP by itself
    _same_tables(r["tables_after_heal"])


def test_vm_failover_never_two_vip_holders(vm_run: VmRun) -> None:
    d = _drill(vm_run)
    assert d["two_holders"] is False, d["holder_log"]
    assert d["end_holders"] == [d["end_active"]], d["holder_log"]
