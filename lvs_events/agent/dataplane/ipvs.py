"""The kernel dataplane: the IPVS table over generic netlink (pyroute2), for one director.

* **Never blocks the event loop.** Every netlink call runs in one dedicated thread (a
  single-worker executor) that owns the one netlink socket; coroutines only await it. The one
  exception is the per-event path's handful of destination edits on the open socket: the kernel
  answers a generic-netlink request inside ``send()``, so they go out from the loop directly
  (under the same lock, so the thread is idle), saving two thread switches.
* **Ownership.** The agent manages the services it *owns*: those of the desired table (claimed by
  :meth:`IpvsDataplane.reconcile` / :meth:`claim`) and those it created. :meth:`dump` reports only
  owned services, so :func:`lvs_events.agent.dataplane.reconcile` never deletes a service an operator added
  by hand for something else; :meth:`foreign` lists those. A service is released when the agent
  deletes it. With ``owned_path`` the owned set survives a restart of the agent (a service removed
  from the configuration while the agent was down is still removed when it comes back).
* **A shadow of the owned table.** After one real dump the dataplane keeps what it last wrote
  (the kernel acked every request), so the steady-state path (one event, one weight change) costs
  one netlink round trip, not a dump of every service; :meth:`reconcile_services` (the agent's
  per-event path) diffs and updates only the services named, O(changed). Any refusal by the
  kernel drops the shadow.
* **The drift check** (:mod:`lvs_events.agent.drift` drives it) never holds up applies for more
  than a few services' netlink reads: :meth:`begin_drift_check` reads the whole kernel on a
  netlink socket and a thread of its own, a few services per job, with no lock, recording the
  services applies touch meanwhile; :meth:`snapshot_kernel` reads those again under the lock
  (and resets the shadow to the kernel's truth); :meth:`compare` runs the pure
  :func:`lvs_events.agent.dataplane.compare` in a thread (one comparison per service, the sort
  and the diff only when something differs); :meth:`recheck` reads again, under the lock, only
  the services found different. :meth:`drift` does a check's dump and comparison in one call
  (for tests and tools). Measurements: ``docs/kernel-dataplane.md``.
* **Idempotent against races.** An add of something that already exists becomes a set (the
  service is then adopted: it is in the desired table); a delete of something already gone is
  success; a set of a destination that vanished becomes an add. Anything else the kernel refuses
  raises :class:`~lvs_events.errors.DataplaneError` naming the operation and the errno, after the
  rest of the batch was attempted.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from lvs_events.agent.dataplane import Drift, KernelDump, compare, reconcile
from lvs_events.domain.ipvsadm_save import sorted_like_ipvsadm
from lvs_events.domain.table import Op, Service, Table, apply_ops_to, diff, diff_services, same_service
from lvs_events.errors import DataplaneError

from ._netlink import IpvsSocket, NetlinkFailure, Request, dest_request, service_request

__all__ = ["Drift", "IpvsDataplane", "KernelDump", "compare", "sort_ipvsadm"]

T = TypeVar("T")

_INLINE_MAX_OPS = 8  # destination edits sent from the event loop (see IpvsDataplane._inline_ok)
_DEST_KINDS = frozenset(("add-dest", "edit-dest", "del-dest"))
_DUMP_CHUNK = 8  # services read per job by begin_drift_check: an apply waits for one chunk at most


@dataclass(slots=True)
class _Stats:
    dumps: int = 0
    requests: int = 0
    refusals: int = 0
    adopted: set[str] = field(default_factory=set)


class IpvsDataplane:
    """:class:`lvs_events.agent.dataplane.Dataplane` on the kernel's IPVS table."""

    def __init__(
        self,
        *,
        owned: Iterable[str] = (),
        owned_path: Path | None = None,
        batch_size: int = 256,
        use_shadow: bool = True,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipvs-netlink")
        self._sock = IpvsSocket(batch_size=batch_size)
        # The drift check's reads: a socket and a thread of their own, so its dump of the whole
        # table takes no lock (applies go on meanwhile on the socket above). Opened on first use.
        self._dump_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipvs-dump")
        self._dump_sock = IpvsSocket()
        self._owned: set[str] = set(owned)
        self._owned_path = owned_path
        if owned_path is not None and owned_path.exists():
            self._owned |= _load_owned(owned_path)
        self._use_shadow = use_shadow
        # What the kernel holds for the owned services, by key (None: unknown, dump first), and
        # the same as a Table, built on demand.
        self._shadow: dict[str, Service] | None = None
        self._shadow_table: Table | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._owned_dirty = True  # the owned set is written at the first apply, then when it changed
        # While a drift check is under way (from begin_drift_check to the snapshot_kernel or
        # drift(since=) that follows it):
        # the services every apply touched, by key, to be read again.
        self._touched: dict[str, Service] | None = None
        self.stats = _Stats()

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> IpvsDataplane:
        """Open the netlink socket now (else on first use): fails early without IPVS."""
        await self._run(self._sock.open)
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._sock.close)
            await loop.run_in_executor(self._dump_executor, self._dump_sock.close)
        finally:
            self._executor.shutdown(wait=False)
            self._dump_executor.shutdown(wait=False)

    async def __aenter__(self) -> IpvsDataplane:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- ownership --------------------------------------------------------------------------

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    def claim(self, desired: Table) -> None:
        """Own every service of ``desired`` (the services the configuration says are ours)."""
        self.claim_keys(s.key for s in desired.services)

    def claim_keys(self, keys: Iterable[str]) -> None:
        """Own these services (O(len(keys)))."""
        new = [k for k in keys if k not in self._owned]
        if new:
            self._owned.update(new)
            self._owned_dirty = True
            self._set_shadow(None)  # the shadow does not hold the newly claimed services yet

    async def foreign(self) -> Table:
        """The services in the kernel this agent does not own (with their destinations)."""
        return await self._locked_run(lambda: self._dump_sync(owned=False))

    # --- the Dataplane protocol ----------------------------------------------------------------

    async def dump(self) -> Table:
        """The owned services as the kernel holds them (the shadow after the first dump)."""
        async with self._lock:
            if self._use_shadow and self._shadow is not None:
                return self._shadow_as_table()
            return await self._dump_owned_locked()

    async def dump_kernel(self) -> Table:
        """The owned services, dumped from the kernel now (never the shadow)."""
        async with self._lock:
            return await self._dump_owned_locked()

    async def _dump_owned_locked(self) -> Table:
        table = await self._run(lambda: self._dump_sync(owned=True))
        self._set_shadow({s.key: s for s in table.services}, table)
        return table

    async def apply(self, ops: list[Op]) -> None:
        if not ops:
            return
        async with self._lock:
            await self._run(lambda: self._apply_sync(ops))

    # --- reconciliation and drift ------------------------------------------------------------

    async def reconcile(self, desired: Table) -> tuple[list[Op], Table]:
        """Claim ``desired``'s services, then :func:`lvs_events.agent.dataplane.reconcile` (minimal ops)."""
        self.claim(desired)
        return await reconcile(self, desired)

    async def reconcile_services(self, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
        """The per-event path: make only the services named in ``desired`` match it (``None``:
        the service must not exist), O(len(desired)) with the shadow: claim, diff, apply, update.

        Returns the operations applied and whether the kernel now holds exactly those services
        (as far as every request was acked); the rest of the table is not looked at.
        """
        self.claim_keys(k for k, s in desired.items() if s is not None)
        async with self._lock:
            if not self._use_shadow or self._shadow is None:
                await self._dump_owned_locked()
            shadow = self._shadow
            assert shadow is not None
            ops = diff_services(shadow, desired)
            if ops and self._inline_ok(ops):
                self._inline(lambda: self._apply_sync(ops))
            elif ops:
                await self._run(lambda: self._apply_sync(ops))
            after = self._shadow
            if after is None:  # a refusal or a race: ask the kernel
                await self._dump_owned_locked()
                after = self._shadow
                assert after is not None
            return ops, all(same_service(after.get(k), s) for k, s in desired.items())

    async def drift(self, desired: Table, *, since: KernelDump | None = None) -> Drift:
        """Dump the kernel (for real), diff it against ``desired``: the repair, not yet applied.

        With ``since`` (a :meth:`begin_drift_check` taken before): that dump, with the services an
        apply touched since it began read again now, stands for the kernel; the lock is held only
        for that re-read. The caller makes sure ``desired`` is what was applied last (the agent
        holds its apply lock around this call, not around the dump).
        """
        self.claim(desired)
        async with self._lock:
            if since is None:
                actual, foreign = await self._run(self._dump_split_sync)
            else:
                seen = await self._read_touched_locked(since)
                actual, foreign = self._split(seen.services.values())
            self._set_shadow({s.key: s for s in actual.services}, actual)
        return Drift(tuple(diff(actual, desired)), actual, tuple(s.key for s in foreign.services))

    async def snapshot_kernel(self, desired: Table, since: KernelDump) -> KernelDump:
        """The kernel as it is now, for a drift check that compares off the lock: ``since`` (a
        :meth:`begin_drift_check`) with the services applies touched since it began read again
        (the lock is held for those only), owned or not. The shadow becomes what it says of the
        owned services. Compare it with :meth:`compare` (in a thread), confirm a difference with
        :meth:`recheck`. The caller holds its own apply lock around this call (``desired`` is
        the table it applied last), not around the comparison."""
        self.claim(desired)
        async with self._lock:
            seen = await self._read_touched_locked(since)
            owned = self._owned
            self._set_shadow({k: s for k, s in seen.services.items() if k in owned})
        return seen

    async def _read_touched_locked(self, since: KernelDump) -> KernelDump:
        touched, self._touched = self._touched or {}, None
        again = dict(touched)
        again.update((k, since.listed[k]) for k in since.unread if k in since.listed and k not in again)
        services = {k: s for k, s in since.services.items() if k not in again}
        if again:
            services.update(await self._run(lambda: self._read_services_sync(again.values())))
        return KernelDump(services)

    async def compare(self, seen: KernelDump, desired: Table) -> Drift:
        """:func:`compare` of a :meth:`snapshot_kernel` with ``desired``, in a thread (not the netlink
        one): no lock is held, applies go on meanwhile."""
        return await asyncio.to_thread(compare, seen, desired, frozenset(self._owned))

    async def recheck(self, desired: Table, services: Iterable[Service]) -> Drift:
        """The drift of these services alone (by key), read from the kernel now (under the lock):
        :meth:`compare` found them different in a snapshot that applies may have overtaken
        since. The shadow takes what the kernel holds for them. ``foreign`` is left empty."""
        named = {s.key: s for s in services}
        self.claim(desired)
        want: dict[str, Service | None] = {k: None for k in named if k in self._owned}
        want.update((s.key, s) for s in desired.services if s.key in named)
        async with self._lock:
            have = await self._run(lambda: self._read_services_sync(named[k] for k in want))
            shadow = self._shadow
            if shadow is not None:
                for k in want:
                    if k in have:
                        shadow[k] = have[k]
                    else:
                        shadow.pop(k, None)
                self._shadow_table = None
        actual = Table(tuple(sort_ipvsadm(have.values())))
        return Drift(tuple(diff_services(have, want)), actual)

    async def begin_drift_check(self, chunk: int = _DUMP_CHUNK) -> KernelDump:
        """The whole kernel table, read on the check's own socket and thread, ``chunk`` services
        per job, holding no lock: applies go on meanwhile (a dump is one netlink round trip per
        service, far too long to hold up an event for). From the start the services each apply
        touches are recorded; :meth:`snapshot_kernel` and :meth:`drift` with ``since=`` read
        them again."""
        async with self._lock:  # every apply from now on is recorded
            self._touched = {}
        try:
            listed = await self._run_dump(self._dump_sock.dump_services)
            self.stats.dumps += 1
            services: dict[str, Service] = {}
            unread: dict[str, Service] = {}
            for i in range(0, len(listed), chunk):
                part = listed[i : i + chunk]
                got = await self._run_dump(lambda part=part: self._read_dests_sync(part, self._dump_sock))  # type: ignore[misc]
                for svc, full in got:
                    if full is None:
                        unread[svc.key] = svc
                    else:
                        services[svc.key] = full
        except BaseException:
            self._touched = None
            raise
        return KernelDump(services, frozenset(unread), unread)

    async def check_and_repair(self, desired: Table) -> Drift:
        """The periodic check: :meth:`drift`, then apply its repair. Returns what was repaired."""
        d = await self.drift(desired)
        if d.ops:
            await self.apply(list(d.ops))
        return d

    # --- test and benchmark helpers ------------------------------------------------------------

    async def flush_owned(self) -> None:
        """Delete every owned service from the kernel (foreign ones stay)."""
        table = await self.dump_kernel()
        await self.apply([Op("del-service", s) for s in table.services])

    # --- in the netlink thread ---------------------------------------------------------------

    def _dump_split_sync(self) -> tuple[Table, Table]:
        services = self._sock.dump_services()
        self.stats.dumps += 1
        mine: list[Service] = []
        theirs: list[Service] = []
        for s in services:
            full = replace(s, dests=tuple(self._sock.dump_dests(s)))
            (mine if s.key in self._owned else theirs).append(full)
        return Table(tuple(sort_ipvsadm(mine))), Table(tuple(sort_ipvsadm(theirs)))

    def _split(self, services: Iterable[Service]) -> tuple[Table, Table]:
        mine: list[Service] = []
        theirs: list[Service] = []
        for s in services:
            (mine if s.key in self._owned else theirs).append(s)
        return Table(tuple(sort_ipvsadm(mine))), Table(tuple(sort_ipvsadm(theirs)))

    def _read_dests_sync(
        self, services: list[Service], sock: IpvsSocket | None = None
    ) -> list[tuple[Service, Service | None]]:
        sock = sock or self._sock
        out: list[tuple[Service, Service | None]] = []
        for s in services:
            try:
                out.append((s, replace(s, dests=tuple(sock.dump_dests(s)))))
            except OSError:  # gone since it was listed (or unreadable): read again at the end
                out.append((s, None))
        return out

    def _read_services_sync(self, services: Iterable[Service]) -> dict[str, Service]:
        """These services (by key) as the kernel holds them now, with their destinations; absent
        ones are left out. Two requests per service, however big the table."""
        out: dict[str, Service] = {}
        for s in services:
            got = self._sock.get_service(s)
            if got is None:
                continue
            try:
                out[got.key] = replace(got, dests=tuple(self._sock.dump_dests(got)))
            except OSError as e:
                if e.errno not in (errno.ESRCH, errno.ENOENT):
                    raise  # else: deleted between the two requests
        return out

    def _dump_sync(self, *, owned: bool) -> Table:
        services = self._sock.dump_services()
        self.stats.dumps += 1
        out = [
            replace(s, dests=tuple(self._sock.dump_dests(s)))
            for s in services
            if (s.key in self._owned) == owned
        ]
        return Table(tuple(sort_ipvsadm(out)))

    def _apply_sync(self, ops: list[Op]) -> None:
        if self._touched is not None:  # a drift check is under way: these are read again
            self._touched.update((op.service.key, op.service) for op in ops)
        try:
            requests = [_request(op) for op in ops]
        except (ValueError, KeyError) as e:
            self._set_shadow(None)
            raise DataplaneError(f"cannot encode an IPVS operation: {e}") from e
        for op in ops:  # services we create are ours from the first request on
            if op.kind == "add-service" and op.service.key not in self._owned:
                self._owned.add(op.service.key)
                self._owned_dirty = True
        refused, raced = self._send_with_fallbacks(ops, requests)
        failed = {id(op) for op, _ in refused}
        for op in ops:
            if op.kind == "del-service" and id(op) not in failed and op.service.key in self._owned:
                self._owned.discard(op.service.key)
                self._owned_dirty = True
        if self._owned_dirty:  # not on a weight change: no fsync
            if self._owned_path is not None:
                _save_owned(self._owned_path, self._owned)
            self._owned_dirty = False
        shadow = self._shadow
        self._set_shadow(None if refused or raced or shadow is None else _applied(shadow, ops))
        if refused:
            self.stats.refusals += len(refused)
            first_op, first = refused[0]
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise DataplaneError(f"the kernel refused {first_op}: {first.message}{more}") from OSError(
                first.code, first.message
            )

    def _send_with_fallbacks(
        self, ops: list[Op], requests: list[Request]
    ) -> tuple[list[tuple[Op, NetlinkFailure]], bool]:
        """Send; retry what a race explains (exists / already gone). Returns refusals, raced."""
        retries: list[tuple[Op, Request]] = []
        refused: list[tuple[Op, NetlinkFailure]] = []
        for f in self._send(requests):
            op = ops[f.index]
            fallback = _fallback(op, f.code)
            if fallback is not None:
                retries.append(fallback)
                if op.kind == "add-service":
                    self.stats.adopted.add(op.service.key)
            elif not _already_done(op, f.code):
                refused.append((op, f))
        if retries:
            refused.extend((retries[f.index][0], f) for f in self._send([r for _, r in retries]))
        return refused, bool(retries)

    def _send(self, requests: list[Request]) -> list[NetlinkFailure]:
        self.stats.requests += len(requests)
        try:
            return self._sock.send(requests)
        except OSError as e:
            self._set_shadow(None)
            raise DataplaneError(f"IPVS netlink request failed: {e}") from e
        except Exception as e:
            self._set_shadow(None)
            if type(e).__name__ == "NetlinkError":
                raise DataplaneError(f"IPVS netlink request failed: {e}") from e
            raise

    async def _run_dump(self, fn: Callable[[], T]) -> T:
        """``fn`` on the drift check's own thread (its socket: ``_dump_sock``), no lock."""
        if self._closed:
            raise DataplaneError("the IPVS dataplane is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._dump_executor, _guard, fn)
        except DataplaneError:
            raise
        except OSError as e:
            raise DataplaneError(f"IPVS netlink: {e}") from e

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise DataplaneError("the IPVS dataplane is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, _guard, fn)
        except DataplaneError:
            raise
        except OSError as e:
            raise DataplaneError(f"IPVS netlink: {e}") from e

    def _inline_ok(self, ops: list[Op]) -> bool:
        """A few destination edits on an open socket: sent from the event loop itself. The kernel
        handles a generic-netlink request inside ``send()`` (the ack is queued before it
        returns), so this costs microseconds and saves two thread switches; no file is written
        (the owned set does not change). Anything else goes to the netlink thread."""
        return (
            len(ops) <= _INLINE_MAX_OPS
            and self._sock.opened
            and not self._owned_dirty
            and all(op.kind in _DEST_KINDS for op in ops)
        )

    def _inline(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise DataplaneError("the IPVS dataplane is closed")
        try:
            return _guard(fn)
        except DataplaneError:
            raise
        except OSError as e:
            raise DataplaneError(f"IPVS netlink: {e}") from e

    def _set_shadow(self, shadow: dict[str, Service] | None, table: Table | None = None) -> None:
        self._shadow = shadow
        self._shadow_table = table

    def _shadow_as_table(self) -> Table:
        assert self._shadow is not None
        if self._shadow_table is None:
            self._shadow_table = Table(tuple(self._shadow.values()))
        return self._shadow_table

    async def _locked_run(self, fn: Callable[[], T]) -> T:
        async with self._lock:
            return await self._run(fn)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``, turning pyroute2's netlink errors (not OSError subclasses) into OSError."""
    try:
        return fn()
    except (DataplaneError, OSError):
        raise
    except Exception as e:
        if type(e).__name__ in ("NetlinkError", "NetlinkDecodeError"):
            # pyroute2 ships no types: its NetlinkError carries the errno as ``code`` (data, read
            # from an exception already known by its class name to be pyroute2's)
            code = int(getattr(e, "code", 0) or errno.EIO)
            raise OSError(code, f"{os.strerror(code)} ({e})") from e
        raise


def _request(op: Op) -> Request:
    if op.kind == "add-service":
        return service_request("add", op.service)
    if op.kind == "edit-service":
        return service_request("set", op.service)
    if op.kind == "del-service":
        return service_request("del", op.service)
    if op.dest is None:
        raise ValueError(f"{op.kind} without a destination")
    kind = {"add-dest": "add", "edit-dest": "set", "del-dest": "del"}[op.kind]
    return dest_request(kind, op.service, op.dest)


def _fallback(op: Op, code: int) -> tuple[Op, Request] | None:
    """The request that makes ``op`` true after a refusal caused by a race, or None."""
    if op.kind == "add-service" and code == errno.EEXIST:
        return op, service_request("set", op.service)
    if op.kind == "add-dest" and code == errno.EEXIST and op.dest is not None:
        return op, dest_request("set", op.service, op.dest)
    if op.kind == "edit-dest" and code == errno.ENOENT and op.dest is not None:
        return op, dest_request("add", op.service, op.dest)
    return None


def _already_done(op: Op, code: int) -> bool:
    """A delete of something already gone."""
    if op.kind == "del-dest":
        return code == errno.ENOENT
    return op.kind == "del-service" and code == errno.ESRCH


def _applied(shadow: dict[str, Service], ops: list[Op]) -> dict[str, Service] | None:
    """The shadow after ``ops`` (all acked), updated in place: O(ops), not O(table)."""
    try:
        apply_ops_to(shadow, ops)
    except ValueError:
        return None
    return shadow


# --- ordering like ipvsadm ---------------------------------------------------------------------


def sort_ipvsadm(services: Iterable[Service]) -> list[Service]:
    """Services (and their destinations) in the order ``ipvsadm -L -n`` / ``-S -n`` lists them."""
    return list(sorted_like_ipvsadm(services))


# --- the owned set on disk ---------------------------------------------------------------------


def _load_owned(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DataplaneError(f"cannot read the owned-services file {path}: {e}") from e
    if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
        raise DataplaneError(f"the owned-services file {path} is not a list of service keys")
    return set(data)


_save_lock = threading.Lock()


def _save_owned(path: Path, owned: set[str]) -> None:
    blob = json.dumps(sorted(owned), indent=0).encode() + b"\n"
    with _save_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
