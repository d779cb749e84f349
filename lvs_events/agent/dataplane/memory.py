"""The in-memory dataplane: the IPVS table as values, changed by the same operations as the kernel's.

It holds each service's destinations by key, so an operation costs O(1) whatever the size of its
service (``apply_ops`` semantics, order included: a new destination goes last), and it reconciles
the services the agent names (``reconcile_services``, the per-event path) in O(changes).

It implements the whole :class:`lvs_events.agent.dataplane.Dataplane` protocol. Where a concept of
the kernel's does not apply, trivially: every service in it is the agent's (``claim`` records
nothing, a drift reports no foreign service), and nothing but :meth:`apply` changes it, except a
test that replaces :attr:`table` the way an operator runs ``ipvsadm``: the drift check's steps
read the table it holds (no I/O, so there is nothing to re-read after ``begin_drift_check``), and
find such a change.

It shows itself in two files in ``<dir>``, written atomically: ``table.txt`` (the ``ipvsadm -L -n``
layout) and ``table.json`` (canonical JSON), so tests, the CLI and the demo can show each agent's
table. They are written in the background after a change, at once when the last write is long
past, else paced: at least ``write_cost_factor`` times the last write's CPU time apart (a table of
10,000 destinations is megabytes of text; writing it after every event would cost more than the
events). :meth:`flush` (and :meth:`close`) writes what is pending now. At start it loads
``table.json`` if present, the way a kernel table outlives a restart of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from lvs_events.agent.dataplane import Drift, KernelDump, compare
from lvs_events.agent.persist import atomic_write
from lvs_events.domain.table import (
    OP_RANK,
    Dest,
    Op,
    Service,
    ServiceChanges,
    Table,
    diff_services,
    format_ipvsadm,
    same_service,
    table_from_json,
)
from lvs_events.errors import DataplaneError

__all__ = ["MemoryDataplane"]

log = structlog.get_logger("lvs_events.agent.dataplane.memory")


def _dest_ops(have: Mapping[str, Dest], want: Service, dests: Mapping[str, Dest | None]) -> list[Op]:
    """The operations that make the destinations keyed in ``dests`` of a service holding ``have``
    what ``dests`` says (None: absent)."""
    ops: list[Op] = []
    for dk, d in dests.items():
        cur = have.get(dk)
        if d is None:
            if cur is not None:
                ops.append(Op("del-dest", want, cur))
        elif cur is None:
            ops.append(Op("add-dest", want, d))
        elif cur != d:
            ops.append(Op("edit-dest", want, d))
    return ops


class MemoryDataplane:
    def __init__(
        self, dump_dir: Path | None = None, *, load_existing: bool = True, write_cost_factor: float = 10.0
    ) -> None:
        self.dump_dir = dump_dir
        self.write_cost_factor = write_cost_factor
        self.applied_ops = 0
        self.delta_services = 0  # services reconciled from a delta (O(changes)), for tests and status
        self.files_written = 0
        # the table: services (attributes; their ``dests`` unused) and their destinations by key
        self._attrs: dict[str, Service] = {}
        self._dests: dict[str, dict[str, Dest]] = {}
        self._built: dict[str, Service] = {}  # services as values, made on demand
        # the desired service each service was last reconciled to by reconcile_services, until
        # an operation touches it: its base for the next delta
        self._synced: dict[str, Service] = {}
        self._table: Table | None = Table()
        # the files
        self._dirty = False
        self._hurry = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._write_after = 0.0  # loop time before which the next write waits
        if dump_dir is not None and load_existing:
            path = dump_dir / "table.json"
            if path.exists():
                try:
                    self.table = table_from_json(json.loads(path.read_bytes()))
                except (ValueError, TypeError, KeyError):
                    self.table = Table()  # unreadable: start empty, the reconcile fills it

    # -- the table -----------------------------------------------------------------------------

    @property
    def table(self) -> Table:
        """The table as a value (made once per change)."""
        if self._table is None:
            self._table = Table(tuple(self._service(key) for key in self._attrs))
        return self._table

    @table.setter
    def table(self, table: Table) -> None:
        """Replace the whole table (a load; tests play ``ipvsadm`` with it)."""
        self._attrs = {s.key: s for s in table.services}
        self._dests = {s.key: {d.key: d for d in s.dests} for s in table.services}
        self._built = {}
        self._synced = {}
        self._table = None  # made from the dicts: a key the table has twice is there once

    def _service(self, key: str) -> Service:
        s = self._built.get(key)
        if s is None:
            s = self._built[key] = replace(self._attrs[key], dests=tuple(self._dests[key].values()))
        return s

    async def dump(self) -> Table:
        return self.table

    async def apply(self, ops: list[Op]) -> None:
        try:
            self._apply(ops)
        except ValueError as e:
            raise DataplaneError(f"memory dataplane refused an operation: {e}") from e
        self.applied_ops += len(ops)
        if ops:
            self._changed()

    async def reconcile_services(self, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
        """Make the services named in ``desired`` match it (``None``: must not exist), the others
        untouched. Returns the operations applied and whether those services now match.

        A service given with a delta (:class:`ServiceChanges`) on the very service object this
        dataplane was last reconciled to, and not changed since, costs O(changed destinations);
        any other is diffed whole."""
        deltas = desired.deltas if isinstance(desired, ServiceChanges) else {}
        fast: list[Op] = []
        synced: dict[str, Service] = {}
        rest: dict[str, Service | None] = {}
        for key, want in desired.items():
            delta = deltas.get(key)
            if (
                want is not None
                and delta is not None
                and self._synced.get(key) is delta.base
                and want.same_attributes(delta.base)
            ):
                fast.extend(_dest_ops(self._dests[key], want, delta.dests))
                synced[key] = want
                self.delta_services += 1
            else:
                rest[key] = want
        have = {key: self._service(key) for key in rest if key in self._attrs}
        ops = sorted(fast + diff_services(have, rest), key=lambda op: OP_RANK[op.kind])  # stable
        if ops:
            await self.apply(ops)
        ok = True
        for key, want in synced.items():
            if len(self._dests[key]) == len(want.dests):  # a cheap check of the construction
                self._synced[key] = want
            else:
                ok = False
        for key, want in rest.items():
            if same_service(self._service(key) if key in self._attrs else None, want):
                if want is not None:
                    self._synced[key] = want
            else:
                ok = False
        return ops, ok

    def claim(self, desired: Table) -> None:
        """Every service of this table is the agent's: nothing to record."""

    # -- the drift check -----------------------------------------------------------------------

    def _snapshot(self) -> KernelDump:
        return KernelDump({key: self._service(key) for key in self._attrs})

    async def begin_drift_check(self) -> KernelDump:
        return self._snapshot()

    async def snapshot_kernel(self, desired: Table, since: KernelDump) -> KernelDump:
        """The table held now (read whole: it costs no I/O, so ``since`` is not needed)."""
        return self._snapshot()

    async def compare(self, seen: KernelDump, desired: Table) -> Drift:
        """:func:`lvs_events.agent.dataplane.compare` in a thread (O(table)); every service is owned."""
        return await asyncio.to_thread(compare, seen, desired, frozenset(seen.services))

    async def recheck(self, desired: Table, services: Iterable[Service]) -> Drift:
        named = {s.key for s in services}
        want: dict[str, Service | None] = dict.fromkeys(named)
        want.update((s.key, s) for s in desired.services if s.key in named)
        have = {key: self._service(key) for key in named if key in self._attrs}
        return Drift(tuple(diff_services(have, want)), Table(tuple(have.values())))

    def _apply(self, ops: Sequence[Op]) -> None:
        """``table.apply_ops``, order included, all or nothing (on ``ValueError`` the table is as
        it was): checked first, then applied in place, O(len(ops)) whatever the services' sizes."""
        self._check(ops)
        attrs, dests = self._attrs, self._dests
        for op in ops:
            key = op.service.key
            if op.kind == "add-service":
                attrs[key] = replace(op.service, dests=())
                dests[key] = {}
            elif op.kind == "edit-service":
                attrs[key] = replace(op.service, dests=())
            elif op.kind == "del-service":
                del attrs[key], dests[key]
            else:
                assert op.dest is not None
                if op.kind == "del-dest":
                    del dests[key][op.dest.key]
                else:
                    dests[key][op.dest.key] = op.dest
            self._built.pop(key, None)
            self._synced.pop(key, None)
        self._table = None

    def _check(self, ops: Sequence[Op]) -> None:
        """Raise ``ValueError`` for the first operation of ``ops`` that would not apply (after the
        ones before it), as ``apply_ops`` does; changes nothing."""
        services: dict[str, bool] = {}  # service key -> exists, after the operations so far
        dests: dict[tuple[str, str], bool] = {}  # (service, destination) -> exists, likewise
        emptied: set[str] = set()  # services created by these operations (no destination before)
        for op in ops:
            key = op.service.key
            present = services.get(key, key in self._attrs)
            if op.kind in ("add-service", "edit-service", "del-service"):
                if present == (op.kind == "add-service"):
                    raise ValueError(f"service {key} exists" if present else f"no service {key}")
                if op.kind != "edit-service":
                    services[key] = op.kind == "add-service"
                    emptied.add(key)
                    dests = {k: v for k, v in dests.items() if k[0] != key}
                continue
            if not present or op.dest is None:
                raise ValueError(f"no service {key} for {op}")
            dk = op.dest.key
            at = (key, dk)
            has = dests[at] if at in dests else key not in emptied and dk in self._dests[key]
            if op.kind == "add-dest" and has:
                raise ValueError(f"destination {dk} exists in {key}")
            if op.kind in ("edit-dest", "del-dest") and not has:
                raise ValueError(f"no destination {dk} in {key}")
            dests[at] = op.kind != "del-dest"

    def format(self) -> str:
        """The table as ``ipvsadm -L -n`` prints it."""
        return format_ipvsadm(self.table)

    # -- the files -----------------------------------------------------------------------------

    def _changed(self) -> None:
        if self.dump_dir is None:
            return
        self._dirty = True
        if self._writer is None or self._writer.done():
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_loop(), name="memory-table-files")

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._dirty:
                delay = self._write_after - loop.time()
                if delay > 0 and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._hurry.wait()
                self._dirty = False
                assert self.dump_dir is not None
                cost = 0.0
                try:
                    cost = await asyncio.to_thread(self._write_timed, self.table, self.dump_dir)
                except OSError as e:
                    log.warning("memory_dataplane.write_failed", error=str(e), dir=str(self.dump_dir))
                else:
                    self.files_written += 1
                self._write_after = loop.time() + self.write_cost_factor * cost
        finally:
            self._hurry.clear()

    async def flush(self) -> None:
        """Write the files now if a change is not written yet (and wait for a write under way)."""
        writer = self._writer
        if writer is not None and not writer.done():
            self._hurry.set()
            await asyncio.shield(writer)

    async def close(self) -> None:
        await self.flush()

    @classmethod
    def _write_timed(cls, table: Table, directory: Path) -> float:
        """:meth:`write_files`; returns the CPU time it took (on a busy host its wall time is
        mostly waiting, which must not slow the next write of a small table)."""
        began = time.thread_time()
        cls.write_files(table, directory)
        return time.thread_time() - began

    @staticmethod
    def write_files(table: Table, directory: Path) -> None:
        blob = json.dumps(table.to_json(), sort_keys=True, indent=1).encode()
        atomic_write(directory / "table.json", blob + b"\n")
        atomic_write(directory / "table.txt", format_ipvsadm(table).encode())
