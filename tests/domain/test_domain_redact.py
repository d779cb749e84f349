"""``redact``: check credentials replaced by a marker, everything else and every digest intact."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings

from lvs_events.domain import codec
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import ConfigApplied, Event
from lvs_events.domain.redact import REDACTED, has_credentials, redact, redact_state
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold
from tests.domain.strategies import event_logs

FTP = VirtualService(
    Protocol.TCP,
    "203.0.113.10",
    21,
    reals=(RealServer("192.0.2.11", 21), RealServer("192.0.2.12", 21)),
    check=CheckSettings(checktype="negotiate", service="ftp", login="anon", passwd="s3cret", request="/"),
)
RADIUS = VirtualService(
    Protocol.UDP,
    "203.0.113.10",
    1812,
    reals=(RealServer("192.0.2.11", 1812),),
    check=CheckSettings(checktype="negotiate", service="radius", secret="shared", login="probe"),
)
WEB = VirtualService(
    Protocol.TCP, "203.0.113.10", 80, reals=(RealServer("192.0.2.11", 80),), check=CheckSettings(request="/")
)
CONFIG = Config(GlobalSettings(checkinterval=3.0), (FTP, RADIUS, WEB), source="/etc/ha.d/ldirectord.cf")


def test_every_credential_is_replaced_and_nothing_else() -> None:
    out = redact(CONFIG)
    ftp, radius, web = out.virtuals
    assert (ftp.check.login, ftp.check.passwd, ftp.check.secret) == (REDACTED, REDACTED, None)
    assert (radius.check.login, radius.check.passwd, radius.check.secret) == (REDACTED, None, REDACTED)
    assert web is WEB  # a service without credentials is the same value
    # apart from the three fields, each service is what it was
    def blanked(v: VirtualService) -> VirtualService:
        check = dataclasses.replace(v.check, login=None, passwd=None, secret=None)
        return dataclasses.replace(v, check=check)

    assert [blanked(v) for v in out.virtuals] == [blanked(v) for v in CONFIG.virtuals]
    assert (out.globals, out.source) == (CONFIG.globals, CONFIG.source)
    assert b"s3cret" not in codec.dumps(out)
    assert b"shared" not in codec.dumps(out)
    assert CONFIG.virtuals[0].check.passwd == "s3cret"  # the input is untouched


def test_redact_is_idempotent_and_a_config_without_credentials_is_returned_as_is() -> None:
    assert redact(redact(CONFIG)) == redact(CONFIG)
    plain = Config(virtuals=(WEB,))
    assert not has_credentials(plain)
    assert redact(plain) is plain
    assert has_credentials(redact(CONFIG))  # a reader still sees that the checks log in


def test_digests_are_those_of_the_unredacted_config() -> None:
    applied = ConfigApplied(CONFIG, digest="sha256-of-the-source-text")
    state = fold(State(), Event("e1", "c", "lb1", "alice", "", 1.0, applied))
    shown = redact_state(state)
    assert shown.config == redact(CONFIG)
    assert render(shown).digest() == render(state).digest()
    assert dataclasses.replace(shown, config=state.config) == state  # only the config differs
    assert state.config is CONFIG
    assert redact_state(State()) == State()


@settings(max_examples=60, deadline=None)
@given(event_logs())
def test_the_table_of_a_redacted_state_is_the_table(events: list[Event]) -> None:
    state = State()
    for e in events:
        state = fold(state, e)
    assert render(redact_state(state)) == render(state)
