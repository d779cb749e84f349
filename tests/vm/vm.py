"""Host side of the VM tests: find ``ipvs-vm``, build the job directory, boot once, read results.

The job directory carries everything the VM lacks: the project's ``lvs_events``, ``agent`` and
``coordinator`` packages (sources only) and their runtime dependencies copied from this
interpreter's installation (``RUNTIME_MODULES``: cp311 manylinux builds, and the VM's Python 3.11
has the same ABI), the seed configuration and the scripts in ``tests/vm/suite``. pyroute2 (pinned
0.9.7) is in the VM image, and so is etcd: the image is built with ``EXTRA_PKGS`` (Debian's
``etcd-server``), so it has its own cache directory (``cache_dir``): ``ipvs-vm`` does not rebuild a
cache whose packages changed. ``python -m tests.vm.vm prepare`` builds it (``.ci/run`` does).
"""

from __future__ import annotations

import compileall
import importlib.metadata
import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = Path(__file__).resolve().parent / "suite"


def shared_dir() -> Path:
    return Path(os.environ.get("LVS_SHARED_DIR") or REPO.parent / "shared").resolve()


def vm_script() -> Path:
    return shared_dir() / "vm" / "ipvs-vm"


# Debian packages added to the VM's root filesystem: the real stack (etcd, coordinator, agents)
# runs inside for the failover drill and the weight-change-from-the-log benchmark.
EXTRA_PKGS = ("etcd-server",)
# What the project's packages import at run time (``pyproject.toml`` dependencies; pyroute2 is in
# the image): the import names of etcd3aio, immutables, dnspython, grpcio (+ health checking,
# reflection), protobuf, structlog, and typing_extensions (grpc's and structlog's).
RUNTIME_MODULES = (
    "etcd3aio",
    "immutables",
    "dns",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "google.protobuf",
    "structlog",
    "typing_extensions",
    "cryptography",  # TLS material and principals (lvs_events.security), imported by every client
    "_cffi_backend",  # cryptography's C binding helper: one extension module
)


def cache_dir() -> Path:
    """The VM image cache for ``EXTRA_PKGS`` (``LVS_VM_WORK`` overrides): one directory per package
    set, because ``ipvs-vm prepare`` keeps whatever cache it finds."""
    override = os.environ.get("LVS_VM_WORK")
    if override:
        return Path(override)
    key = "-".join(EXTRA_PKGS)
    return Path(os.environ.get("HOME") or "/root") / ".cache" / f"ipvs-vm-{key}"


def vm_env(**extra: str) -> dict[str, str]:
    """The environment of every ``ipvs-vm`` call: the same packages, the same cache."""
    return dict(os.environ, WORK=str(cache_dir()), EXTRA_PKGS=" ".join(EXTRA_PKGS), **extra)


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
    # and the distribution's metadata (etcd3aio reads its own version at import)
    top = module.split(".", maxsplit=1)[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        files = importlib.metadata.distribution(dist_name).files or []
        for f in files:
            if f.name == "METADATA" and f.parent.name.endswith(".dist-info"):
                info = Path(str(f.locate())).parent
                if not (dest / info.name).exists():
                    shutil.copytree(info, dest / info.name)


def build_job(job: Path) -> Path:
    """Lay out the job directory for ``suite/run.sh``; returns it."""
    if job.exists():
        shutil.rmtree(job)
    job.mkdir(parents=True)
    src = job / "src"
    src.mkdir()
    for pkg in ("lvs_events",):
        _copy_package(pkg, src)
    site = job / "site"
    site.mkdir()
    for module in RUNTIME_MODULES:
        _copy_installed(module, site)
    (job / "seed").mkdir()
    shutil.copy2(shared_dir() / "seed" / "ldirectord.cf", job / "seed" / "ldirectord.cf")
    shutil.copytree(SUITE, job / "suite", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(SUITE / "run.sh", job / "run.sh")
    (job / "bench").mkdir()
    bench = REPO / "bench" / "bench_kernel.py"
    if bench.exists():
        shutil.copy2(bench, job / "bench" / "bench_kernel.py")
    # Bytecode compiled here, once: the emulated VM would compile every module again in every
    # process it starts (tens of seconds per agent). Same magic number (3.11) as the VM's Python;
    # unchecked-hash: valid whatever the files' times (the job is rebuilt for every boot).
    compileall.compile_dir(
        job,
        quiet=1,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
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
        env=vm_env(),
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
    env = vm_env(JOB_DIR=str(job), OUT_DIR=str(out), TIMEOUT=str(int(timeout)))
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


def main(argv: list[str]) -> int:
    """``python -m tests.vm.vm prepare``: build the VM image cache (CI does it before the tests so
    that its time shows apart; the tests prepare it themselves otherwise)."""
    if argv != ["prepare"]:
        print("usage: python -m tests.vm.vm prepare", file=sys.stderr)
        return 2
    script = vm_script()
    if not script.exists():
        print(f"no {script}: the kernel tests will fail under CI (set LVS_SHARED_DIR)")
        return 0
    print(f"{script} prepare (EXTRA_PKGS={' '.join(EXTRA_PKGS)}, cache {cache_dir()})", flush=True)
    return subprocess.run(
        [str(script), "prepare"], env=vm_env(), stdin=subprocess.DEVNULL, check=False
    ).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
