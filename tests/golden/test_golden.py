"""Golden tests: an event script in, the rendered table out (files in ``testdata/``).

Commands (one event each, folded in order; ``table`` prints the rendered table and its digest):

    config FILE                 apply an ldirectord.cf (FILE in testdata/, or "seed" for the shared seed)
    health NODE VIP REAL up|down
    drain VIP REAL [EXPIRES]    enable VIP REAL    disable VIP REAL    weight VIP REAL W
    leader NODE TERM            lost NODE TERM
    time T                      wall time of the following events (unix seconds)
    table                       the table, as ``ipvsadm -L -n``, and its digest

Every event goes through the log's wire encoding, and two replicas fold the encoded log, as the
two directors' agents do: "master" folds each event as it comes; "slave" restarts from a snapshot
of its state (the snapshot codec) at every ``table``, as an agent recovering from the coordinator's
snapshot does, and folds the tail. ``table`` prints one table when both replicas render the same
(``digest ... (master = slave)``); replicas that differ fail the test with both tables.

Rewrite the expectations with ``UPDATE_GOLDEN=1 pytest tests/golden`` (outside CI): the files that
changed are rewritten and their tests fail, naming them; review the diff and run again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lvs_events.domain import codec
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    Event,
    Leadership,
    LeadershipChange,
    Payload,
    RealServerHealth,
)
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold
from lvs_events.domain.table import format_ipvsadm
from lvs_events.ldirectord import parse_text
from lvs_events.ldirectord.resolve import StaticResolver
from lvs_events.wire import event_from_bytes, event_to_bytes
from tests.golden.datadriven import run_file

HERE = Path(__file__).parent / "testdata"
SHARED = Path(os.environ.get("LVS_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))


class Script:
    def __init__(self) -> None:
        self.log: list[bytes] = []  # the events as the log stores them
        self.master = State()
        self.slave = State()
        self.now = 1_700_000_000.0

    def emit(self, payload: Payload, origin: str = "master") -> None:
        rev = len(self.log) + 1
        event = Event(f"g{rev}", "golden", origin, "golden", "", self.now, payload, revision=rev)
        self.log.append(event_to_bytes(event))
        self.master = fold(self.master, event_from_bytes(self.log[-1]))

    def _slave_catch_up(self) -> None:
        """Restart the slave from a snapshot of its own state, then fold the log's tail."""
        state = codec.loads(State, codec.dumps(self.slave))
        for blob in self.log[state.revision :]:
            state = fold(state, event_from_bytes(blob))
        self.slave = state

    def __call__(self, cmd: str, args: list[str]) -> str:  # noqa: PLR0911 -- one branch per command
        if cmd == "config":
            path = SHARED / "seed" / "ldirectord.cf" if args[0] == "seed" else HERE / args[0]
            if not path.exists():
                pytest.skip(f"{path} not found (set LVS_SHARED_DIR)")
            cfg = parse_text(path.read_text(), path.name, resolver=StaticResolver({}))
            self.emit(ConfigApplied(cfg))
            reals = sum(len(v.reals) for v in cfg.virtuals)
            return f"applied {len(cfg.virtuals)} virtual services, {reals} real servers"
        if cmd == "health":
            node, vip, real, verdict = args
            self.emit(RealServerHealth(vip, real, verdict == "up", node, "negotiate"), origin=node)
            return "ok"
        if cmd in ("drain", "enable", "disable"):
            expires = float(args[2]) if len(args) > 2 else 0.0
            self.emit(AdminOverride(args[0], args[1], AdminAction(cmd), 0, expires), origin="cli")
            return "ok"
        if cmd == "weight":
            self.emit(AdminOverride(args[0], args[1], AdminAction.WEIGHT, int(args[2])), origin="cli")
            return "ok"
        if cmd in ("leader", "lost"):
            change = LeadershipChange.ACQUIRED if cmd == "leader" else LeadershipChange.LOST
            self.emit(Leadership(args[0], change, int(args[1])), origin=args[0])
            return "ok"
        if cmd == "time":
            self.now = float(args[0])
            return "ok"
        if cmd == "table":
            self._slave_catch_up()
            ours, theirs = render(self.master), render(self.slave)
            # asserted here, not only printed: a rewrite of the expected text (UPDATE_GOLDEN) can
            # never turn two replicas that disagree into a pass
            assert ours.digest() == theirs.digest(), (
                "the replicas disagree:\nmaster:\n" + format_ipvsadm(ours, header=False)
                + "\nslave (snapshot + tail):\n" + format_ipvsadm(theirs, header=False)
            )  # fmt: skip
            assert self.slave.revision == self.master.revision == len(self.log)
            return format_ipvsadm(ours, header=False) + f"digest {ours.digest()} (master = slave)"
        raise ValueError(f"unknown command {cmd}")


@pytest.mark.parametrize("path", sorted(HERE.glob("*.txt")), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    run_file(path, Script())
