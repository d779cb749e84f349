"""The package's layering, asserted on what a fresh interpreter actually imports.

* the operator CLI imports no agent and no drill code (the drill command imports it lazily);
* the pure core (``lvs_events.domain``) imports nothing but the standard library, ``immutables``
  and the package's own error types;
* ``lvs_events`` is the only top-level package the project installs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_cli_imports_no_agent_or_drill_module() -> None:
    loaded = _modules_after("import lvs_events.cli.main")
    assert "lvs_events.cli.main" in loaded
    offending = sorted(
        m for m in loaded if m.startswith(("lvs_events.agent", "lvs_events.drills", "lvs_events.cli.drill"))
    )
    assert offending == []


def test_the_cli_knows_every_drill_scenario_by_name() -> None:
    from lvs_events.cli.main import DRILL_SCENARIOS
    from lvs_events.drills.drill import SCENARIOS

    assert list(DRILL_SCENARIOS) == list(SCENARIOS)


def test_the_domain_imports_only_the_standard_library_and_immutables() -> None:
    domain = sorted(p.stem for p in (REPO / "lvs_events" / "domain").glob("*.py") if p.stem != "__init__")
    assert "state" in domain
    assert "render" in domain
    loaded = _modules_after("\n".join(f"import lvs_events.domain.{m}" for m in domain))
    stdlib = set(sys.stdlib_module_names)
    third_party = sorted(
        {m.split(".")[0] for m in loaded}
        - stdlib
        - {"lvs_events", "immutables", "__main__"}
        - {m for m in loaded if m.startswith(("__editable__", "_distutils_hack"))}  # site hooks
    )
    assert third_party == []
    ours = sorted(m for m in loaded if m.startswith("lvs_events"))
    allowed = {"lvs_events", "lvs_events.errors", "lvs_events.domain"}
    assert [m for m in ours if m not in allowed and not m.startswith("lvs_events.domain.")] == []


def test_lvs_events_is_the_only_top_level_package_installed() -> None:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = conf["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(REPO), include=include)
    assert "lvs_events.agent" in packages
    assert "lvs_events.coordinator" in packages
    assert {p.split(".")[0] for p in packages} == {"lvs_events"}
    for stale in ("agent", "coordinator"):
        assert not (REPO / stale / "__init__.py").exists(), f"a second top-level package {stale}/"
