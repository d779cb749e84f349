"""The HA machine's rules as scenarios a reader can follow (files in ``testdata/``).

Each file holds scenarios for one theme; each scenario starts with ``init`` and feeds one machine
(``lvs_events.agent.ha.machine.step``) one input per command. Times are the shell's monotonic
``now`` in seconds. Bare words are yes-flags (``reply`` is ``reply=yes``).

    init node=N [leader=L|none] [leader-term=T] [since=S]        a fresh machine; timing keys:
         [heartbeat=] [miss=] [keepalive=] [retry=] [authority=] [lease-ttl=] [margin=] [linger=]
    tick t=                                                      Tick
    ticks from= to=                                              a Tick every 20 ms, as the runner
    observed t= leader=L|none term=                              Observed (etcd's leader key)
    election t= op=campaign|takeover won term= lease= [sent=]    ElectionResult, acquired
    election t= op= lost leader=L|none leader-term= [term= lease=] [sent=]   ... not acquired
    election-failed t= op= error=                                ElectionFailed
    keepalive t= sent= term= held                                KeepAliveResult, the term held
    keepalive t= sent= term= lost leader=L|none leader-term=     ... not held
    keepalive-failed t= sent= [error=]                           KeepAliveFailed
    peer-seen t= node= role= term= [revision=] [digest=] [reply] PeerSeen (reply: answer with an ack)
    peer-ack t= sent= term=                                      PeerAck
    switchover t= [to=]                                          SwitchoverRequested
    handover-asked t= from= term=                                HandoverAsked
    handover-result t= ok | failed error=                        HandoverResult
    stop t=                                                      Stop
    can-switchover [to=] ready|not-ready                         can_switchover (no input)

The output of an input: the actions in order (``no actions``), a ``role:`` line when the role
changed (with the reason), and the state after it::

    state: ROLE term= lease= leader= leader-term= [flags]

where the flags, printed only when set, are ``vips`` (held, ARP-answering), ``silent-until=``
(an ARP-silent copy and when it is dropped), ``vips-from=`` (an active's earliest time to add its
VIPs), ``authority-until=``, ``keepalive-inflight``, ``inflight=`` (an election call),
``handover-term=``, ``handover-deadline=``, ``backoff-until=`` (no election call before),
``peer=NODE:ROLE:TERM@SEEN``, ``heard=`` (highest term heard active), ``acked=`` (the term our
last reply acknowledged), ``last-ack=``, ``awake-since=`` (a standby's first tick after a stall of its own).

Rewrite the expected outputs with ``UPDATE_GOLDEN=1`` (see ``tests/golden/datadriven.py``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import get_args

import pytest

from lvs_events.agent.ha.machine import (
    Action,
    ElectionFailed,
    ElectionResult,
    HandoverAsked,
    HandoverResult,
    HaState,
    Input,
    KeepAliveFailed,
    KeepAliveResult,
    Observed,
    PeerAck,
    PeerSeen,
    Role,
    Stop,
    SwitchoverRequested,
    Tick,
    authority_until,
    can_switchover,
    step,
)
from lvs_events.agent.ha.timing import HaTiming
from tests.golden.datadriven import parse, run_file

HERE = Path(__file__).parent / "testdata"
FILES = sorted(HERE.glob("*.txt"))
TICK = 0.02  # the runner's tick period

# The timing every scenario uses unless its init says otherwise: silence = 0.05 * 4 = 0.2 s.
DEFAULT_TIMING = {
    "heartbeat": 0.05,
    "miss": 4,
    "keepalive": 0.1,
    "retry": 0.15,
    "authority": 0.4,
    "lease-ttl": 2,
    "margin": 0.05,
    "linger": 0.5,
}


def num(x: float) -> str:
    if x == -math.inf:
        return "never"
    return f"{x:.3f}".rstrip("0").rstrip(".")


def text(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"' if not v or " " in v else v
    if isinstance(v, float):
        return num(v)
    return str(v)


def describe_action(a: Action) -> str:
    fields = dataclasses.asdict(a)
    return " ".join([type(a).__name__, *(f"{k.replace('_', '-')}={text(v)}" for k, v in fields.items())])


def describe_state(s: HaState, now: float, t: HaTiming) -> str:  # noqa: PLR0912 -- one branch per flag
    parts = [
        s.role.value,
        f"term={s.term}",
        f"lease={s.lease_id}",
        f"leader={s.leader or 'none'}",
        f"leader-term={s.leader_term}",
    ]
    if s.vips:
        parts.append("vips")
    if s.silent:
        parts.append(f"silent-until={num(s.silent_until)}")
    if s.role is Role.ACTIVE and not s.vips:
        parts.append(f"vips-from={num(s.vip_not_before)}")
    if s.role in (Role.ACTIVE, Role.HANDING_OVER):
        parts.append(f"authority-until={num(authority_until(s, t))}")
    if s.keepalive_inflight:
        parts.append("keepalive-inflight")
    if s.inflight:
        parts.append(f"inflight={s.inflight}")
    if s.handover_term:
        parts.append(f"handover-term={s.handover_term}")
    if s.role is Role.HANDING_OVER:
        parts.append(f"handover-deadline={num(s.handover_deadline)}")
    if s.election_not_before > now:
        parts.append(f"backoff-until={num(s.election_not_before)}")
    if s.peer is not None:
        p = s.peer
        parts.append(f"peer={p.node}:{p.role}:{p.term}@{num(p.seen_at)}")
    if s.heard_term:
        parts.append(f"heard={s.heard_term}")
    if s.acked_term:
        parts.append(f"acked={s.acked_term}")
    if s.acked_at != -math.inf:
        parts.append(f"last-ack={num(s.acked_at)}")
    if s.awake_since != -math.inf and s.role is Role.STANDBY:  # counts for a standby's takeover only
        parts.append(f"awake-since={num(s.awake_since)}")
    return "state: " + " ".join(parts)


class Args:
    """``key=value`` words (a bare word is ``key=yes``); every one must be used."""

    def __init__(self, cmd: str, words: list[str]) -> None:
        self.cmd = cmd
        self.values: dict[str, str] = {}
        for w in words:
            key, sep, value = w.partition("=")
            self.values[key] = value if sep else "yes"
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        self.used.add(key)
        return key in self.values

    def word(self, key: str, default: str | None = None) -> str:
        self.used.add(key)
        if key in self.values:
            return self.values[key]
        if default is None:
            raise ValueError(f"{self.cmd}: {key}= is required")
        return default

    def real(self, key: str, default: float | None = None) -> float:
        return float(self.word(key, None if default is None else repr(default)))

    def integer(self, key: str, default: int | None = None) -> int:
        return int(self.word(key, None if default is None else str(default)))

    def node(self, key: str) -> str | None:
        value = self.word(key)
        return None if value == "none" else value

    def one_of(self, *flags: str) -> str:
        given = [f for f in flags if self.has(f)]
        if len(given) != 1:
            raise ValueError(f"{self.cmd}: exactly one of {', '.join(flags)} expected")
        return given[0]

    def done(self) -> None:
        unknown = set(self.values) - self.used
        if unknown:
            raise ValueError(f"{self.cmd}: unknown arguments {sorted(unknown)}")


class Seen:
    """The input and action types a run exercised."""

    def __init__(self) -> None:
        self.inputs: set[str] = set()
        self.actions: set[str] = set()


class Scenario:
    """The handler of one file: a machine fed one input per command."""

    def __init__(self, seen: Seen | None = None) -> None:
        self.seen = seen or Seen()
        self.state: HaState | None = None
        self.timing = HaTiming()

    def __call__(self, cmd: str, words: list[str]) -> str:
        args = Args(cmd, words)
        if cmd == "init":
            out = self._init(args)
        elif cmd == "ticks":
            out = self._ticks(args.real("from"), args.real("to"))
        elif cmd == "can-switchover":
            ready = args.one_of("ready", "not-ready") == "ready"
            why = can_switchover(self._state(), args.word("to", ""), peer_ready=ready)
            out = f"refused: {why}" if why else "allowed"
        else:
            out = self._input(self._parse_input(cmd, args))
        args.done()
        return out

    def _state(self) -> HaState:
        if self.state is None:
            raise ValueError("init first")
        return self.state

    def _init(self, args: Args) -> str:
        v = {k: args.real(k, float(d)) for k, d in DEFAULT_TIMING.items()}
        self.timing = HaTiming(
            heartbeat_interval=v["heartbeat"],
            miss_limit=int(v["miss"]),
            keepalive_interval=v["keepalive"],
            retry_deadline=v["retry"],
            authority=v["authority"],
            lease_ttl=int(v["lease-ttl"]),
            margin=v["margin"],
            linger=v["linger"],
        ).validate()
        t = self.timing
        leader = args.node("leader") if args.has("leader") else None
        self.state = HaState(
            args.word("node"),
            leader=leader,
            leader_term=args.integer("leader-term", 0),
            since=args.real("since", 0.0),
        )
        timing = (
            f"timing: heartbeat={num(t.heartbeat_interval)} silence={num(t.silence)} "
            f"keepalive={num(t.keepalive_interval)} retry={num(t.retry_deadline)} "
            f"authority={num(t.authority)} margin={num(t.margin)} linger={num(t.linger)} "
            f"lease-ttl={t.lease_ttl}"
        )
        return f"{timing}\n{describe_state(self.state, 0.0, t)}"

    def _parse_input(self, cmd: str, a: Args) -> Input:  # noqa: PLR0911, PLR0912 -- one branch per input
        now = a.real("t")
        if cmd == "tick":
            return Tick(now)
        if cmd == "observed":
            return Observed(now, a.node("leader"), a.integer("term"))
        if cmd == "election":
            op, sent = a.word("op"), a.real("sent", now)
            if a.one_of("won", "lost") == "won":
                term = a.integer("term")
                return ElectionResult(now, op, True, term, a.integer("lease"), self._state().node, term, sent)
            return ElectionResult(
                now,
                op,
                False,
                a.integer("term", 0),
                a.integer("lease", 0),
                a.node("leader"),
                a.integer("leader-term"),
                sent,
            )
        if cmd == "election-failed":
            return ElectionFailed(now, a.word("op"), a.word("error"))
        if cmd == "keepalive":
            sent, term = a.real("sent"), a.integer("term")
            if a.one_of("held", "lost") == "held":
                return KeepAliveResult(now, sent, term, True)
            return KeepAliveResult(now, sent, term, False, a.node("leader"), a.integer("leader-term"))
        if cmd == "keepalive-failed":
            return KeepAliveFailed(now, a.real("sent"), a.word("error", ""))
        if cmd == "peer-seen":
            return PeerSeen(
                now,
                a.word("node"),
                a.word("role"),
                a.integer("term"),
                a.integer("revision", 0),
                a.word("digest", ""),
                reply=a.has("reply"),
            )
        if cmd == "peer-ack":
            return PeerAck(now, a.real("sent"), a.integer("term"))
        if cmd == "switchover":
            return SwitchoverRequested(now, a.word("to", ""))
        if cmd == "handover-asked":
            return HandoverAsked(now, a.word("from"), a.integer("term"))
        if cmd == "handover-result":
            if a.one_of("ok", "failed") == "ok":
                return HandoverResult(now, True)
            return HandoverResult(now, False, a.word("error"))
        if cmd == "stop":
            return Stop(now)
        raise ValueError(f"unknown command {cmd!r}")

    def _step(self, inp: Input) -> list[Action]:
        self.seen.inputs.add(type(inp).__name__)
        self.state, actions = step(self._state(), inp, self.timing)
        self.seen.actions.update(type(a).__name__ for a in actions)
        return actions

    def _after(self, before: HaState, lines: list[str], now: float) -> str:
        s = self._state()
        if s.role is not before.role:
            lines.append(f"role: {before.role.value} -> {s.role.value} ({s.reason})")
        lines.append(describe_state(s, now, self.timing))
        return "\n".join(lines)

    def _input(self, inp: Input) -> str:
        before = self._state()
        actions = self._step(inp)
        lines = [describe_action(a) for a in actions] or ["no actions"]
        return self._after(before, lines, inp.now)

    def _ticks(self, start: float, end: float) -> str:
        before = self._state()
        n = max(0, round((end - start) / TICK))
        lines: list[str] = []
        now = start
        for i in range(n + 1):
            now = start + (end - start) * i / max(1, n)
            lines += [f"t={num(now)}: {describe_action(a)}" for a in self._step(Tick(now))]
        return self._after(before, lines or ["no actions"], now)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_scenarios(path: Path) -> None:
    run_file(path, Scenario())


def test_every_input_and_action_is_exercised() -> None:
    """Each input and action type of the machine appears in at least one scenario file."""
    assert FILES, f"no scenario files in {HERE}"
    seen = Seen()
    for path in FILES:
        scenario = Scenario(seen)
        for block in parse(path.read_text()):
            scenario(block.command, block.args)
    inputs = {t.__name__ for t in get_args(Input)}
    actions = {t.__name__ for t in get_args(Action)}
    assert inputs - seen.inputs == set(), "inputs no scenario feeds"
    assert actions - seen.actions == set(), "actions no scenario produces"
