"""The VIPs: added on becoming active, removed on letting go.

* :class:`NetlinkVips` puts them on an interface with netlink (pyroute2, in a thread: netlink
  calls never run on the event loop), ``/32`` or ``/128`` unless a prefix is given, then
  announces them: gratuitous ARP (a raw ``AF_PACKET`` frame built here) for IPv4, unsolicited
  neighbour advertisements (ICMPv6, override flag) for IPv6.
* :class:`ExternalVips` leaves them to an external manager (``--vip-mode external``): only the
  notify hooks act.

Planned switchover (make-before-break): :meth:`NetlinkVips.silence` moves the VIPs from the
interface to ``lo``: the node still accepts what clients with a stale ARP entry send it, but it
neither answers ARP for them nor announces them, because the interface has ``arp_ignore=1``
(answer only for addresses on the interface asked) and ``arp_announce=2`` (never use a VIP as the
sender of our own ARP requests), set when the manager starts, as on an LVS-DR real server. IPv6
needs no setting: Linux answers neighbour solicitations only for addresses on the interface
asked. Where those settings cannot be made, ``silence`` removes the VIPs (break-before-make).
:meth:`NetlinkVips.add` adds on the interface and announces first, then drops the ``lo`` copy.

A crashed agent (SIGKILL) cannot remove its VIPs. :func:`spawn_guard` starts a tiny guard
process holding a pipe from the agent; when the pipe closes (the agent died, however), the guard
removes the VIPs, from the interface and ``lo`` (``python -m lvs_events.agent.ha.vips --guard``).
The guard runs from the first :meth:`NetlinkVips.remove` (the HA runner's start) on, and the
agent tells it, one line per change, which VIPs are to go if it dies: the set is written
*before* the VIPs are added and emptied only after they are removed, so a VIP on the interface
is always covered, and arming it costs a pipe write, not a process start, on the failover path.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import ipaddress
import os
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

log = structlog.get_logger("lvs_events.agent.ha.vips")

ETH_P_ARP = 0x0806
ANNOUNCE_COUNT = 3
ANNOUNCE_GAP = 0.02
SILENT_INTERFACE = "lo"
# effective (max of conf/all and conf/IF) arp_ignore values under which an address on lo is not
# answered on IF: 1 (only addresses of IF), 2 (and the sender in their subnet), 8 (never)
SILENT_ARP_IGNORE = (1, 2, 8)


def parse_vip(text: str) -> tuple[str, int]:
    """``"203.0.113.10"`` -> ("203.0.113.10", 32); ``"2001:db8::1/64"`` -> (..., 64)."""
    iface = ipaddress.ip_interface(text if "/" in text else f"{text}/{128 if ':' in text else 32}")
    return str(iface.ip), iface.network.prefixlen


class VipManager(Protocol):
    """Where the VIPs go when this director becomes active (the HA runner's only way to them)."""

    vips: tuple[str, ...]

    async def add(self) -> None:
        """Hold the VIPs: answer ARP / NDP for them, announce them."""
        ...

    async def silence(self) -> None:
        """Keep accepting their traffic without answering ARP / NDP for them (a switchover)."""
        ...

    async def remove(self) -> None:
        """Let go of them (idempotent: also removes what a crashed predecessor left)."""
        ...

    def close(self) -> None:
        """At exit, after :meth:`remove`: release what the manager holds (its crash guard)."""
        ...


class ExternalVips:
    """VIPs managed elsewhere: nothing to do here (the notify hooks tell the manager)."""

    def __init__(self, vips: Sequence[str] = ()) -> None:
        self.vips = tuple(vips)

    async def add(self) -> None:
        return None

    async def silence(self) -> None:
        return None

    async def remove(self) -> None:
        return None

    def close(self) -> None:
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
        # pyroute2 ships no types: its NetlinkError carries the errno as ``code``; read as data
        # (None for any other exception, which is then raised as it is)
        code = getattr(e, "code", None)
        if cmd == "add" and code == errno.EEXIST:
            return
        if cmd == "del" and code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH):
            return
        raise


