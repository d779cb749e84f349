"""``maintenancedir``: a file named after a real server forces it down, as in ldirectord.

ldirectord looks, in this order, for ``<ip>:<port>``, ``<ip>``, ``<name>:<port>``, ``<name>``,
``<short>:<port>`` and ``<short>`` in the directory, where ``name`` is the reverse-DNS name of the
address and ``short`` its first label (only when the name starts with a letter, as ldirectord's
pattern requires). The checks call :meth:`Maintenance.check` in a thread (it stats files and
may resolve a name); names are looked up once per address and cached, through an injectable
function so tests never touch DNS.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from lvs_events.domain.config import Config
from lvs_events.domain.state import RealKey

__all__ = ["Maintenance", "MaintenanceWatcher", "candidates", "reverse_name"]

_SHORT = re.compile(r"^([a-z][a-z0-9\-]+)\.")


def reverse_name(address: str) -> str | None:
    """The host name of an address (blocking; ``None`` when it has none)."""
    try:
        return socket.gethostbyaddr(address)[0]
    except OSError:
        return None


def candidates(address: str, port: int, name: str | None) -> list[str]:
    """The file names that put ``address:port`` in maintenance, in ldirectord's order."""
    names = [f"{address}:{port}", address]
    if name:
        names += [f"{name}:{port}", name]
        m = _SHORT.match(name)
        if m:
            names += [f"{m.group(1)}:{port}", m.group(1)]
    return names


class Maintenance:
    def __init__(self, directory: str | Path, resolve: Callable[[str], str | None] = reverse_name) -> None:
        self.directory = Path(directory)
        self.resolve = resolve
        self._names: dict[str, str | None] = {}

    def check(self, address: str, port: int, listing: set[str] | None = None) -> str | None:
        """The file that forces this server down, or ``None`` (blocking: run in a thread).

        ``listing``: the directory's entries, read once for many servers (else each is stat'ed).
        """
        if listing is not None and not listing:
            return None  # an empty directory: no name lookups at all
        if address not in self._names:
            self._names[address] = self.resolve(address)
        for candidate in candidates(address, port, self._names[address]):
            if candidate in listing if listing is not None else os.path.lexists(self.directory / candidate):
                return candidate
        return None

    def scan(self, config: Config) -> dict[RealKey, str]:
        """Every real server of ``config`` in maintenance (key -> file), from one directory listing."""
        try:
            listing = set(os.listdir(self.directory))
        except OSError:
            return {}
        out: dict[RealKey, str] = {}
        if not listing:
            return out
        for v in config.virtuals:
            for r in v.reals:
                found = self.check(r.address, r.port, listing)
                if found is not None:
                    out[(v.key, r.key)] = found
        return out


class _SetMaintenance(Protocol):
    def set_maintenance(self, files: dict[RealKey, str]) -> None: ...


class MaintenanceWatcher:
    """Reads ``maintenancedir`` every check interval (off the event loop) and tells the checker."""

    def __init__(
        self,
        checker: _SetMaintenance,
        config: Callable[[], Config | None],
        resolve: Callable[[str], str | None] = reverse_name,
    ) -> None:
        self.checker = checker
        self.config = config
        self.resolve = resolve
        self._m: Maintenance | None = None
        self._last: dict[RealKey, str] = {}
        self.log = structlog.get_logger("lvs_events.agent.maintenance")

    async def poll_once(self) -> dict[RealKey, str]:
        cfg = self.config()
        directory = cfg.globals.maintenancedir if cfg is not None else None
        files: dict[RealKey, str] = {}
        if cfg is not None and directory:
            if self._m is None or self._m.directory != Path(directory):
                self._m = Maintenance(directory, self.resolve)
            files = await asyncio.to_thread(self._m.scan, cfg)
        if files != self._last:
            self.log.info("maintenance.changed", servers=sorted(f"{v} -> {r}" for v, r in files))
            self.checker.set_maintenance(files)
            self._last = files
        return files

    async def run(self) -> None:
        while True:
            await self.poll_once()
            cfg = self.config()
            await asyncio.sleep(max(1.0, min(cfg.globals.checkinterval if cfg else 5.0, 10.0)))
