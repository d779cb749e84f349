"""A deployed director pair as a :class:`lvs_events.drills.drill.Pair`: ``lvs-events drill`` without
``--lab``.

Observed through the coordinators only:

* the leader and both nodes' VIP flags from :class:`lvs_events.client.ha.HaObserver`
  (``ha_status`` on channels kept open), polled every 20 ms (the VIP holder log is built from the
  changes seen; the leader agent reports itself and what its peer last told it);
* the applied table digests from ``GetState`` (each node's ``TableApplied``);
* ``detect``: the wall time of the new term's Leadership ACQUIRED event (read from the log),
  which the coordinator stamps as it builds the takeover transaction the standby asked for;
  ``elect``: when the new leader was first seen in etcd by the poll;
* a client probe from this host to ``--vip HOST:PORT`` (every 20 ms, 200 ms per attempt, for a
  bounded time). A service that does not answer with its node name is credited to the node that
  held the VIP when the connection succeeded;
* the DrillMarker events and the fencing check published through :mod:`lvs_events.client.log`.

The faults are operator commands (shell templates with ``{node}``): without one, the scenarios
that need it are refused (:func:`missing_commands`). ``switchover`` needs none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lvs_events.client.ha import HaObserver, HaStatus
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import LeadershipChange
from lvs_events.drills.drill import LINKED_WITHIN, _helper
from lvs_events.security.tls import TlsFiles

__all__ = ["SCENARIO_COMMANDS", "RunningPair", "missing_commands", "probe"]

POLL = 0.02

# the operator commands (--KEY-command) each scenario needs
SCENARIO_COMMANDS: dict[str, tuple[str, ...]] = {
    "switchover": (),
    "kill-active": ("kill", "start"),
    "partition-active": ("isolate", "heal"),
    "etcd-member-down": ("etcd-stop", "etcd-start"),
}


def missing_commands(scenario: str, commands: Mapping[str, str]) -> list[str]:
    """The ``--X-command`` options ``scenario`` needs and ``commands`` lacks."""
    return [f"--{c}-command" for c in SCENARIO_COMMANDS.get(scenario, ()) if not commands.get(c)]


def probe(
    host: str, port: int, seconds: float, every: float = 0.02, timeout: float = 0.2
) -> list[tuple[float, bool, str]]:
    """Connect every ``every`` s, each attempt bounded by ``timeout``, for ``seconds``: (wall time,
    ok, what the service said first, stripped; "" if nothing within the timeout)."""
    rows: list[tuple[float, bool, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started, t0 = time.time(), time.monotonic()
        ok, said = False, ""
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                ok = True  # connected: the service is there, whatever it says
                s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
                with contextlib.suppress(OSError):
                    said = s.recv(64).decode(errors="replace").strip()
        except OSError:
            ok = False
        rows.append((started, ok, said))
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    return rows


class RunningPair:
    """Use as ``async with RunningPair(...) as pair: await run_drill(name, pair)``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cluster: str,
        vip: tuple[str, int],
        commands: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.tls = tls  # the operator's identity (None: the environment's, else plaintext)
        self.cluster = cluster
        self.vip = vip
        self.commands = dict(commands or {})
        self.timeout = timeout
        self.nodes: tuple[str, str] = ("", "")
        self._holders: dict[str, bool] = {}
        self._holder_log: list[tuple[float, str, bool]] = []
        self._leader: tuple[str, int] = ("", 0)
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._digests: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: asyncio.Task[list[tuple[float, bool, str]]] | None = None
        self._client: CoordinatorClient | None = None
        self._observer: HaObserver | None = None
        self._head = 0
        self._linked = False
        self._elections: dict[str, list[dict[str, Any]]] = {}

    async def __aenter__(self) -> RunningPair:
        self._client = CoordinatorClient(self.endpoints, timeout=self.timeout, tls=self.tls)
        await self._client.__aenter__()
        # one set of channels for the whole drill: a poll every POLL seconds is no handshake
        self._observer = HaObserver(self.endpoints, within=self.timeout, tls=self._client.files)
        try:
            await self._first_look()
        except BaseException:
            await self.__aexit__()
            raise
        self._tasks = [asyncio.create_task(self._poll_ha()), asyncio.create_task(self._poll_digests())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._probe is not None:
            with contextlib.suppress(Exception):
                await self._probe
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None
        if self._observer is not None:
            await self._observer.close()
            self._observer = None

    async def _first_look(self) -> None:
        assert self._observer is not None
        st = await self._observer.status()
        names = [n.node for n in st.nodes]
        if len(names) != 2:
            raise RuntimeError(
                "drill needs a running pair: the active agent must report itself and its peer "
                f"(got {names or st.error or 'nothing'})"
            )
        self.nodes = (names[0], names[1])
        self._observe(st)
        await self._refresh_digests()
        assert self._client is not None
        self._head = (await self._client.get_state(0, within=self.timeout)).head_revision

    # -- observation -----------------------------------------------------------------------------

    def _observe(self, st: HaStatus) -> None:
        now = time.time()
        if st.leader.present:
            leader = (st.leader.node, st.leader.term)
            if leader != self._leader:
                # the drill's "elect": when the new active was first seen in etcd
                self._events.setdefault(leader[0], []).append(
                    {"event": "ha.role", "role": "active", "at": now, "term": leader[1]}
                )
            self._leader = leader
        peer = st.nodes[1] if len(st.nodes) == 2 else None
        self._linked = peer is not None and peer.role == "standby" and peer.seen_ago < LINKED_WITHIN
        for n in st.nodes:  # only when the leader agent answered: otherwise unknown, kept as is
            if self._holders.get(n.node) != n.vips:
                self._holders[n.node] = n.vips
                self._holder_log.append((now, n.node, n.vips))

    async def settle(self) -> None:
        """Each election since the pair was first seen, as the agent's own ``ha.election`` record
        would say it (the drill's ``detect``): the ACQUIRED event's wall time, stamped by the
        coordinator. Read when the report is made, through a fresh client that gives up on a
        partitioned coordinator within a second (a followed stream could hang on it)."""
        rows = await self.helper("log", str(self._head + 1))
        elections: dict[str, list[dict[str, Any]]] = {}
        for e in rows:
            if e.get("kind") == "leadership" and e.get("change") == LeadershipChange.ACQUIRED.value:
                op = (str(e.get("reason", "")).split() or [""])[0]
                elections.setdefault(str(e["node"]), []).append(
                    {
                        "event": "ha.election",
                        "op": op if op in ("campaign", "takeover") else "takeover",
                        "at": float(e["wall_time"]),
                        "term": int(e["term"]),
                    }
                )
        self._elections = elections

    async def _poll_ha(self) -> None:
        assert self._observer is not None
        while True:
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                self._observe(await self._observer.status(within=0.3))
            await asyncio.sleep(max(0.0, POLL - (time.monotonic() - t0)))

    async def _refresh_digests(self) -> None:
        assert self._client is not None
        view = await self._client.get_state(0, within=1.0)
        self._digests = {n: s.digest for n, s in view.state.nodes.items()}

    async def _poll_digests(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._refresh_digests()
            await asyncio.sleep(0.1)

    async def leader(self) -> tuple[str, int]:
        return self._leader

    async def vip_holders(self) -> set[str]:
        return {n for n, h in self._holders.items() if h}

    def holder_log(self) -> list[tuple[float, str, bool]]:
        return list(self._holder_log)

    async def linked(self) -> bool:
        return self._linked

    def agent_events(self, node: str) -> list[dict[str, Any]]:
        return self._events.get(node, []) + self._elections.get(node, [])

    def applied_digest(self, node: str) -> str:
        return self._digests.get(node, "")

    # -- the client ------------------------------------------------------------------------------

    async def start_probe(self, seconds: float) -> None:
        self._probe = asyncio.create_task(asyncio.to_thread(probe, self.vip[0], self.vip[1], seconds))

    async def probe_results(self) -> list[tuple[float, bool, str]]:
        if self._probe is None:
            return []
        rows, self._probe = await self._probe, None
        out = []
        for t, ok, said in rows:
            who = said if said in self.nodes else (self._holder_at(t) if ok else "")
            out.append((t, ok, who))
        return out

    async def arp_results(self) -> list[tuple[float, list[str]]]:
        return []  # the pair's link is not watched from here: two_arp_answers stays None

    def _holder_at(self, t: float) -> str:
        held: set[str] = set()
        for when, node, holds in sorted(self._holder_log):
            if when > t:
                break
            (held.add if holds else held.discard)(node)
        return next(iter(held)) if len(held) == 1 else ""

    # -- faults ----------------------------------------------------------------------------------

    async def _command(self, key: str, node: str) -> None:
        template = self.commands.get(key)
        if not template:
            raise RuntimeError(f"no --{key}-command given")
        cmd = template.format(node=shlex.quote(node))
        proc = await asyncio.create_subprocess_shell(
            cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd!r} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")

    async def kill_agent(self, node: str) -> None:
        await self._command("kill", node)

    async def start_agent(self, node: str) -> None:
        await self._command("start", node)

    async def isolate(self, node: str) -> None:
        await self._command("isolate", node)

    async def heal(self, node: str) -> None:
        await self._command("heal", node)

    async def stop_etcd(self, node: str) -> None:
        await self._command("etcd-stop", node)

    async def start_etcd(self, node: str) -> None:
        await self._command("etcd-start", node)

    async def helper(self, *args: str) -> Any:
        """The drill's helpers (marker, publish, switchover, leader), run in this process. An
        operator holds no director's key: the stale-term check (``publish``) is made with a drill
        marker (``fence``), refused by the same fencing."""
        cmd = "fence" if args[0] == "publish" else args[0]
        ns = argparse.Namespace(
            cmd=cmd, rest=list(args[1:]), coordinators=",".join(self.endpoints), cluster=self.cluster
        )
        return await _helper(ns, self.tls)
