"""``fallbackcommand``: run the operator's script when a service falls back, and when it recovers.

ldirectord runs ``<fallbackcommand> start <vip>:<port> <protocol>`` when the fallback server goes
into a virtual service's table (no real server available) and ``... stop ...`` when a real server
is back. Every agent runs it for the table it applied, so each director can start its own local
"sorry" server. Transitions come from the pure :func:`lvs_events.domain.render.fallback_commands`;
this module only compares them with the last ones seen and runs the commands (asyncio
subprocesses, a timeout each, at most one at a time per virtual service, in order).

A command runs only with this director's consent (:mod:`lvs_events.agent.commands`): the
configuration comes from the log, and the agent runs as root. A refused command is not started
(logged here; the agent records the refusal in the log once per configuration revision).
"""

from __future__ import annotations

import asyncio

import structlog

from lvs_events.agent.commands import CommandConsent, CommandKind, command_argv
from lvs_events.domain.render import FallbackCommand, fallback_commands
from lvs_events.domain.state import State
from lvs_events.domain.table import Table

__all__ = ["FallbackRunner"]


class FallbackRunner:
    def __init__(self, consent: CommandConsent, *, timeout: float = 30.0, max_pending: int = 64) -> None:
        self.consent = consent
        self.timeout = timeout
        self.last: dict[str, bool] = {}
        # Bounded: when full, the oldest pending command is dropped (the newest state wins).
        self.queue: asyncio.Queue[FallbackCommand] = asyncio.Queue(max_pending)
        self.log = structlog.get_logger("lvs_events.agent.fallback")
        self.ran: list[tuple[str, ...]] = []  # argv of every command run (status, tests)
        self.refused: list[tuple[str, ...]] = []  # argv of every command not started (no consent)

    def transitions(self, state: State, table: Table) -> list[FallbackCommand]:
        """Commands whose state changed since the last call (first call: only active ones)."""
        out: list[FallbackCommand] = []
        for key, fc in fallback_commands(state, table).items():
            before = self.last.get(key)
            if before != fc.active and (before is not None or fc.active):
                out.append(fc)
            self.last[key] = fc.active
        return out

    def on_applied(self, state: State, table: Table) -> None:
        """The state and the table (or the services of it) just applied: queue the commands of
        the virtual services whose fallback started or stopped (never waits; a full queue drops
        its oldest command)."""
        for fc in self.transitions(state, table):
            if self.queue.full():
                dropped = self.queue.get_nowait()
                self.log.warning("fallback.queue_full_dropped", virtual=dropped.virtual, args=dropped.args)
            self.queue.put_nowait(fc)

    async def run(self) -> None:
        while True:
            fc = await self.queue.get()
            await self._run_one(fc)

    async def _run_one(self, fc: FallbackCommand) -> None:
        argv = (*command_argv(CommandKind.FALLBACK, fc.command), *fc.args)
        log = self.log.bind(vip=fc.virtual, command=" ".join(argv))
        consent = self.consent.consent(CommandKind.FALLBACK, fc.command)
        if not consent.allowed:
            self.refused.append(argv)
            log.error("fallback.command_refused", reason=consent.reason)
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as e:
            log.exception("fallback.command_failed_to_start", error=str(e))
            return
        out = b""
        try:
            async with asyncio.timeout(self.timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if proc.returncode is None or proc.returncode < 0:
            log.error("fallback.command_timeout", timeout=self.timeout)
            return
        self.ran.append(argv)
        level = log.info if proc.returncode == 0 else log.error
        level("fallback.command_ran", exit_code=proc.returncode, output=out.decode(errors="replace")[-500:])
