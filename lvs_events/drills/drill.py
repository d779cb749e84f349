"""Failover drills: run a named scenario against a running pair and report what happened.

One function per scenario, each returning a :class:`DrillReport`::

    report = await drill_kill_active(pair)          # SIGKILL the active agent
    report = await drill_switchover(pair)           # planned handover
    report = await drill_partition_active(pair)     # cut the active off from etcd and its peer
    report = await drill_etcd_member_down(pair)     # stop one etcd member (not the witness)
    report = await run_drill("kill-active", pair)   # by name (SCENARIOS)

``pair`` is anything with the :class:`Pair` methods: the network-namespace lab of the tests, the
benchmark and ``lvs-events drill --lab`` (``lvs_events.drills.lab``) is one;
``lvs_events.drills.running.RunningPair`` drives a deployed pair (observed through the
coordinators, faults by operator commands). Each drill is recorded in the log as DrillMarker
events (start, detect, elect, vip, first-connection, end).

Times in a report are seconds from the fault (or from the switchover request): ``detect`` when
the standby asked etcd to take over, ``elect`` when it became active, ``vip`` when the VIP
appeared on it, ``first_connection`` the first client connection answered by it. Failed
connections are counted from the fault until the end of the drill. ``two_holders`` is True if
the VIP was ever held *ARP-answering* by both nodes at once: on the announcing interface of both
(``ip monitor address`` on both; the ARP-silent copy a switchover keeps on ``lo`` is not a
holder). Where the pair can be watched on its link (the lab), ``two_arp_answers`` checks the
same from outside: an observer asks "who has the VIP" every 10 ms for the whole drill, and it is
True if one request was ever answered by two MAC addresses.

Run with ``python -m lvs_events.drills.drill <helper>`` inside a namespace, this module also provides the
small programs the lab runs there: ``serve`` (the TCP service standing in for IPVS on the VIP),
``probe`` (the client loop), ``leader``, ``publish``, ``marker``, ``switchover`` and ``log`` (the
Leadership and DrillMarker events from a revision on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import socket
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from lvs_events.agent.ha.vips import ETH_P_ARP
from lvs_events.client.events import new_event
from lvs_events.client.ha import LeaderElectionClient, ha_status, switchover
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import DrillMarker, Leadership, RealServerHealth
from lvs_events.domain.filters import EventFilter
from lvs_events.domain.snapshot import Snapshot
from lvs_events.security import tls as tls_args
from lvs_events.security.tls import TlsFiles

__all__ = [
    "SCENARIOS",
    "DrillReport",
    "Pair",
    "drill_etcd_member_down",
    "drill_kill_active",
    "drill_partition_active",
    "drill_switchover",
    "run_drill",
]


@dataclass
class DrillReport:
    drill_id: str
    scenario: str
    started: float = field(default_factory=time.time)  # wall time the drill began
    old_active: str = ""
    new_active: str = ""
    old_term: int = 0
    new_term: int = 0
    detect: float | None = None
    elect: float | None = None
    vip: float | None = None
    first_connection: float | None = None
    failed_connections: int = 0
    attempts: int = 0
    two_holders: bool = False
    two_arp_answers: bool | None = None  # one ARP request answered by two MACs (None: not watched)
    arp_requests: int = 0
    fenced_refused: bool | None = None  # an event with the old term was refused (None: not tried)
    digests_equal: bool | None = None
    digests: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Pair(Protocol):
    """What a drill needs from a running pair."""

    nodes: tuple[str, str]

    async def leader(self) -> tuple[str, int]: ...

    async def vip_holders(self) -> set[str]: ...

    async def linked(self) -> bool:
        """The active hears its peer, a standby, now (both directions of the heartbeat work)."""
        ...

    def holder_log(self) -> list[tuple[float, str, bool]]:
        """(wall time, node, holds) for every VIP change seen since the pair started."""
        ...

    async def start_probe(self, seconds: float) -> None: ...

    async def probe_results(self) -> list[tuple[float, bool, str]]:
        """(wall time, ok, answering node) per client attempt, once the probe ended."""
        ...

    async def arp_results(self) -> list[tuple[float, list[str]]]:
        """(wall time, answering MACs) per ARP request for the VIP during the probe ([]: the
        pair's link cannot be watched from here)."""
        ...

    async def kill_agent(self, node: str) -> None: ...

    async def start_agent(self, node: str) -> None: ...

    async def isolate(self, node: str) -> None: ...

    async def heal(self, node: str) -> None: ...

    async def stop_etcd(self, node: str) -> None: ...

    async def start_etcd(self, node: str) -> None: ...

    async def helper(self, *args: str) -> Any:
        """Run ``python -m lvs_events.drills.drill ARGS`` where the coordinators are reachable; its JSON."""
        ...

    async def settle(self) -> None:
        """Bring what :meth:`agent_events` says up to date (before a report is made)."""
        ...

    def agent_events(self, node: str) -> list[dict[str, Any]]: ...

    def applied_digest(self, node: str) -> str: ...


LINKED_WITHIN = 0.5  # the active heard its standby this recently: the pair is linked


async def _wait_for(cond: Callable[[], Awaitable[bool]], within: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await cond():
            return True
        await asyncio.sleep(step)
    return False


async def _ready(pair: Pair, within: float = 30.0) -> tuple[str, int]:
    """Wait for one active holding the VIP and a standby with the same table that it hears (a
    drill right after the heal of another would otherwise test a double fault)."""
    state: dict[str, Any] = {}

    async def ok() -> bool:
        node, term = await pair.leader()
        holders = await pair.vip_holders()
        if not node or holders != {node}:
            return False
        digests = {n: pair.applied_digest(n) for n in pair.nodes}
        state["leader"] = (node, term)
        return len(set(digests.values())) == 1 and "" not in digests.values() and await pair.linked()

    if not await _wait_for(ok, within, 0.1):
        raise RuntimeError(f"the pair is not ready (one active with the VIP, same tables) in {within}s")
    node, term = state["leader"]
    return str(node), int(term)


def two_holders(log: list[tuple[float, str, bool]], since: float = 0.0) -> bool:
    """Whether two nodes held the VIP at once at some time at or after ``since``.

    ``log`` is every node's (time, node, holds) history; the whole of it is replayed, so a node
    that took the VIP before ``since`` and still held it then counts. At equal times a gain is
    applied before a release, whatever the node names: a tie cannot prove the old holder let go
    first, and this verdict is about safety, so a tie counts as an overlap.
    """
    held: set[str] = set()
    crossed = False
    for t, node, holds in sorted(log, key=lambda e: (e[0], not e[2])):
        if not crossed and t >= since:
            crossed = True
            if len(held) > 1:
                return True
        (held.add if holds else held.discard)(node)
        if len(held) > 1 and t >= since:
            return True
    return not crossed and len(held) > 1


def digests_agree(digests: dict[str, str]) -> bool:
    """Every node reported a digest, and they are all the same one."""
    return bool(digests) and "" not in digests.values() and len(set(digests.values())) == 1


def fencing_held(ack: dict[str, Any]) -> bool:
    """The old active's publish with its stale term was refused as fenced (not for any other
    reason: a refusal for a malformed event or an unreachable coordinator proves nothing)."""
    return ack.get("error_code") == "FAILED_PRECONDITION" and not ack.get("revision")


async def _marker(pair: Pair, drill_id: str, scenario: str, phase: str, detail: str = "") -> None:
    with contextlib.suppress(Exception):
        await pair.helper("marker", drill_id, scenario, phase, detail)


def _event_time(events: list[dict[str, Any]], name: str, after: float, **match: Any) -> float | None:
    for e in events:
        if e.get("event") != name or float(e.get("at", 0)) < after:
            continue
        if all(e.get(k) == v for k, v in match.items()):
            return float(e["at"])
    return None


async def _finish(
    pair: Pair, report: DrillReport, t0: float, old: str, old_term: int, *, check_fencing: bool
) -> DrillReport:
    results = await pair.probe_results()
    arp = await pair.arp_results()
    if arp:
        report.arp_requests = len(arp)
        report.two_arp_answers = any(len(set(macs)) > 1 for _, macs in arp)
    new, new_term = await pair.leader()
    report.new_active, report.new_term = new, new_term
    report.attempts = sum(1 for t, _, _ in results if t >= t0)
    report.failed_connections = sum(1 for t, ok, _ in results if t >= t0 and not ok)
    firsts = [t for t, ok, who in results if t >= t0 and ok and who == new]
    report.first_connection = (min(firsts) - t0) if firsts else None
    if new and new != old:
        await pair.settle()
        ev = pair.agent_events(new)
        d = _event_time(ev, "ha.election", t0, op="takeover")
        report.detect = None if d is None else d - t0
        e = _event_time(ev, "ha.role", t0, role="active")
        report.elect = None if e is None else e - t0
    gained = [t for t, n, holds in pair.holder_log() if n == new and holds and t >= t0]
    report.vip = (min(gained) - t0) if gained else None
    if check_fencing and new_term > old_term:
        ack = await pair.helper("publish", old, str(old_term))
        report.fenced_refused = fencing_held(ack)
    return report


async def _digests(pair: Pair, report: DrillReport, within: float = 20.0) -> None:
    """The end of every drill: both tables the same, and the VIP history of the whole drill
    (including the restart or heal of what was broken) checked for a second holder."""

    async def same() -> bool:
        report.digests = {n: pair.applied_digest(n) for n in pair.nodes}
        return digests_agree(report.digests)

    report.digests_equal = await _wait_for(same, within, 0.1)
    await asyncio.sleep(0.5)  # let the restarted node settle: its first decisions count too
    report.two_holders = two_holders(pair.holder_log(), since=report.started)


async def _fault_drill(
    pair: Pair,
    scenario: str,
    fault: Callable[[str], Awaitable[None]],
    repair: Callable[[str], Awaitable[None]],
    *,
    probe_seconds: float,
    check_fencing: bool,
    digests_within: float = 20.0,
) -> DrillReport:
    """The shape of every fault drill: probe, inflict ``fault`` on the active, measure, repair."""
    report = DrillReport(uuid.uuid4().hex[:12], scenario)
    old, old_term = await _ready(pair)
    report.old_active, report.old_term = old, old_term
    await _marker(pair, report.drill_id, report.scenario, "start", f"active {old} term {old_term}")
    await pair.start_probe(probe_seconds)
    await asyncio.sleep(0.3)
    t0 = time.time()
    await fault(old)
    await asyncio.sleep(max(0.0, probe_seconds - 0.3))
    await _finish(pair, report, t0, old, old_term, check_fencing=check_fencing)
    await repair(old)
    await _digests(pair, report, within=digests_within)
    await _marker(pair, report.drill_id, report.scenario, "end", report.to_json())
    return report


async def drill_kill_active(pair: Pair, *, probe_seconds: float = 4.0) -> DrillReport:
    """SIGKILL the active agent; the standby detects the silence, takes over, moves the VIP."""
    return await _fault_drill(
        pair,
        "kill-active",
        pair.kill_agent,
        pair.start_agent,
        probe_seconds=probe_seconds,
        check_fencing=True,
    )


async def drill_switchover(pair: Pair, *, probe_seconds: float = 2.0, to: str = "") -> DrillReport:
    """Planned handover: the standby is caught up, the active lets go, the standby takes over."""
    report = DrillReport(uuid.uuid4().hex[:12], "switchover")
    old, old_term = await _ready(pair)
    report.old_active, report.old_term = old, old_term
    await _marker(pair, report.drill_id, report.scenario, "start", f"active {old} term {old_term}")
    await pair.start_probe(probe_seconds)
    await asyncio.sleep(0.5)
    reply = await pair.helper("switchover", to)
    t0 = float(reply.get("t0", time.time()))  # taken in the helper, just before the call
    if not reply.get("ok"):
        report.notes.append(f"switchover refused: {reply.get('error')}")
    await asyncio.sleep(max(0.0, probe_seconds - 0.5))
    await _finish(pair, report, t0, old, old_term, check_fencing=True)
    report.detect = 0.0
    report.notes.append(f"switchover call took {reply.get('seconds', 0):.3f}s")
    await _digests(pair, report)
    await _marker(pair, report.drill_id, report.scenario, "end", report.to_json())
    return report


async def drill_partition_active(pair: Pair, *, probe_seconds: float = 5.0) -> DrillReport:
    """Cut the active off from etcd and from its peer (its link goes down), then heal."""
    return await _fault_drill(
        pair,
        "partition-active",
        pair.isolate,
        pair.heal,
        probe_seconds=probe_seconds,
        check_fencing=True,
        digests_within=30.0,
    )


async def drill_etcd_member_down(pair: Pair, *, probe_seconds: float = 4.0) -> DrillReport:
    """Stop the etcd member on the active's director: quorum stays (peer + witness), and the
    active must keep the VIP (no failover, no failed connection)."""
    return await _fault_drill(
        pair,
        "etcd-member-down",
        pair.stop_etcd,
        pair.start_etcd,
        probe_seconds=probe_seconds,
        check_fencing=False,
    )


SCENARIOS: dict[str, Callable[[Pair], Awaitable[DrillReport]]] = {
    "switchover": drill_switchover,
    "kill-active": drill_kill_active,
    "partition-active": drill_partition_active,
    "etcd-member-down": drill_etcd_member_down,
}


async def run_drill(scenario: str, pair: Pair) -> DrillReport:
    try:
        fn = SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown drill {scenario!r}; one of {', '.join(SCENARIOS)}") from None
    return await fn(pair)


# --- helpers run inside the namespaces ---------------------------------------------------------


async def _serve(port: int, name: str) -> None:
    """The service on the VIP (stands in for IPVS, which the test host lacks): answers its name."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(name.encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, reuse_address=True)
    async with server:
        await server.serve_forever()


def _probe(address: str, port: int, seconds: float, every: float, timeout: float) -> None:
    """Connect every ``every`` s (each attempt bounded by ``timeout``) for ``seconds``; one JSON
    line per attempt: [wall time, ok, answering node]."""
    end = time.monotonic() + seconds
    out = sys.stdout
    while time.monotonic() < end:
        started = time.time()
        t0 = time.monotonic()
        who = ""
        ok = False
        try:
            with socket.create_connection((address, port), timeout=timeout) as s:
                s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
                who = s.recv(64).decode().strip()
                ok = bool(who)
        except OSError:
            ok = False
        out.write(json.dumps([started, ok, who]) + "\n")
        out.flush()
        time.sleep(max(0.0, every - (time.monotonic() - t0)))


def _arp_request(mac: bytes, source: str, target: str) -> bytes:
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton(source)
    return eth + arp + b"\x00" * 6 + socket.inet_aton(target)


def _arpwatch(ifname: str, source: str, target: str, seconds: float, every: float) -> None:
    """Ask "who has ``target``" every ``every`` s for ``seconds``; one JSON line per request:
    [wall time, [MACs that answered within ``every``]]. Run from an observer on the link (not
    the client: the answers would refresh the client's own ARP cache)."""
    with open(f"/sys/class/net/{ifname}/address") as f:
        mac = bytes.fromhex(f.read().strip().replace(":", ""))
    want = socket.inet_aton(target)
    end = time.monotonic() + seconds
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        s.setblocking(False)
        request = _arp_request(mac, source, target)
        while time.monotonic() < end:
            sent = time.time()
            s.send(request)
            macs: set[str] = set()
            window = time.monotonic() + every
            while (left := window - time.monotonic()) > 0:
                ready, _, _ = select.select([s], [], [], left)
                if not ready:
                    continue
                frame = s.recv(128)
                arp = frame[14:42]
                if len(arp) == 28 and arp[6:8] == b"\x00\x02" and arp[14:18] == want:
                    macs.add(arp[8:14].hex(":"))
            sys.stdout.write(json.dumps([sent, sorted(macs)]) + "\n")
            sys.stdout.flush()


async def _helper(args: argparse.Namespace, tls: TlsFiles | None = None) -> Any:  # noqa: PLR0911 -- one return per helper
    """One helper call. ``tls``: the identity it calls with (None: the environment's, else
    plaintext). ``publish NODE TERM`` speaks for NODE (a health verdict): with TLS it needs
    NODE's director certificate. ``fence NODE TERM`` carries the same stale term on a drill
    marker, which an operator may publish: the fencing is the same, nobody's health is forged."""
    coords = [c for c in args.coordinators.split(",") if c]
    if args.cmd == "leader":
        client = LeaderElectionClient(coords, timeout=2.0, tls=tls)
        try:
            info = await client.get_leader()
        finally:
            await client.close()
        return {"node": info.node, "term": info.term, "address": info.address}
    if args.cmd == "status":
        st = await ha_status(coords, within=2.0, tls=tls)
        peer = st.nodes[1] if len(st.nodes) == 2 else None
        linked = peer is not None and peer.role == "standby" and peer.seen_ago < LINKED_WITHIN
        return {"leader": st.leader.node, "term": st.leader.term, "linked": linked, "error": st.error}
    if args.cmd == "switchover":
        t0 = time.time()
        try:
            rep = await switchover(coords, args.rest[0] if args.rest else "", within=5.0, tls=tls)
        except Exception as e:  # reported as data to the drill
            return {"ok": False, "error": str(e), "t0": t0}
        return {"ok": True, "t0": t0, **asdict(rep)}
    async with CoordinatorClient(coords, timeout=6.0, attempt_timeout=1.0, tls=tls) as c:
        if args.cmd == "log":
            return await _log(c, int(args.rest[0]) if args.rest else 0)
        if args.cmd == "publish":
            node, term = args.rest[0], int(args.rest[1])
            payload = RealServerHealth("TCP 198.51.100.10:80", "192.0.2.11:80", up=True, observer=node)
            ev = new_event(payload, cluster=args.cluster, origin=node, actor="drill", term=term)
            (ack,) = await c.publish([ev])
            return {"error_code": ack.error_code, "error": ack.error, "revision": ack.revision}
        if args.cmd == "fence":
            node, term = args.rest[0], int(args.rest[1])
            detail = f"{node} term {term}"
            marker = DrillMarker(f"fence-{uuid.uuid4().hex[:12]}", "fencing", "stale-term", detail)
            ev = new_event(marker, cluster=args.cluster, origin="drill", actor="lvs-events drill", term=term)
            (ack,) = await c.publish([ev])
            return {"error_code": ack.error_code, "error": ack.error, "revision": ack.revision}
        if args.cmd == "marker":
            drill_id, scenario, phase = args.rest[:3]
            detail = args.rest[3] if len(args.rest) > 3 else ""
            ev = new_event(
                DrillMarker(drill_id, scenario, phase, detail[:4000]),
                cluster=args.cluster,
                origin="drill",
                actor="lvs-events drill",
            )
            (ack,) = await c.publish([ev])
            return {"error_code": ack.error_code, "revision": ack.revision}
    raise SystemExit(f"unknown helper {args.cmd!r}")


async def _log(c: CoordinatorClient, since: int) -> list[dict[str, Any]]:
    """The Leadership and DrillMarker events from revision ``since`` to the head, as dicts."""
    out: list[dict[str, Any]] = []
    async with c.subscribe(since, filters=EventFilter(types=("Leadership", "DrillMarker"))) as sub:
        async for item in sub:
            if isinstance(item, Snapshot):
                continue
            row: dict[str, Any] = {"revision": item.revision, "wall_time": item.wall_time}
            p = item.payload
            if isinstance(p, Leadership):
                row |= {"kind": "leadership", "node": p.node, "change": p.change.value, "term": p.term}
                row["reason"] = item.reason
            elif isinstance(p, DrillMarker):
                row |= {"kind": "marker", "drill_id": p.drill_id, "scenario": p.scenario, "phase": p.phase}
            out.append(row)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lvs_events.drills.drill", description="helpers run inside the drill lab"
    )
    p.add_argument(
        "cmd",
        choices=(
            *("serve", "probe", "arpwatch", "leader", "status"),
            *("publish", "fence", "marker", "switchover", "log"),
        ),
    )
    p.add_argument("rest", nargs="*")
    p.add_argument("--coordinators", default="")
    p.add_argument("--cluster", default="default")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--every", type=float, default=0.02)
    p.add_argument("--timeout", type=float, default=0.2)
    tls_args.add_arguments(p, server=False)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.port, args.rest[0]))
        return 0
    if args.cmd == "probe":
        _probe(args.rest[0], args.port, args.seconds, args.every, args.timeout)
        return 0
    if args.cmd == "arpwatch":  # arpwatch IFNAME SOURCE TARGET
        _arpwatch(args.rest[0], args.rest[1], args.rest[2], args.seconds, min(args.every, 0.01))
        return 0
    print(json.dumps(asyncio.run(_helper(args, tls_args.files_from_args(args)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
