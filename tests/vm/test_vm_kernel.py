"""The IPVS dataplane on a real kernel: results of ``suite/kernel_cases.py`` run in the VM.

The VM boots once per session (``vm_run`` in conftest); each test asserts one case.
"""

from __future__ import annotations

import pytest

from tests.vm.conftest import assert_case
from tests.vm.vm import VmRun

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_vm_seed_config_appears_in_ipvsadm_listing(vm_run: VmRun) -> None:
    r = assert_case(vm_run, "kernel:seed_listing")
    assert "TCP  203.0.113.10:80 wrr persistent 7200" in str(r["detail"])


def test_vm_every_feature_round_trips(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:features_roundtrip")


def test_vm_every_edit_round_trips(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:edits_roundtrip")


def test_vm_ipvsadm_restore_accepts_save_format(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:save_restore")


def test_vm_reconcile_order_never_drops_traffic(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:order_never_drops")


def test_vm_drift_is_reported_and_repaired(vm_run: VmRun) -> None:
    r = assert_case(vm_run, "kernel:drift_repair")
    assert r["detail"]["drift"]  # type: ignore[index]


def test_vm_drift_dump_does_not_block_applies(vm_run: VmRun) -> None:
    r = assert_case(vm_run, "kernel:drift_dump_does_not_block_applies")
    assert r["detail"]["applies_during_dump"] > 0  # type: ignore[index]


def test_vm_drift_comparison_holds_no_lock(vm_run: VmRun) -> None:
    r = assert_case(vm_run, "kernel:drift_compare_off_the_lock")
    assert r["detail"]["applies_during_compare"] > 0  # type: ignore[index]


def test_vm_foreign_services_untouched(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:foreign_untouched")


def test_vm_adopts_existing_and_owned_set_survives_restart(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:adopt_and_restart")


def test_vm_kernel_refusal_is_a_typed_error(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:refusal_is_typed")


def test_vm_netlink_does_not_block_the_event_loop(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:event_loop_not_blocked")


def test_vm_two_directors_in_namespaces_have_one_digest(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:two_directors")


def test_vm_render_normalisations_match_the_kernel_dump(vm_run: VmRun) -> None:
    assert_case(vm_run, "kernel:render_normalised")


def test_vm_agent_per_event_path_keeps_the_kernel_equal_to_the_render(vm_run: VmRun) -> None:
    r = assert_case(vm_run, "kernel:agent_per_event_path")
    assert r["detail"]["partial_reconciles"] >= 15  # type: ignore[index]