def _conf(ifname: str, key: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{ifname.replace('.', '/')}/{key}"


def _read_conf(ifname: str, key: str) -> int:
    with open(_conf(ifname, key)) as f:
        return int(f.read().strip())


def arp_silent(ifname: str) -> str:
    """Make ``ifname`` neither answer ARP for addresses on other interfaces nor use them as the
    sender of its own ARP requests (``arp_ignore=1``, ``arp_announce=2`` unless the effective
    values already do). "" when done, else why not (then a silent VIP would still be answered)."""
    try:
        ignore = max(_read_conf("all", "arp_ignore"), _read_conf(ifname, "arp_ignore"))
        if ignore not in SILENT_ARP_IGNORE:
            if _read_conf("all", "arp_ignore") not in (0, 1):
                return f"net.ipv4.conf.all.arp_ignore={_read_conf('all', 'arp_ignore')}"
            with open(_conf(ifname, "arp_ignore"), "w") as f:
                f.write("1")
        announce = max(_read_conf("all", "arp_announce"), _read_conf(ifname, "arp_announce"))
        if announce != 2:
            with open(_conf(ifname, "arp_announce"), "w") as f:
                f.write("2")
        ok = max(_read_conf("all", "arp_ignore"), _read_conf(ifname, "arp_ignore")) in SILENT_ARP_IGNORE
        ok = ok and max(_read_conf("all", "arp_announce"), _read_conf(ifname, "arp_announce")) == 2
    except (OSError, ValueError) as e:
        return str(e)
    return "" if ok else "arp_ignore/arp_announce did not take"


def change(ifname: str, vips: Sequence[str], cmd: str, *, host: bool = False) -> None:
    """Add (``cmd="add"``) or delete (``"del"``) the VIPs on ``ifname`` (blocking); ``host``: as
    /32 or /128 whatever their prefix (on ``lo`` a shorter prefix would make a whole subnet
    local)."""
    # pyroute2 (the `kernel` extra) ships no type information: imported through importlib, as in
    # lvs_events/agent/dataplane/_netlink.py, when first needed (the external mode never imports it)
    ipr_class: Any = importlib.import_module("pyroute2").IPRoute
    with ipr_class() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DataplaneError(f"vip interface {ifname!r} does not exist")
        for v in vips:
            ip, prefix = parse_vip(v)
            if host:
                prefix = 128 if ":" in ip else 32
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
        silent: bool = True,
    ) -> None:
        self.interface = interface
        self.static = tuple(static)
        for v in self.static:
            parse_vip(v)  # fail at start on a bad address
        self.dynamic = dynamic
        self.vips: tuple[str, ...] = self.static
        importlib.import_module("pyroute2")  # now, not on the first failover (it takes a while)
        self._guard: subprocess.Popen[bytes] | None = None  # see spawn_guard
        self._want_guard = guard
        self._announcer: asyncio.Task[None] | None = None
        self._silent: tuple[str, ...] = ()  # on lo, ARP-silent (a switchover)
        # IPv4 VIPs can be held silent only where the interface answers no ARP for lo's addresses
        self.arp_silent_error = arp_silent(interface) if silent else "disabled"
        if silent and self.arp_silent_error:
            log.warning(
                "vips.no_soft_handover",
                interface=interface,
                error=self.arp_silent_error,
                detail="planned switchover removes IPv4 VIPs before the successor adds them",
            )

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
        # before they exist: a crash from here on removes them (and a silent copy still on lo)
        await self._arm(tuple(dict.fromkeys(self.vips + self._silent)))
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
        if self._silent:  # held and announced here now: the silent copy is not needed any more
            await self._change_silent("del")
        # the repeats after the first announcement: they are not urgent
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._repeat(ips))

    async def _arm(self, vips: Sequence[str]) -> None:
        """Tell the crash guard which VIPs to remove if we die (none: nothing), starting it if
        it is not running. A guard that cannot be started is logged: the VIPs are still added
        (serving comes first), only a crash would then leave them behind."""
        if not self._want_guard:
            return
        line = (" ".join(vips) + "\n").encode()
        for _ in range(2):
            guard = self._guard
            try:
                if guard is None or guard.poll() is not None:
                    guard = self._guard = await asyncio.to_thread(spawn_guard, self.interface)
                assert guard.stdin is not None  # spawned with stdin=PIPE
                # the guard reads all the time (a few lines per role change): this does not
                # wait; a line up to PIPE_BUF (4 KiB) goes in one atomic write, and the guard
                # takes complete lines only
                view = memoryview(line)
                while view:
                    view = view[os.write(guard.stdin.fileno(), view) :]
            except OSError as e:  # BrokenPipeError: the guard died; or it cannot be started
                error = e
                self._guard = None
            else:
                return
        log.error("vips.guard_failed", interface=self.interface, vips=list(vips), error=str(error))

    async def _repeat(self, ips: list[str]) -> None:
        for _ in range(ANNOUNCE_COUNT - 1):
            await asyncio.sleep(ANNOUNCE_GAP)
            try:
                await asyncio.to_thread(announce, self.interface, ips, 1)
            except OSError as e:
                log.warning("vips.announce_failed", error=str(e))
                return

    async def _change_silent(self, cmd: str, vips: Sequence[str] = ()) -> None:
        target = tuple(vips) or self._silent
        try:
            await asyncio.to_thread(change, SILENT_INTERFACE, target, cmd, host=True)
        except (OSError, DataplaneError) as e:
            raise DataplaneError(f"{cmd} VIPs {list(target)} on {SILENT_INTERFACE}: {e}") from e
        self._silent = target if cmd == "add" else ()

    async def silence(self) -> None:
        """Stop answering ARP / NDP for the VIPs and announcing them, keep accepting their traffic:
        a copy on ``lo`` first, then off the interface (never a moment without either)."""
        if self._announcer is not None:
            self._announcer.cancel()
        if not self.vips:
            self.vips = self.wanted()
        if not self.vips:
            return
        quiet = [v for v in self.vips if not self.arp_silent_error or ":" in parse_vip(v)[0]]
        if quiet:
            await self._change_silent("add", quiet)
        try:
            await asyncio.to_thread(change, self.interface, self.vips, "del")
        except OSError as e:
            raise DataplaneError(f"removing VIPs {list(self.vips)} from {self.interface}: {e}") from e
        log.info("vips.silenced", interface=self.interface, vips=list(self.vips), on=SILENT_INTERFACE)

    async def remove(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        if not self.vips:
            self.vips = self.wanted()  # nothing added by us yet: the ones we would add
        if self.vips or self._silent:
            try:
                await asyncio.to_thread(change, self.interface, self.vips, "del")
            except OSError as e:
                raise DataplaneError(f"removing VIPs {list(self.vips)} from {self.interface}: {e}") from e
            # a silent copy, or one a crashed predecessor left on lo during a switchover
            await self._change_silent("del", tuple(dict.fromkeys(self._silent + self.vips)))
            log.info("vips.removed", interface=self.interface, vips=list(self.vips))
        # none of ours is left: nothing for the guard to remove (the first call, at the HA
        # runner's start, starts the guard, so that add() only writes to it)
        await self._arm(())

    def close(self) -> None:
        """Stop the guard without it removing anything (a clean exit already removed the VIPs)."""
        g, self._guard = self._guard, None
        if g is not None and g.poll() is None:
            g.kill()
            g.wait(5)


def spawn_guard(interface: str) -> subprocess.Popen[bytes]:
    """A child that, when our end of its stdin pipe closes (we died), removes the VIPs named by
    the last line we wrote to it (space-separated; an empty line: none) from ``interface`` and
    ``lo``. Blocking (a process start): call in a thread."""
    return subprocess.Popen(
        [sys.executable, "-m", "lvs_events.agent.ha.vips", "--guard", interface],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a signal to our process group does not reach it
    )


def _guard_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="lvs_events.agent.ha.vips")
    p.add_argument("--guard", required=True, metavar="INTERFACE")
    args = p.parse_args(argv)
    importlib.import_module("pyroute2")  # before waiting: the removal must be quick when it comes
    armed: list[str] = []
    for line in sys.stdin.buffer:  # until EOF: the agent is gone
        if line.endswith(b"\n"):  # whole lines only (each is one atomic write)
            armed = line.decode().split()
    if not armed:
        return 0
    try:
        change(args.guard, armed, "del")
        change(SILENT_INTERFACE, armed, "del", host=True)  # a copy silenced for a switchover
    except (OSError, DataplaneError) as e:
        print(f"vip guard: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_guard_main(sys.argv[1:]))
