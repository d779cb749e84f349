"""``lvs-events table -o ipvsadm-save``: rules ``ipvsadm -R`` accepts, now or at a revision."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import ClassVar

import pytest

from lvs_events.cli import main as cli
from lvs_events.domain.config import CheckSettings, Config, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Event
from lvs_events.domain.ipvsadm_save import format_ipvsadm_save
from lvs_events.domain.render import render
from lvs_events.domain.snapshot import StateView
from lvs_events.domain.state import State, fold

VS = VirtualService(
    Protocol.TCP,
    "203.0.113.10",
    80,
    scheduler="wrr",
    persistent=7200,
    reals=(
        RealServer("192.0.2.11", 80, Forwarding.GATE, 10),
        RealServer("192.0.2.12", 80, Forwarding.MASQ, 5),
    ),
    check=CheckSettings(checktype="on"),
)


def _states() -> list[State]:
    s1 = fold(State(), Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(Config(virtuals=(VS,))), revision=1))
    drain = AdminOverride(VS.key, "192.0.2.11:80", AdminAction.DRAIN)
    s2 = fold(s1, Event("e2", "c", "n", "t", "", 2.0, drain, revision=2))
    return [s1, s2]


class FakeClient:
    asked: ClassVar[list[int]] = []

    def __init__(self, *_args: object, **_kw: object) -> None:
        self.states = _states()

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def get_state(self, at: int = 0) -> StateView:
        FakeClient.asked.append(at)
        state = self.states[(at or 2) - 1]
        table = render(state)
        return StateView(state.revision, state, table, table.digest(), 2, 1)


async def _all_reachable(endpoints: list[str], _within: float, _tls: object) -> list[str]:
    return endpoints


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    monkeypatch.setattr(cli, "CoordinatorClient", FakeClient)
    monkeypatch.setattr(cli, "reachable", _all_reachable)
    args = cli._parser().parse_args(["--cluster", "c", "table", "-o", "ipvsadm-save", *argv])
    assert asyncio.run(cli.run(args)) == 0
    return capsys.readouterr().out


def test_table_as_ipvsadm_save_now(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(monkeypatch, capsys)
    assert out == (
        "-A -t 203.0.113.10:80 -s wrr -p 7200\n"
        "-a -t 203.0.113.10:80 -r 192.0.2.11:80 -g -w 0\n"
        "-a -t 203.0.113.10:80 -r 192.0.2.12:80 -m -w 5\n"
    )
    assert out == format_ipvsadm_save(render(_states()[1]))


def test_table_as_ipvsadm_save_at_a_revision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeClient.asked.clear()
    out = _run(monkeypatch, capsys, "--at", "1")
    assert FakeClient.asked == [1]
    assert "-a -t 203.0.113.10:80 -r 192.0.2.11:80 -g -w 10\n" in out
    assert not out.startswith("#")
