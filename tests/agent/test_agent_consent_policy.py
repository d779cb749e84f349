"""The local command policy (pure decision, allowlist loading, the gate) and the runners that ask
it: a refused external check is DOWN and starts nothing, a refused fallbackcommand is not run.
The end-to-end attack with real processes is in ``test_agent_consent_e2e.py``."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from lvs_events import wire
from lvs_events.agent.checks import Checker, spec_for
from lvs_events.agent.commands import (
    NO_CONSENT,
    Allowlist,
    AllowlistError,
    CommandGate,
    CommandKind,
    command_argv,
    decide,
    load_allowlist,
    named_commands,
)
from lvs_events.agent.fallback import FallbackRunner
from lvs_events.cli.views import summary
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import CommandRefused, ConfigApplied, Event
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold
from lvs_events.domain.validate import validate_event
from lvs_events.errors import InvalidEvent

CHECK, FALLBACK = CommandKind.CHECK, CommandKind.FALLBACK
ALLOW = Allowlist(frozenset({("/usr/local/bin/check_web",), ("/usr/local/bin/sorry", "--quiet")}), ("test",))


def _never(_: str) -> bool:
    return False


def _config(checkcommand: str | None = None, fallbackcommand: str | None = None, n: int = 1) -> Config:
    virtuals = tuple(
        VirtualService(
            Protocol.TCP,
            f"203.0.113.{10 + i}",
            80,
            reals=(RealServer("192.0.2.11", 80, weight=5),),
            check=CheckSettings(checktype="external", checkcommand=checkcommand)
            if checkcommand is not None
            else CheckSettings(checktype="connect"),
            fallbackcommand=fallbackcommand,
        )
        for i in range(n)
    )
    return Config(GlobalSettings(fallback=RealServer("127.0.0.1", 0), checkinterval=1), virtuals)


# -- decide (pure) --------------------------------------------------------------------------------


def test_decide_allows_exactly_the_listed_argument_vectors() -> None:
    own: frozenset[tuple[CommandKind, tuple[str, ...]]] = frozenset()
    assert decide(CHECK, ("/usr/local/bin/check_web",), ALLOW, own, "").allowed
    assert decide(FALLBACK, ("/usr/local/bin/sorry", "--quiet"), ALLOW, own, "").allowed
    # the same program with other (or no) arguments is another command
    assert not decide(FALLBACK, ("/usr/local/bin/sorry",), ALLOW, own, "").allowed
    assert not decide(CHECK, ("/usr/local/bin/check_web", "-x"), ALLOW, own, "").allowed
    refused = decide(CHECK, ("/tmp/x.sh",), ALLOW, own, "")
    assert not refused.allowed
    assert "not in the local allowlist (test)" in refused.reason
    assert "no local --config file" in refused.reason


def test_decide_own_file_consents_per_kind() -> None:
    own = frozenset({(CHECK, ("/opt/check.sh",))})
    c = decide(CHECK, ("/opt/check.sh",), Allowlist(), own, "/etc/ha.d/ldirectord.cf")
    assert c.allowed
    assert "/etc/ha.d/ldirectord.cf" in c.reason
    # the file names it as a check, not as a fallbackcommand (other arguments, another use)
    refused = decide(FALLBACK, ("/opt/check.sh",), Allowlist(), own, "/etc/ha.d/ldirectord.cf")
    assert not refused.allowed
    assert "not named as fallbackcommand by /etc/ha.d/ldirectord.cf" in refused.reason


def test_decide_refuses_empty_and_unparseable_but_allows_the_builtin_default() -> None:
    own: frozenset[tuple[CommandKind, tuple[str, ...]]] = frozenset()
    assert not decide(FALLBACK, command_argv(FALLBACK, "/bin/sh -c 'x"), Allowlist(), own, "").allowed
    assert not decide(CHECK, (), Allowlist(), own, "").allowed
    assert decide(CHECK, ("/bin/true",), Allowlist(), own, "").allowed


def test_command_argv_follows_each_runner() -> None:
    # checkcommand: one path, unless it has blanks and is not a path (then split as a shell would)
    assert command_argv(CHECK, "/opt/check.sh", _never) == ("/opt/check.sh",)
    assert command_argv(CHECK, "/opt/check.sh -v 'a b'", _never) == ("/opt/check.sh", "-v", "a b")
    assert command_argv(CHECK, "/opt/my check.sh", lambda p: p == "/opt/my check.sh") == ("/opt/my check.sh",)
    assert command_argv(FALLBACK, "/opt/sorry --quiet", _never) == ("/opt/sorry", "--quiet")


# -- the allowlist ----------------------------------------------------------------------------------


def test_load_allowlist_from_flags_and_file(tmp_path: Path) -> None:
    f = tmp_path / "commands.allow"
    f.write_text("# checks\n/usr/local/bin/check_web\n\n  /usr/local/bin/sorry --quiet  \n")
    a = load_allowlist(["/opt/x 'a b'"], f)
    assert a.entries == {
        ("/opt/x", "a b"),
        ("/usr/local/bin/check_web",),
        ("/usr/local/bin/sorry", "--quiet"),
    }
    assert a.sources == ("--allow-command", str(f))


@pytest.mark.parametrize("entry", ["check.sh", "./check.sh", "'unbalanced", ""])
def test_load_allowlist_refuses_relative_and_broken_entries(entry: str) -> None:
    with pytest.raises(AllowlistError):
        load_allowlist([entry], None)


def test_load_allowlist_names_the_file_line(tmp_path: Path) -> None:
    f = tmp_path / "commands.allow"
    f.write_text("/ok\nrelative/path\n")
    with pytest.raises(AllowlistError, match=r"commands.allow:2: .*absolute path"):
        load_allowlist([], f)
    with pytest.raises(AllowlistError, match="cannot read"):
        load_allowlist([], tmp_path / "absent")


# -- what a configuration names; the gate ---------------------------------------------------------


def test_named_commands_lists_external_checks_and_fallbacks() -> None:
    cfg = _config("/opt/check.sh", "/opt/sorry", n=2)
    named = named_commands(cfg)
    assert named == {
        (CHECK, "/opt/check.sh"): ("TCP 203.0.113.10:80", "TCP 203.0.113.11:80"),
        (FALLBACK, "/opt/sorry"): ("TCP 203.0.113.10:80", "TCP 203.0.113.11:80"),
    }
    # a connect check runs no command; a fallbackcommand without a fallback server never runs
    no_fallback = Config(GlobalSettings(), _config(None, "/opt/sorry").virtuals)
    assert named_commands(no_fallback) == {}


def test_gate_refusals_once_per_command_and_revision() -> None:
    gate = CommandGate("lb1", Allowlist(), own=_config("/opt/check.sh"), own_source="ldirectord.cf")
    assert gate.on_config(_config("/opt/check.sh"), 1) == []  # the own file names it
    attack = _config("/tmp/evil.sh", "/tmp/evil-fb.sh", n=3)
    refusals = gate.on_config(attack, 2)
    assert sorted((r.kind, r.command) for r in refusals) == [
        ("checkcommand", "/tmp/evil.sh"),
        ("fallbackcommand", "/tmp/evil-fb.sh"),
    ]
    assert all(r.node == "lb1" and r.config_revision == 2 and len(r.virtuals) == 3 for r in refusals)
    assert gate.on_config(attack, 2) == []  # already listed for revision 2
    assert len(gate.on_config(attack, 5)) == 2  # published again for the next configuration
    assert not gate.consent(CHECK, "/tmp/evil.sh").allowed
    assert gate.consent(CHECK, "/opt/check.sh").allowed
    # another operator's unrelated change (weights, more services) keeps the consent: per command
    gate.set_own(_config("/opt/check.sh", n=4), "ldirectord.cf")
    assert gate.consent(CHECK, "/opt/check.sh").allowed


# -- the payload ------------------------------------------------------------------------------------


def _refused(**kw: object) -> CommandRefused:
    base: dict[str, object] = {
        "node": "lb1",
        "kind": "checkcommand",
        "command": "/tmp/evil.sh",
        "virtuals": ("TCP 203.0.113.10:80",),
        "reason": "not in the local allowlist",
        "config_revision": 7,
    }
    base.update(kw)
    return CommandRefused(**base)  # type: ignore[arg-type]  # the fields above, by name


def _event(p: CommandRefused) -> Event:
    return Event("01ABC", "c", "lb1", "lvs-agent", "", 1.0, p)


def test_command_refused_round_trips_validates_and_is_a_record_only() -> None:
    ev = _event(_refused())
    validate_event(ev)
    assert wire.event_from_pb(wire.event_to_pb(ev)) == ev
    s = fold(State(), Event("e1", "c", "n", "a", "", 1.0, ConfigApplied(_config()), revision=1))
    after = fold(s, Event("e2", "c", "lb1", "a", "", 1.0, ev.payload, revision=2))
    assert after.config is s.config
    assert after.health == s.health
    line = summary(ev)
    assert "lb1 REFUSED checkcommand '/tmp/evil.sh'" in line
    assert "TCP 203.0.113.10:80" in line


@pytest.mark.parametrize(
    "bad",
    [
        {"node": ""},
        {"kind": "shell"},
        {"command": ""},
        {"reason": ""},
        {"config_revision": 0},
        {"virtuals": tuple(f"v{i}" for i in range(101))},
    ],
)
def test_command_refused_validation_names_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidEvent, match="command_refused"):
        validate_event(_event(_refused(**bad)))


# -- the runners ------------------------------------------------------------------------------------


def _marker_script(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"{name}.ran"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, marker


async def test_a_refused_external_check_is_down_and_runs_nothing(tmp_path: Path) -> None:
    script, marker = _marker_script(tmp_path, "evil")
    cfg = _config(str(script))
    spec = spec_for(cfg.virtuals[0], cfg.virtuals[0].reals[0], cfg.globals)
    gate = CommandGate("lb1", Allowlist())
    r = await Checker("lb1", commands=gate).check_once(spec, False)
    assert not r.up
    assert r.detail.startswith("checkcommand refused by local policy: not in the local allowlist")
    # and the default runner, given no policy, runs nothing either
    r = await Checker("lb1").check_once(spec, False)
    assert not r.up
    assert "refused by local policy" in r.detail
    assert not marker.exists()
    # allowed: it runs
    gate = CommandGate("lb1", Allowlist(frozenset({(str(script),)}), ("test",)))
    r = await Checker("lb1", commands=gate).check_once(spec, False)
    assert r.up, r.detail
    assert marker.exists()


async def test_a_refused_fallbackcommand_is_not_run(tmp_path: Path) -> None:
    script, marker = _marker_script(tmp_path, "evil-fb")
    cfg = _config(None, str(script))
    state = fold(State(), Event("e1", "c", "n", "a", "", 1.0, ConfigApplied(cfg), revision=1))
    for consent, runs in ((NO_CONSENT, False), (CommandGate("lb1", Allowlist(), cfg, "own.cf"), True)):
        r = FallbackRunner(consent, timeout=5)
        task = asyncio.create_task(r.run())
        try:
            r.on_applied(state, render(state))  # no real server is up: the fallback starts
            async with asyncio.timeout(10):
                while not (r.ran or r.refused):  # noqa: ASYNC110 -- polling plain lists the runner appends to
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
        assert bool(r.ran) is runs
        assert bool(r.refused) is not runs
        assert marker.exists() is runs
