"""The I/O shell of the HA machine: timers, the election calls, the peer heartbeat, the VIPs.

It works on domain values: the Peer service's protobuf is converted at its gRPC edge,
:mod:`lvs_events.agent.ha.peer` (the runner is that service's :class:`PeerHandler`).

Everything that decides is in :mod:`lvs_events.agent.ha.machine`; this module only feeds it inputs stamped
with ``time.monotonic()`` and carries out the actions it returns:

* ``Campaign`` / ``Takeover`` / ``KeepAlive`` / ``Resign``: calls to the coordinators'
  ``LeaderElection`` service (each bounded by ``timing.retry_deadline``), results fed back.
* ``AddVips`` / ``SilenceVips`` / ``RemoveVips``: one worker, in order (never overtaken).
* ``Notify``: the hooks, one at a time, in order.
* ``SendHandover``: the peer's ``Handover`` call (planned switchover), sent once our VIPs are
  silent; the peer answers once it holds and has announced them.

Tasks (one TaskGroup): the ticker, the heartbeat sender, the leader follower, the VIP worker, the
hook worker, and the Peer gRPC server. ``stop()`` feeds ``Stop`` (VIPs removed, resign) and waits
for the VIP worker to finish before the tasks are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from lvs_events.agent.ha import machine as m
from lvs_events.agent.ha.hooks import Hooks
from lvs_events.agent.ha.peer import HandoverAnswer, Heartbeat, PairStatus, PeerClient, serve_peer
from lvs_events.agent.ha.timing import HaTiming
from lvs_events.agent.ha.vips import VipManager
from lvs_events.client.ha import LeaderElectionClient, NodeView, PeerUnavailable
from lvs_events.errors import DataplaneError, LvsEventsError
from lvs_events.security.tls import TlsFiles

__all__ = ["HaRunner", "HaSettings"]

log = structlog.get_logger("lvs_events.agent.ha")

READY_REVISION_SLACK = 16  # a standby this close behind (same digest) counts as caught up


@dataclass(frozen=True, slots=True)
class HaSettings:
    node: str
    listen: str  # our Peer service, host:port
    peer: str  # the peer agent's Peer service, host:port
    advertise: str = ""  # address others use for our Peer service (default: listen)
    timing: HaTiming = field(default_factory=HaTiming)
    hooks: Hooks = field(default_factory=Hooks)
    # mTLS of the Peer service and of the calls to the peer (None: plaintext, see serve_peer)
    tls: TlsFiles | None = None
    peer_node: str = ""  # the peer's node name: the only director certificate the Peer service admits
    insecure: bool = False  # plaintext Peer service on a non-loopback address


class HaRunner:
    def __init__(
        self,
        settings: HaSettings,
        election: LeaderElectionClient,
        vips: VipManager,
        *,
        applied: Callable[[], tuple[int, str]] = lambda: (0, ""),
    ) -> None:
        self.settings = settings
        self.timing = settings.timing.validate()
        self.election = election
        self.vip_manager = vips
        self.applied = applied  # (applied revision, table digest) of this agent
        self.state = m.HaState(settings.node, since=time.monotonic())
        self.log = log.bind(node=settings.node)
        self._vip_ops: asyncio.Queue[m.AddVips | m.RemoveVips | m.SilenceVips] = asyncio.Queue(64)
        self._hooks: asyncio.Queue[m.Notify] = asyncio.Queue(64)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._handover_waiters: list[asyncio.Future[HandoverAnswer]] = []
        self._takeover_waiters: list[asyncio.Future[m.ElectionResult | None]] = []
        self._peer = PeerClient(settings.peer, tls=settings.tls)
        self.port = 0  # our Peer service's, once it listens
        self._heartbeat_seen = 0.0  # send time of the newest heartbeat whose reply was fed
        self._heartbeat_ok = time.monotonic()  # when a heartbeat of ours was last answered
        self._peer_channel_at = 0.0  # when the peer channel was last replaced
        self.vips_held = False
        self.role_changes: list[tuple[float, str, int, str]] = []

    # -- the machine -----------------------------------------------------------------------

    def active_term(self) -> int:
        """The term to put on events only the active may publish (0: we are not active)."""
        s = self.state
        return s.term if s.role is m.Role.ACTIVE else 0

    def feed(self, inp: m.Input) -> None:
        before = self.state
        self.state, actions = m.step(before, inp, self.timing)
        if self.state.role is not before.role:
            self.role_changes.append((time.time(), self.state.role.value, self.state.term, self.state.reason))
            self.log.info(
                "ha.role",
                at=time.time(),
                role=self.state.role.value,
                was=before.role.value,
                term=self.state.term,
                reason=self.state.reason,
            )
        for a in actions:
            self._do(a)

    def _do(self, a: m.Action) -> None:
        if isinstance(a, m.AddVips | m.RemoveVips | m.SilenceVips):
            self._vip_ops.put_nowait(a)
        elif isinstance(a, m.Notify):
            with contextlib.suppress(asyncio.QueueFull):
                self._hooks.put_nowait(a)
        elif isinstance(a, m.Campaign):
            self._spawn(self._elect("campaign", 0))
        elif isinstance(a, m.Takeover):
            self._spawn(self._elect("takeover", a.stale_term))
        elif isinstance(a, m.KeepAlive):
            self._spawn(self._keepalive(a.term, a.lease_id))
        elif isinstance(a, m.Resign):
            self._spawn(self._resign(a.term))
        elif isinstance(a, m.SendHandover):
            self._spawn(self._send_handover(a.term))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- election calls ----------------------------------------------------------------------

    @property
    def _address(self) -> str:
        return self.settings.advertise or self.settings.listen

    async def _elect(self, op: str, stale_term: int) -> None:
        t = self.timing
        sent = time.monotonic()
        self.log.info("ha.election", op=op, stale_term=stale_term, at=time.time())
        try:
            if op == "campaign":
                r = await self.election.campaign(
                    self.settings.node, t.lease_ttl, self._address, within=2 * t.retry_deadline
                )
            else:
                r = await self.election.takeover(
                    self.settings.node, stale_term, t.lease_ttl, self._address, within=2 * t.retry_deadline
                )
        except LvsEventsError as e:
            self.feed(m.ElectionFailed(time.monotonic(), op, str(e)))
            self._resolve_takeover(None)
            return
        res = m.ElectionResult(
            time.monotonic(),
            op,
            r.acquired,
            r.leader.term,
            r.leader.lease_id,
            r.leader.node or None,
            r.leader.term,
            sent_at=sent,
        )
        self.feed(res)
        if op == "takeover":
            self._resolve_takeover(res)

    async def _keepalive(self, term: int, lease_id: int) -> None:
        sent = time.monotonic()
        try:
            r = await self.election.keepalive(
                self.settings.node, term, lease_id, within=self.timing.retry_deadline
            )
        except LvsEventsError as e:
            self.feed(m.KeepAliveFailed(time.monotonic(), sent, str(e)))
            return
        self.feed(
            m.KeepAliveResult(time.monotonic(), sent, term, r.held, r.leader.node or None, r.leader.term)
        )

    async def _resign(self, term: int) -> None:
        try:
            await self.election.resign(
                self.settings.node, term, "agent stopping", within=self.timing.retry_deadline
            )
        except LvsEventsError as e:
            self.log.warning("ha.resign_failed", term=term, error=str(e))

    async def _follow_leader(self) -> None:
        async for info in self.election.watch_leader():
            self.feed(m.Observed(time.monotonic(), info.node or None, info.term))

    # -- the peer --------------------------------------------------------------------------

    def _heartbeat(self, ack_term: int = 0) -> Heartbeat:
        rev, digest = self.applied()
        s = self.state
        return Heartbeat(
            node=s.node,
            role=s.role.value,
            term=s.term if s.role is not m.Role.STANDBY else 0,
            revision=rev,
            digest=digest,
            ack_term=ack_term,
        )

    def heartbeat_received(self, beat: Heartbeat) -> Heartbeat:
        """The peer's heartbeat (its Peer call): fed to the machine; our reply acknowledges the
        term the machine acknowledges."""
        self.feed(
            m.PeerSeen(
                time.monotonic(), beat.node, beat.role, beat.term, beat.revision, beat.digest, reply=True
            )
        )
        return self._heartbeat(ack_term=self.state.acked_term)

    async def _heartbeats(self) -> None:
        """One heartbeat every interval, each call on its own (not waiting for the one before):
        on a loaded host a reply may come late, and a late reply still proves the peer alive."""
        interval = self.timing.heartbeat_interval
        stuck = 2 * self.timing.silence
        while True:
            sent = time.monotonic()
            if sent - max(self._heartbeat_ok, self._peer_channel_at) > stuck:
                await self._reconnect_peer()
            self._spawn(self._heartbeat_once(sent))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))

    async def _reconnect_peer(self) -> None:
        """A new connection to the peer when no heartbeat of ours got an answer for a while.
        After a partition heals, the old connection's unacknowledged data waits for TCP's next
        retransmission, backed off to seconds while the link was down: longer than the silence
        after which a standby takes over, so the old connection must not be waited for."""
        self._peer_channel_at = time.monotonic()
        if await self._peer.reconnect():
            self.log.info("ha.peer_reconnect", silent=round(self._peer_channel_at - self._heartbeat_ok, 3))

    async def _heartbeat_once(self, sent: float) -> None:
        try:
            r = await self._peer.heartbeat(self._heartbeat(), within=self.timing.silence)
        except PeerUnavailable:
            return  # silence is the signal: the machine counts it
        now = time.monotonic()
        self._heartbeat_ok = now
        if sent >= self._heartbeat_seen:  # an older reply overtaken by a newer one says less
            self._heartbeat_seen = sent
            self.feed(m.PeerSeen(now, r.node, r.role, r.term, r.revision, r.digest))
        self.feed(m.PeerAck(now, sent, r.ack_term))

    def peer_ready(self) -> bool:
        p = self.state.peer
        if p is None:
            return False
        rev, digest = self.applied()
        return p.digest == digest and p.revision + READY_REVISION_SLACK >= rev

    async def switchover(self, to: str, within: float) -> HandoverAnswer:
        started = time.monotonic()
        why = m.can_switchover(self.state, to, self.peer_ready())
        if why:
            return HandoverAnswer(ok=False, error=why)
        fut: asyncio.Future[HandoverAnswer] = asyncio.get_running_loop().create_future()
        self._handover_waiters.append(fut)
        self.feed(m.SwitchoverRequested(time.monotonic(), to))
        try:
            async with asyncio.timeout(within):
                reply = await fut
        except TimeoutError:
            return HandoverAnswer(ok=False, error=f"no handover within {within:g}s")
        finally:
            if fut in self._handover_waiters:
                self._handover_waiters.remove(fut)
        return replace(reply, seconds=time.monotonic() - started)

    async def _send_handover(self, term: int) -> None:
        # the successor's takeover (up to two retry deadlines), then its VIPs added and announced
        within = m.HANDOVER_RPC_DEADLINES * self.timing.retry_deadline
        # the peer adds the VIPs without waiting once told: ours must be ARP-silent first
        await self._vip_ops.join()
        r = await self._peer.handover(self.settings.node, term, within=within)
        self.feed(m.HandoverResult(time.monotonic(), r.ok, r.error))
        for fut in self._handover_waiters:
            if not fut.done():
                fut.set_result(r)

    async def handover_asked(self, from_node: str, term: int) -> HandoverAnswer:
        fut: asyncio.Future[m.ElectionResult | None] = asyncio.get_running_loop().create_future()
        self._takeover_waiters.append(fut)
        self.feed(m.HandoverAsked(time.monotonic(), from_node, term))
        if self.state.handover_term != term:
            self._takeover_waiters.remove(fut)
            return HandoverAnswer(ok=False, error=f"{self.settings.node} is {self.state.role.value}, busy")
        deadline = time.monotonic() + 2 * self.timing.retry_deadline
        try:
            async with asyncio.timeout(2 * self.timing.retry_deadline):
                res = await fut
        except TimeoutError:
            return HandoverAnswer(ok=False, error="takeover did not answer in time")
        finally:
            if fut in self._takeover_waiters:
                self._takeover_waiters.remove(fut)
        if res is None or not res.acquired:
            return HandoverAnswer(ok=False, error="takeover refused by etcd")
        # The old active drops its silent copy when we answer: answer once ours are held and
        # announced (the machine queued AddVips with the election result). Past the deadline we
        # answer anyway: the old copy then lingers `linger` more, it is ARP-silent either way.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._vip_ops.join()
        return HandoverAnswer(ok=True, term=res.term, node=self.settings.node)

    def _resolve_takeover(self, res: m.ElectionResult | None) -> None:
        for fut in self._takeover_waiters:
            if not fut.done():
                fut.set_result(res)

    def status(self) -> PairStatus:
        s = self.state
        rev, digest = self.applied()
        me = NodeView(s.node, s.role.value, s.term, rev, digest, seen_ago=0.0, vips=self.vips_held)
        peer = None
        if s.peer is not None:
            p = s.peer
            seen_ago = time.monotonic() - p.seen_at
            peer = NodeView(p.node, p.role, p.term, p.revision, p.digest, seen_ago=seen_ago, vips=False)
        return PairStatus(me, peer, s.leader or "", s.leader_term, s.reason, tuple(self.vip_manager.vips))

    # -- workers -----------------------------------------------------------------------------

    async def _ticker(self) -> None:
        period = min(0.02, self.timing.heartbeat_interval / 2)
        stall = self.timing.silence - self.timing.heartbeat_interval
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last > stall:  # the machine restarts the peer's silence count (peer_silent)
                self.log.warning("ha.stalled", seconds=round(now - last, 3))
            last = now
            self.feed(m.Tick(now))
            await asyncio.sleep(period)

    async def _vip_worker(self) -> None:
        while True:
            op = await self._vip_ops.get()
            try:
                if isinstance(op, m.AddVips):
                    await self.vip_manager.add()
                    self.vips_held = True
                elif isinstance(op, m.SilenceVips):
                    await self.vip_manager.silence()
                    self.vips_held = False  # held = answering ARP for them; silent is not held
                else:
                    await self.vip_manager.remove()
                    self.vips_held = False
            except DataplaneError as e:
                self.log.exception("ha.vip_failed", op=type(op).__name__, error=str(e))
            finally:
                self._vip_ops.task_done()

    async def _hook_worker(self) -> None:
        while True:
            n = await self._hooks.get()
            await self.settings.hooks.run(n.hook, n.term, n.reason)

    async def _serve(self) -> None:
        s = self.settings
        await serve_peer(self, s.listen, self._serving, tls=s.tls, peer_node=s.peer_node, insecure=s.insecure)

    def _serving(self, port: int) -> None:
        self.port = port
        self.log.info("ha.peer_serving", listen=self.settings.listen, port=port)

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set; then let go (VIPs, resign) within the retry deadline."""
        try:
            # a restarted agent starts as standby: VIPs a crashed predecessor left are removed
            try:
                await self.vip_manager.remove()
            except DataplaneError as e:
                self.log.warning("ha.vip_cleanup_failed", error=str(e))
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._serve(), name="ha-peer-server"),
                    tg.create_task(self._vip_worker(), name="ha-vips"),
                    tg.create_task(self._hook_worker(), name="ha-hooks"),
                    tg.create_task(self._follow_leader(), name="ha-leader"),
                    tg.create_task(self._heartbeats(), name="ha-heartbeat"),
                    tg.create_task(self._ticker(), name="ha-tick"),
                ]
                if started is not None:
                    started.set()
                await stop.wait()
                tasks[-1].cancel()  # no more ticks: the machine decides nothing more
                tasks[-2].cancel()  # nor heartbeats (each is a task the wait below would wait for)
                self.feed(m.Stop(time.monotonic()))
                try:
                    async with asyncio.timeout(2 * self.timing.retry_deadline + 1.0):
                        await self._vip_ops.join()
                        while self._tasks:  # the resign call
                            await asyncio.wait(set(self._tasks))
                except TimeoutError:
                    self.log.warning("ha.stop_timeout")
                for t in tasks:
                    t.cancel()
        finally:
            for t in list(self._tasks):
                t.cancel()
            await self._peer.close()
            self.vip_manager.close()
