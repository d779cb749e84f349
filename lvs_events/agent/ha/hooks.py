"""keepalived-style notify hooks: ``--on-active``, ``--on-standby``, ``--on-fault``.

Each is a command line (split like a shell would, no shell involved); it runs with three more
arguments: the new role, the term, and the reason. Runs are serialised (the order of role changes
is kept), each bounded by ``timeout`` seconds (then killed); a failing hook is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from dataclasses import dataclass

import structlog

__all__ = ["Hooks"]

log = structlog.get_logger("lvs_events.agent.ha.hooks")


@dataclass(frozen=True, slots=True)
class Hooks:
    on_active: str = ""
    on_standby: str = ""
    on_fault: str = ""
    timeout: float = 10.0

    def command(self, hook: str) -> str:
        return {"active": self.on_active, "standby": self.on_standby, "fault": self.on_fault}.get(hook, "")

    async def run(self, hook: str, term: int, reason: str) -> int | None:
        """Run the hook; its exit status (None: no hook, or killed at the timeout)."""
        cmd = self.command(hook)
        if not cmd:
            return None
        argv = [*shlex.split(cmd), hook, str(term), reason]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
            )
        except OSError as e:
            log.warning("hook.failed_to_start", hook=hook, command=cmd, error=str(e))
            return None
        try:
            async with asyncio.timeout(self.timeout):
                code = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log.warning("hook.timeout", hook=hook, command=cmd, timeout=self.timeout)
            return None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        (log.info if code == 0 else log.warning)("hook.done", hook=hook, command=cmd, code=code)
        return code
