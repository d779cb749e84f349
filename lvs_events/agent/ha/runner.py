"""The I/O shell of the HA machine: timers, the election calls, the peer heartbeat, the VIPs.

Everything that decides is in :mod:`lvs_events.agent.ha.machine`; this module only feeds it inputs stamped
with ``time.monotonic()`` and carries out the actions it returns:

* ``Campaign`` / ``Takeover`` / ``KeepAlive`` / ``Resign``: calls to the coordinators'
  ``LeaderElection`` service (each bounded by ``timing.retry_deadline``), results fed back.
* ``AddVips`` / ``SilenceVips`` / ``RemoveVips``: one worker, in order (never overtaken).
* ``Notify``: the hooks, one at a time, in order.
* ``SendHandover``: the peer's ``Handover`` call (planned switchover), sent once our VIPs are
  silent; the peer answers once it holds and has announced them.

Tasks (one TaskGroup): the ticker, the heartbeat sender, the leader observer, the VIP worker, the
hook worker, and the Peer gRPC server. ``stop()`` feeds ``Stop`` (VIPs removed, resign) and waits
for the VIP worker to finish before the tasks are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import structlog

from lvs_events.agent.ha import machine as m
from lvs_events.agent.ha.hooks import Hooks
from lvs_events.agent.ha.timing import HaTiming
from lvs_events.agent.ha.vips import VipManager
from lvs_events.client.ha import LeaderElectionClient
from lvs_events.errors import DataplaneError, LvsEventsError
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc

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
        self._handover_waiters: list[asyncio.Future[lpb.HandoverReply]] = []
        self._takeover_waiters: list[asyncio.Future[m.ElectionResult | None]] = []
        self._peer_channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None
        self.port = 0
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

    def _spawn(self, coro: Any) -> None:
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

    async def _observe(self) -> None:
        async for info in self.election.watch_leader():
            self.feed(m.Observed(time.monotonic(), info.node or None, info.term))

    # -- the peer --------------------------------------------------------------------------

    def _heartbeat(self, ack_term: int = 0) -> lpb.PeerHeartbeat:
        rev, digest = self.applied()
        s = self.state
        return lpb.PeerHeartbeat(
            node=s.node,
            role=s.role.value,
            term=s.term if s.role is not m.Role.STANDBY else 0,
            revision=rev,
            digest=digest,
            ack_term=ack_term,
        )

    def _peer_stub(self) -> lpb_grpc.PeerAsyncStub:
        if self._peer_channel is None:
            self._peer_channel = grpc.aio.insecure_channel(
                self.settings.peer,
                options=[("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 200)],
            )
        return lpb_grpc.PeerStub(self._peer_channel)

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
        retransmission, backed off to seconds while the link was down (seen in the lab: the
        healed node heard nothing from its peer for 10 s, took that for silence, and took over)."""
        channel, self._peer_channel = self._peer_channel, None
        self._peer_channel_at = time.monotonic()
        if channel is not None:
            self.log.info("ha.peer_reconnect", silent=round(self._peer_channel_at - self._heartbeat_ok, 3))
            await channel.close(grace=None)

    async def _heartbeat_once(self, sent: float) -> None:
        try:
            r = await self._peer_stub().Heartbeat(self._heartbeat(), timeout=self.timing.silence)
        except grpc.aio.AioRpcError:
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

    async def switchover(self, to: str, within: float) -> lpb.HandoverReply:
        started = time.monotonic()
        why = m.can_switchover(self.state, to, self.peer_ready())
        if why:
            return lpb.HandoverReply(ok=False, error=why)
        fut: asyncio.Future[lpb.HandoverReply] = asyncio.get_running_loop().create_future()
        self._handover_waiters.append(fut)
        self.feed(m.SwitchoverRequested(time.monotonic(), to))
        try:
            async with asyncio.timeout(within):
                reply = await fut
        except TimeoutError:
            return lpb.HandoverReply(ok=False, error=f"no handover within {within:g}s")
        finally:
            if fut in self._handover_waiters:
                self._handover_waiters.remove(fut)
        reply.seconds = time.monotonic() - started
        return reply

    async def _send_handover(self, term: int) -> None:
        # the successor's takeover (up to two retry deadlines), then its VIPs added and announced
        within = m.HANDOVER_RPC_DEADLINES * self.timing.retry_deadline
        # the peer adds the VIPs without waiting once told: ours must be ARP-silent first
        await self._vip_ops.join()
        try:
            r = await self._peer_stub().Handover(
                lpb.HandoverRequest(from_node=self.settings.node, term=term), timeout=within
            )
        except grpc.aio.AioRpcError as e:
            r = lpb.HandoverReply(ok=False, error=f"{e.code().name} {e.details() or ''}".strip())
        self.feed(m.HandoverResult(time.monotonic(), r.ok, r.error))
        for fut in self._handover_waiters:
            if not fut.done():
                fut.set_result(lpb.HandoverReply(ok=r.ok, error=r.error, term=r.term, node=r.node))

    async def handover_asked(self, from_node: str, term: int) -> lpb.HandoverReply:
        fut: asyncio.Future[m.ElectionResult | None] = asyncio.get_running_loop().create_future()
        self._takeover_waiters.append(fut)
        self.feed(m.HandoverAsked(time.monotonic(), from_node, term))
        if self.state.handover_term != term:
            self._takeover_waiters.remove(fut)
            return lpb.HandoverReply(ok=False, error=f"{self.settings.node} is {self.state.role.value}, busy")
        deadline = time.monotonic() + 2 * self.timing.retry_deadline
        try:
            async with asyncio.timeout(2 * self.timing.retry_deadline):
                res = await fut
        except TimeoutError:
            return lpb.HandoverReply(ok=False, error="takeover did not answer in time")
        finally:
            if fut in self._takeover_waiters:
                self._takeover_waiters.remove(fut)
        if res is None or not res.acquired:
            return lpb.HandoverReply(ok=False, error="takeover refused by etcd")
        # The old active drops its silent copy when we answer: answer once ours are held and
        # announced (the machine queued AddVips with the election result). Past the deadline we
        # answer anyway: the old copy then lingers `linger` more, it is ARP-silent either way.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._vip_ops.join()
        return lpb.HandoverReply(ok=True, term=res.term, node=self.settings.node)

    def _resolve_takeover(self, res: m.ElectionResult | None) -> None:
        for fut in self._takeover_waiters:
            if not fut.done():
                fut.set_result(res)

    def status(self) -> lpb.PeerStatus:
        s = self.state
        rev, digest = self.applied()
        now = time.monotonic()
        me = lpb.NodeStatusView(
            node=s.node, role=s.role.value, term=s.term, revision=rev, digest=digest, vips=self.vips_held
        )
        peer = lpb.NodeStatusView()
        if s.peer is not None:
            p = s.peer
            peer = lpb.NodeStatusView(
                node=p.node,
                role=p.role,
                term=p.term,
                revision=p.revision,
                digest=p.digest,
                seen_ago=now - p.seen_at,
            )
        return lpb.PeerStatus(
            self=me,
            peer=peer,
            leader=s.leader or "",
            leader_term=s.leader_term,
            reason=s.reason,
            vips=list(self.vip_manager.vips),
        )

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
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        lpb_grpc.add_PeerServicer_to_server(PeerService(self), server)
        self.port = server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        self.log.info("ha.peer_serving", listen=self.settings.listen, port=self.port)
        try:
            await server.wait_for_termination()
        finally:
            await server.stop(0.5)

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
                    tg.create_task(self._observe(), name="ha-observe"),
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
            if self._peer_channel is not None:
                await self._peer_channel.close(grace=None)
            close = getattr(self.vip_manager, "close", None)
            if close is not None:
                close()


class PeerService(lpb_grpc.PeerServicer):
    def __init__(self, runner: HaRunner) -> None:
        self.runner = runner

    async def Heartbeat(
        self, request: lpb.PeerHeartbeat, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.PeerHeartbeat:
        r = self.runner
        r.feed(
            m.PeerSeen(
                time.monotonic(),
                request.node,
                request.role,
                request.term,
                request.revision,
                request.digest,
                reply=True,
            )
        )
        return r._heartbeat(ack_term=r.state.acked_term)

    async def Handover(
        self, request: lpb.HandoverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.HandoverReply:
        return await self.runner.handover_asked(request.from_node, request.term)

    async def Switchover(
        self, request: lpb.SwitchoverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.HandoverReply:
        within = request.timeout if request.timeout > 0 else 5.0
        return await self.runner.switchover(request.to, within)

    async def Status(
        self, request: lpb.PeerStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.PeerStatus:
        return self.runner.status()
