"""Probes that do not speak an application protocol: connect, external, external-perl, none.

``connect`` on a UDP service is a ping, as in ldirectord (a UDP "connect" proves nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
from typing import Final

import structlog

from lvs_events.agent.checks.base import Result, sockaddr
from lvs_events.agent.checks.ping import ping
from lvs_events.agent.checks.spec import CheckSpec
from lvs_events.agent.commands import CommandConsent, CommandKind, command_argv

__all__ = ["check_connect", "check_external", "check_external_perl", "check_none"]

log = structlog.get_logger("lvs_events.agent.checks")

_OUTPUT_TAIL: Final = 200
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_reapers: set[asyncio.Task[None]] = set()


async def check_connect(spec: CheckSpec) -> Result:
    """A TCP connection to the check port is accepted (then closed); UDP services are pinged."""
    if spec.protocol.value == "udp":
        return await ping(spec)
    family, addr = sockaddr(spec.address, spec.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, addr)
        # close with a reset: no TIME_WAIT left on the director (at 10,000 checks a second the
        # kernel's search for a free source port among them costs more than the check itself)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    finally:
        sock.close()
    return Result(True, "connected")


async def check_none(spec: CheckSpec) -> Result:
    """``service = none``: nothing to negotiate, the server is up (ldirectord's ``check_none``)."""
    return Result(True, "service none")


async def _reap(proc: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(1.0):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _run(argv: list[str], spec: CheckSpec) -> Result:
    args = [spec.virtual_address, str(spec.virtual_port), spec.address, str(spec.real_port)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return Result(False, f"cannot run {argv[0]}: {e.strerror or e}")
    try:
        out, _ = await proc.communicate()
    except BaseException:
        # timed out (cancelled by the scheduler) or shutting down: TERM it as ldirectord does,
        # and make sure it is reaped even if it ignores the signal
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            task = asyncio.get_running_loop().create_task(_reap(proc))
            _reapers.add(task)
            task.add_done_callback(_reapers.discard)
        raise
    tail = out.decode("utf-8", "replace").strip()[-_OUTPUT_TAIL:]
    code = proc.returncode
    detail = f"exit {code}" + (f": {tail}" if tail else "")
    return Result(code == 0, detail)


def _refused(consent: CommandConsent, spec: CheckSpec) -> Result | None:
    c = consent.consent(CommandKind.CHECK, spec.checkcommand)
    return None if c.allowed else Result(False, f"checkcommand refused by local policy: {c.reason}")


async def check_external(spec: CheckSpec, consent: CommandConsent) -> Result:
    """Run ``checkcommand virtual-ip virtual-port real-ip real-port``; exit status 0 is up.
    Without this director's consent nothing runs and the check fails."""
    refused = _refused(consent, spec)
    if refused is not None:
        return refused
    return await _run(list(command_argv(CommandKind.CHECK, spec.checkcommand)), spec)


async def check_external_perl(spec: CheckSpec, consent: CommandConsent) -> Result:
    """ldirectord evaluates the file inside its own perl; we run it with the perl interpreter,
    with the same four arguments and the same exit-code convention (with consent, as above)."""
    refused = _refused(consent, spec)
    if refused is not None:
        return refused
    perl = shutil.which("perl")
    if perl is None:
        return Result(False, "external-perl: no perl interpreter found")
    return await _run([perl, spec.checkcommand], spec)
