"""The VIPs: added on becoming active, removed on letting go.

* :class:`NetlinkVips` puts them on an interface with netlink (pyroute2, in a thread: netlink
  calls never run on the event loop), ``/32`` or ``/128`` unless a prefix is given, then
  announces them: gratuitous ARP (a raw ``AF_PACKET`` frame built here) for IPv4, unsolicited
  neighbour advertisements (ICMPv6, override flag) for IPv6.
* :class:`ExternalVips` leaves them to an external manager (``--vip-mode external``): only the
  notify hooks act.

A crashed agent (SIGKILL) cannot remove its VIPs. :func:`spawn_guard` starts a tiny guard
process holding a pipe from the agent; when the pipe closes (the agent died, however), the guard
removes the VIPs (``python -m agent.ha.vips --guard``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import ipaddress
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from lvs_events.errors import DataplaneError

__all__ = ["ExternalVips", "NetlinkVips", "VipManager", "garp_frame", "parse_vip", "unsolicited_na"]

log = structlog.get_logger("agent.ha.vips")

ETH_P_ARP = 0x0806
ANNOUNCE_COUNT = 3
ANNOUNCE_GAP = 0.02


def parse_vip(text: str) -> tuple[str, int]:
    """``"203.0.113.10"`` -> ("203.0.113.10", 32); ``"2001:db8::1/64"`` -> (..., 64)."""
    iface = ipaddress.ip_interface(text if "/" in text else f"{text}/{128 if ':' in text else 32}")
    return str(iface.ip), iface.network.prefixlen


class VipManager(Protocol):
    vips: tuple[str, ...]

    async def add(self) -> None: ...

    async def remove(self) -> None: ...


class ExternalVips:
    """VIPs managed elsewhere: nothing to do here (the notify hooks tell the manager)."""

    def __init__(self, vips: Sequence[str] = ()) -> None:
        self.vips = tuple(vips)

    async def add(self) -> None:
        return None

    async def remove(self) -> None:
        return None


def garp_frame(mac: bytes, ip: str) -> bytes:
    """A gratuitous ARP request: broadcast, sender = target = ``ip``."""
    addr = socket.inet_aton(ip)
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + addr + b"\x00" * 6 + addr
    return eth + arp


def unsolicited_na(mac: bytes, ip: str) -> bytes:
    """An ICMPv6 neighbour advertisement (override flag) for ``ip`` with our link-layer address;
    the kernel fills in the checksum of ICMPv6 raw sockets."""
    target = socket.inet_pton(socket.AF_INET6, ip)
    return struct.pack("!BBHI", 136, 0, 0, 0x20000000) + target + struct.pack("!BB", 2, 1) + mac


def _mac(ifname: str) -> bytes:
    with open(f"/sys/class/net/{ifname}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def announce(ifname: str, ips: Sequence[str], count: int = ANNOUNCE_COUNT) -> None:
    """Gratuitous ARP / unsolicited NA for each address, ``count`` times (blocking: a thread)."""
    mac = _mac(ifname)
    v4 = [ip for ip in ips if ":" not in ip]
    v6 = [ip for ip in ips if ":" in ip]
    for i in range(count):
        if i:
            time.sleep(ANNOUNCE_GAP)
        if v4:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
                s.bind((ifname, ETH_P_ARP))
                for ip in v4:
                    s.send(garp_frame(mac, ip))
        for ip in v6:
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex(ifname))
                s.bind((ip, 0))
                s.sendto(unsolicited_na(mac, ip), ("ff02::1", 0, 0, socket.if_nametoindex(ifname)))


def _addr(ipr: Any, cmd: str, index: int, ip: str, prefix: int) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kwargs: dict[str, Any] = {"index": index, "address": ip, "prefixlen": prefix, "family": family}
    if cmd == "add" and family == socket.AF_INET6:
        kwargs["flags"] = 0x02  # IFA_F_NODAD: usable (and announceable) at once
    try:
        ipr.addr(cmd, **kwargs)
    except Exception as e:
        code = getattr(e, "code", None)
        if cmd == "add" and code == errno.EEXIST:
            return
        if cmd == "del" and code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH):
            return
        raise


def change(ifname: str, vips: Sequence[str], cmd: str) -> None:
    """Add (``cmd="add"``) or delete (``"del"``) the VIPs on ``ifname`` (blocking)."""
    # pyroute2 (the `kernel` extra) ships no type information: imported through importlib, as in
    # agent/dataplane/_netlink.py, when first needed (the external mode never imports it)
    ipr_class: Any = importlib.import_module("pyroute2").IPRoute
    with ipr_class() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DataplaneError(f"vip interface {ifname!r} does not exist")
        for v in vips:
            ip, prefix = parse_vip(v)
            _addr(ipr, cmd, found[0], ip, prefix)


class NetlinkVips:
    """``static`` VIPs (``--vip``) plus ``dynamic()`` ones (the virtual addresses of the config in
    force), read when the VIPs are added; removal removes what was added."""

    def __init__(
        self,
        interface: str,
        static: Sequence[str] = (),
        *,
        dynamic: Callable[[], Sequence[str]] | None = None,
        guard: bool = True,
    ) -> None:
        self.interface = interface
        self.static = tuple(static)
        for v in self.static:
            parse_vip(v)  # fail at start on a bad address
        self.dynamic = dynamic
        self.vips: tuple[str, ...] = self.static
        importlib.import_module("pyroute2")  # now, not on the first failover (it takes a while)
        self._guard: subprocess.Popen[bytes] | None = None
        self._want_guard = guard
        self._announcer: asyncio.Task[None] | None = None

    def wanted(self) -> tuple[str, ...]:
        out = list(self.static)
        for v in self.dynamic() if self.dynamic is not None else ():
            try:
                key = parse_vip(v)[0]
            except ValueError:
                continue
            if all(parse_vip(x)[0] != key for x in out):
                out.append(v)
        return tuple(out)

    async def add(self) -> None:
        self.vips = self.wanted()
        if not self.vips:
            log.warning("vips.none", interface=self.interface)
            return
        try:
            await asyncio.to_thread(change, self.interface, self.vips, "add")
        except OSError as e:
            raise DataplaneError(f"adding VIPs {list(self.vips)} on {self.interface}: {e}") from e
        ips = [parse_vip(v)[0] for v in self.vips]
        try:
            await asyncio.to_thread(announce, self.interface, ips, 1)
        except OSError as e:
            log.warning("vips.announce_failed", error=str(e))
        log.info("vips.added", interface=self.interface, vips=list(self.vips))
        # the repeats and the crash guard after the first announcement: they are not urgent
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._repeat(ips))
        if self._want_guard:
            self.close()  # a guard for exactly this set
            self._guard = await asyncio.to_thread(spawn_guard, self.interface, self.vips)

    async def _repeat(self, ips: list[str]) -> None:
        for _ in range(ANNOUNCE_COUNT - 1):
            await asyncio.sleep(ANNOUNCE_GAP)
            try:
                await asyncio.to_thread(announce, self.interface, ips, 1)
            except OSError as e:
                log.warning("vips.announce_failed", error=str(e))
                return

    async def remove(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        if not self.vips:
            self.vips = self.wanted()  # nothing added by us yet: the ones we would add
        if not self.vips:
            return
        try:
            await asyncio.to_thread(change, self.interface, self.vips, "del")
        except OSError as e:
            raise DataplaneError(f"removing VIPs {list(self.vips)} from {self.interface}: {e}") from e
        log.info("vips.removed", interface=self.interface, vips=list(self.vips))

    def close(self) -> None:
        """Stop the guard without it removing anything (a clean exit already removed the VIPs)."""
        g, self._guard = self._guard, None
        if g is not None and g.poll() is None:
            g.kill()
            g.wait(5)


def spawn_guard(interface: str, vips: Sequence[str]) -> subprocess.Popen[bytes]:
    """A child that removes the VIPs when our end of its stdin pipe closes (we died)."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent.ha.vips", "--guard", interface, *vips],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a signal to our process group does not reach it
    )


def _guard_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="agent.ha.vips")
    p.add_argument("--guard", required=True, metavar="INTERFACE")
    p.add_argument("vips", nargs="+")
    args = p.parse_args(argv)
    importlib.import_module("pyroute2")  # before waiting: the removal must be quick when it comes
    sys.stdin.buffer.read()  # until EOF: the agent is gone
    try:
        change(args.guard, args.vips, "del")
    except (OSError, DataplaneError) as e:
        print(f"vip guard: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_guard_main(sys.argv[1:]))
