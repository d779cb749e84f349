"""autoreload's decision (pure) and its file watching on a real file."""

from __future__ import annotations

from pathlib import Path

from lvs_events.agent.autoreload import AutoReloader, Loaded, decide, load
from lvs_events.domain.config import Config, GlobalSettings
from lvs_events.domain.events import ConfigApplied, ConfigRejected, Payload
from lvs_events.ldirectord import parse_text

GOOD = (
    "autoreload=yes\ncheckinterval=1\n\n"
    "virtual=203.0.113.10:80\n\treal=192.0.2.11:80 gate 10\n\tservice=http\n"
)


def test_decide() -> None:
    cfg = Config(GlobalSettings(autoreload=True), source="a.cf")
    assert (
        decide(cfg, Loaded("d1", Config(GlobalSettings(autoreload=True), source="b.cf")), "x.cf", "") is None
    )
    new = Config(GlobalSettings(autoreload=True, checkinterval=2.0))
    applied = decide(cfg, Loaded("d2", new), "x.cf", "")
    assert isinstance(applied, ConfigApplied)
    assert applied.config.source == "x.cf"
    assert applied.digest == "d2"
    refused = decide(cfg, Loaded("d3", None, "x.cf:3:1: bad"), "x.cf", "")
    assert refused == ConfigRejected("x.cf", "x.cf:3:1: bad", "d3")
    assert decide(cfg, Loaded("d3", None, "x.cf:3:1: bad"), "x.cf", "d3") is None


def test_a_reload_that_removes_everything_is_refused_once() -> None:
    web = load_text(GOOD)
    empty = Config(GlobalSettings(autoreload=True))
    refused = decide(web, Loaded("d4", empty), "x.cf", "")
    assert isinstance(refused, ConfigRejected)
    assert "removes 1 of 1 virtual services" in refused.error
    assert "--yes" in refused.error
    assert decide(web, Loaded("d4", empty), "x.cf", "d4") is None  # recorded once


def load_text(text: str) -> Config:
    return parse_text(text, "x.cf")


class Sink:
    def __init__(self) -> None:
        self.sent: list[Payload] = []

    def submit(self, payload: Payload, reason: str = "", term: int = 0) -> object | None:
        self.sent.append(payload)
        return payload


async def test_watches_only_when_active_and_autoreload_is_on(tmp_path: Path) -> None:
    path = tmp_path / "ldirectord.cf"
    path.write_text(GOOD)
    in_force = load(path).config
    assert in_force is not None
    active = False
    sink = Sink()
    r = AutoReloader(path, sink, in_force=lambda: in_force, is_active=lambda: active)
    path.write_text(GOOD.replace("gate 10", "gate 11"))
    assert await r.poll_once() is None  # standby: nothing
    active = True
    changed = await r.poll_once()
    assert isinstance(changed, ConfigApplied)
    assert changed.config.virtuals[0].reals[0].weight == 11
    assert await r.poll_once() is None  # unchanged file: not read again
    assert r.interval() == 1.0
    assert sink.sent == [changed]


async def test_autoreload_no_in_the_config_in_force_never_watches(tmp_path: Path) -> None:
    path = tmp_path / "ldirectord.cf"
    path.write_text(GOOD.replace("autoreload=yes", "autoreload=no"))
    in_force = load(path).config
    assert in_force is not None
    assert in_force.globals.autoreload is False
    sink = Sink()
    r = AutoReloader(path, sink, in_force=lambda: in_force, is_active=lambda: True)
    path.write_text(GOOD.replace("gate 10", "gate 11"))  # a change, even one turning it on
    assert await r.poll_once() is None
    assert await r.poll_once() is None
    assert sink.sent == []
    # the same reloader, once the config in force says yes, does publish the change: the refusal
    # above came from autoreload=no, not from anything else in the setup
    before = tmp_path / "before.cf"
    before.write_text(GOOD)
    in_force = load(before).config
    changed = await r.poll_once()
    assert isinstance(changed, ConfigApplied)
    assert sink.sent == [changed]
