"""maintenancedir: every name form ldirectord accepts, on a real directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvs_events.agent.maintenance import Maintenance, candidates


def test_candidates_in_ldirectords_order() -> None:
    assert candidates("192.0.2.11", 80, "web1.example.org") == [
        "192.0.2.11:80",
        "192.0.2.11",
        "web1.example.org:80",
        "web1.example.org",
        "web1:80",
        "web1",
    ]
    assert candidates("192.0.2.11", 80, None) == ["192.0.2.11:80", "192.0.2.11"]
    assert candidates("192.0.2.11", 80, "1web.example.org")[-1] == "1web.example.org"  # no short form


@pytest.mark.parametrize(
    "name", ["192.0.2.11:80", "192.0.2.11", "web1.example.org:80", "web1.example.org", "web1:80", "web1"]
)
def test_each_name_form_forces_the_server_down(tmp_path: Path, name: str) -> None:
    m = Maintenance(tmp_path, resolve={"192.0.2.11": "web1.example.org"}.get)
    assert m.check("192.0.2.11", 80) is None
    (tmp_path / name).touch()
    assert m.check("192.0.2.11", 80) == name
    assert m.check("192.0.2.12", 80) is None


def test_the_port_must_match(tmp_path: Path) -> None:
    (tmp_path / "192.0.2.11:443").touch()
    m = Maintenance(tmp_path, resolve=lambda a: None)
    assert m.check("192.0.2.11", 80) is None
    assert m.check("192.0.2.11", 443) == "192.0.2.11:443"
