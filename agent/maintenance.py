"""``maintenancedir``: a file named after a real server forces it down, as in ldirectord.

ldirectord looks, in this order, for ``<ip>:<port>``, ``<ip>``, ``<name>:<port>``, ``<name>``,
``<short>:<port>`` and ``<short>`` in the directory, where ``name`` is the reverse-DNS name of the
address and ``short`` its first label (only when the name starts with a letter, as ldirectord's
pattern requires). The checks call :meth:`Maintenance.check` in a thread (it stats files and
may resolve a name); names are looked up once per address and cached, through an injectable
function so tests never touch DNS.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["Maintenance", "candidates", "reverse_name"]

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

    def check(self, address: str, port: int) -> str | None:
        """The file that forces this server down, or ``None`` (blocking: run in a thread)."""
        if address not in self._names:
            self._names[address] = self.resolve(address)
        for candidate in candidates(address, port, self._names[address]):
            if os.path.lexists(self.directory / candidate):
                return candidate
        return None
