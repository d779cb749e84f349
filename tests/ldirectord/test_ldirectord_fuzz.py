"""Mutated corpus files: only ConfigError ever comes out (and, with ldirectord installed, its verdict)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lvs_events.domain.config import Family
from lvs_events.ldirectord import ConfigError, StaticResolver, SystemResolver, format_config, parse_text

from .corpus import require_corpus
from .mutate import mutations

FUZZ_COUNT = 50_000  # per mode: 100,000 mutated corpus files in all
HARNESS = Path(__file__).with_name("ldirectord_harness.pl")
LDIRECTORD = Path("/usr/sbin/ldirectord")


def _corpus() -> list[bytes]:
    d = require_corpus()
    return [p.read_bytes() for p in sorted(d.glob("*.cf"))]


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_fuzz_only_config_error(strict: bool) -> None:
    resolver = StaticResolver()
    accepted = refused = 0
    errors: list[tuple[int, ConfigError]] = []
    for i, data in enumerate(mutations(_corpus(), FUZZ_COUNT, seed=7 if strict else 3)):
        text = data.decode("utf-8", "surrogateescape")
        try:
            config = parse_text(text, f"m{i}.cf", resolver=resolver, strict=strict)
        except ConfigError as exc:
            refused += 1
            errors.append((i, exc))
            continue
        accepted += 1
        assert parse_text(format_config(config), f"m{i}.cf", resolver=resolver, strict=strict) == config
    assert accepted + refused == FUZZ_COUNT
    for i, exc in errors:
        assert exc.line >= 1
        assert str(exc).startswith(f"m{i}.cf:{exc.line}:")
    assert accepted > 100
    assert refused > 100


class _NumericHostsSystemServices:
    """Resolves as the harness does: numeric host names only, services from /etc/services."""

    def __init__(self) -> None:
        self._hosts = StaticResolver()
        self._services = SystemResolver()

    def host(self, name: str, family: Family) -> str | None:
        return self._hosts.host(name, family)

    def service(self, name: str, protocol: str | None) -> int | None:
        return self._services.service(name, protocol)


@pytest.mark.skipif(
    not LDIRECTORD.exists() or shutil.which("perl") is None,
    reason="ldirectord (Debian package) not installed",
)
def test_differential_against_installed_ldirectord(tmp_path: Path) -> None:
    """--strict gives the installed ldirectord's verdict, line and counts on mutated files."""
    count = 1500
    paths = []
    for i, data in enumerate(mutations(_corpus(), count, seed=11)):
        path = tmp_path / f"m{i:05d}.cf"
        path.write_bytes(data)
        paths.append(path)
    proc = subprocess.run(
        ["perl", str(HARNESS)],
        input="".join(f"{p}\n" for p in paths),
        capture_output=True,
        text=True,
        errors="surrogateescape",
        check=True,
        cwd=tmp_path,
        timeout=600,
    )
    results = proc.stdout.splitlines()
    assert len(results) == count, proc.stderr
    resolver = _NumericHostsSystemServices()
    mismatches = []
    for path, line in zip(paths, results, strict=True):
        upstream = json.loads(line)
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        try:
            config = parse_text(text, path.name, resolver=resolver, strict=True)
            ours = {
                "status": "ok",
                "virtuals": len(config.virtuals),
                "reals": sum(len(v.reals) for v in config.virtuals),
            }
        except ConfigError as exc:
            ours = {"status": "error", "line": exc.line}
        theirs = {k: upstream[k] for k in ours if k in upstream}
        theirs["status"] = upstream["status"]
        if ours != theirs:
            mismatches.append((path.name, ours, upstream))
    assert not mismatches, mismatches[:5]
