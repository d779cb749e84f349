"""Where etcd3aio may be used: the etcd package only, its internals in one module only, and the
coordinator reaches its stores through the contracts of ``lvs_events.coordinator.stores``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lvs_events"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def _sources() -> dict[str, set[str]]:
    return {
        str(p.relative_to(PACKAGE.parent)): _imports(p)
        for p in PACKAGE.rglob("*.py")
        if "pb" not in p.relative_to(PACKAGE).parts[:1]
    }


def test_only_the_etcd_package_imports_etcd3aio() -> None:
    users = {path for path, names in _sources().items() if any(n.split(".")[0] == "etcd3aio" for n in names)}
    assert users
    assert all(path.startswith("lvs_events/etcd/") for path in users), sorted(users)


def test_only_the_bypass_module_uses_etcd3aio_internals() -> None:
    users = {
        path
        for path, names in _sources().items()
        if any(part.startswith("_") for n in names if n.startswith("etcd3aio") for part in n.split("."))
    }
    assert users == {"lvs_events/etcd/bypass.py"}


def test_the_coordinator_names_the_etcd_classes_only_where_it_builds_them() -> None:
    concrete = {"lvs_events.etcd.events", "lvs_events.etcd.leader", "lvs_events.etcd.connection"}
    users = {
        path
        for path, names in _sources().items()
        if path.startswith("lvs_events/coordinator/") and names & concrete
    }
    assert users == {"lvs_events/coordinator/server.py"}


def test_no_capability_probing_where_the_coordinator_meets_its_stores() -> None:
    """Stores are typed by protocols: no getattr/hasattr on them, nor on etcd3aio's objects."""
    coordinator = ("appender", "election", "main", "server", "snapshots", "stores")
    files = [*PACKAGE.joinpath("etcd").glob("*.py")]
    files += [PACKAGE / "coordinator" / f"{name}.py" for name in coordinator]
    probes = [
        f"{p.name}:{node.lineno}"
        for p in files
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
    ]
    assert probes == []
