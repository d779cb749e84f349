"""One VM boot per test session: the ``vm_run`` fixture runs the whole kernel suite inside.

Skipped (with the reason) when not root, when ``ipvs-vm`` is missing, or when its ``prepare``
(apt-get qemu + debootstrap, kernel, rootfs) fails; under CI (``$CI`` set) each of those is a
failure instead: CI must run the kernel tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.vm import vm


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(
            f"IPVS VM unavailable: {reason}; CI is set, so this is an error, not a skip", pytrace=False
        )
    pytest.skip(f"IPVS VM unavailable: {reason}")


@pytest.fixture(scope="session")
def vm_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.VmRun]:
    if os.geteuid() != 0:
        _unavailable("needs root (the VM script runs apt-get, debootstrap and chroot)")
    script = vm.vm_script()
    if not script.exists():
        _unavailable(f"{script} not found (set LVS_SHARED_DIR to the shared directory)")
    prep = vm.prepare()
    if prep.returncode != 0:
        tail = "\n".join((prep.stdout + prep.stderr).splitlines()[-15:])
        _unavailable(f"'ipvs-vm prepare' failed (qemu/debootstrap could not be installed?):\n{tail}")
    work = Path(tmp_path_factory.mktemp("ipvs-vm"))
    result = vm.run(work, "all", timeout=float(os.environ.get("LVS_VM_TIMEOUT", "900")))
    (work / "console.log").write_text(result.console)
    if not result.results:
        pytest.fail(
            f"the VM produced no results (rc={result.returncode}); console tail:\n"
            + "\n".join(result.console.splitlines()[-40:]),
            pytrace=False,
        )
    return result


def assert_case(run: vm.VmRun, name: str) -> dict[str, object]:
    r = run.result(name)
    assert r, f"case {name} did not run in the VM (rc={run.returncode})"
    assert r.get("ok"), f"{name} failed in the VM: {r.get('error')}\n{r.get('traceback', '')}"
    return r
