"""maintenancedir with the real Checker: a file forces the server down, its removal lets checks decide."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lvs_events.agent.checks import Checker
from lvs_events.agent.maintenance import MaintenanceWatcher
from tests.checks.test_checks_scheduler import Reports, Script, running, state, until


async def test_checks_a_maintenance_file_forces_down_and_its_removal_restores(tmp_path: Path) -> None:
    s = state(2)
    assert s.config is not None
    cfg = replace(s.config, globals=replace(s.config.globals, maintenancedir=str(tmp_path)))
    s = replace(s, config=cfg)
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(s)
    watcher = MaintenanceWatcher(checker, lambda: cfg, resolve=lambda _a: None)
    async with running(checker, reports):
        await until(lambda: reports.of("127.0.0.1:1") == [True] and reports.of("127.0.0.1:2") == [True])
        (tmp_path / "127.0.0.1:2").touch()
        assert await watcher.poll_once() == {("TCP 10.0.0.1:80", "127.0.0.1:2"): "127.0.0.1:2"}
        await until(lambda: reports.of("127.0.0.1:2") == [True, False])
        detail = next(d for r, up, _, d in reports.items if r == "127.0.0.1:2" and not up)
        assert detail == "server in maintenance: file 127.0.0.1:2"
        calls = script.count("127.0.0.1:2")
        await until(lambda: script.count("127.0.0.1:2") >= calls + 3)  # checks go on, verdict stays
        assert reports.of("127.0.0.1:2") == [True, False]
        (tmp_path / "127.0.0.1:2").unlink()
        assert await watcher.poll_once() == {}
        await until(lambda: reports.of("127.0.0.1:2") == [True, False, True])
    assert reports.of("127.0.0.1:1") == [True]
