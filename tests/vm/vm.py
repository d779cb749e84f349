"""Host side of the VM tests: find ``ipvs-vm``, build the job directory, boot once, read results.

The job directory carries everything the VM lacks: the project's ``lvs_events`` and ``agent``
packages (sources only), ``immutables``, ``grpc``, ``protobuf``, ``structlog`` and
``typing_extensions`` copied from this interpreter's installation (cp311 manylinux builds: the VM's
Python 3.11 has the same ABI; the agent's core imports the client module), the seed configuration
and the scripts in ``tests/vm/suite``. pyroute2 (pinned 0.9.7) is already in the VM image.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = Path(__file__).resolve().parent / "suite"


def shared_dir() -> Path:
    return Path(os.environ.get("LVS_SHARED_DIR") or REPO.parent / "shared").resolve()


def vm_script() -> Path:
    return shared_dir() / "vm" / "ipvs-vm"


def _copy_package(name: str, dest: Path) -> None:
    shutil.copytree(
        REPO / name,
        dest / name,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )


def _copy_installed(module: str, dest: Path) -> None:
    """Copy an installed package (or single-file module) of this interpreter into ``dest``;
    ``google.protobuf`` copies the whole ``google`` directory."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{module} is not installed in this interpreter")
    origin = Path(spec.origin)
    if origin.name != "__init__.py":  # a module file
        shutil.copy2(origin, dest / origin.name)
        return
    pkg = origin.parent
    for _ in range(module.count(".")):
        pkg = pkg.parent
    shutil.copytree(pkg, dest / pkg.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_job(job: Path) -> Path:
    """Lay out the job directory for ``suite/run.sh``; returns it."""
    if job.exists():
        shutil.rmtree(job)
    job.mkdir(parents=True)
    src = job / "src"
    src.mkdir()
    for pkg in ("lvs_events", "agent"):
        _copy_package(pkg, src)
    # What the dataplane, the domain and the agent's core import (cp311 builds: the VM's Python
    # 3.11 has the same ABI); the core imports the client module, hence grpc and protobuf.
    site = job / "site"
    site.mkdir()
    for module in ("immutables", "grpc", "google.protobuf", "structlog", "typing_extensions"):
        _copy_installed(module, site)
    (job / "seed").mkdir()
    shutil.copy2(shared_dir() / "seed" / "ldirectord.cf", job / "seed" / "ldirectord.cf")
    shutil.copytree(SUITE, job / "suite", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(SUITE / "run.sh", job / "run.sh")
    (job / "bench").mkdir()
    bench = REPO / "bench" / "bench_kernel.py"
    if bench.exists():
        shutil.copy2(bench, job / "bench" / "bench_kernel.py")
    return job


@dataclass
class VmRun:
    returncode: int
    seconds: float
    console: str
    out: Path
    results: dict[str, dict[str, object]] = field(default_factory=dict)

    def result(self, name: str) -> dict[str, object]:
        return self.results.get(name, {})


def prepare(timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(vm_script()), "prepare"],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run(work: Path, *args: str, timeout: float = 600) -> VmRun:
    """Boot the VM once with the job in ``work/job``; results land in ``work/out``."""
    job = build_job(work / "job")
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, JOB_DIR=str(job), OUT_DIR=str(out), TIMEOUT=str(int(timeout)))
    t0 = time.monotonic()
    p = subprocess.run(
        [str(vm_script()), "./run.sh", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout + 120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    took = time.monotonic() - t0
    run_ = VmRun(p.returncode, took, p.stdout + p.stderr, out)
    for f in sorted(out.glob("*.json")) if out.exists() else []:
        try:
            data = json.loads(f.read_text())
        except ValueError:
            continue
        if isinstance(data, dict):
            run_.results.update({f"{f.stem}:{k}": v for k, v in data.items()})
    return run_
