"""The dataplane seam: where the IPVS table actually lives.

:class:`Dataplane` is everything the agent asks of it, declared in one place (as Seesaw's NCC
interface or Kubernetes' ``ipvs.Interface``): read and change the table, claim the services of
the configuration, reconcile a few named services (the per-event path), the four steps of the
periodic drift check, and close. Two implementations:

* :class:`lvs_events.agent.dataplane.memory.MemoryDataplane`: the table as values in the agent's
  process (tests, the demo, ``--dataplane memory``). Every service in it is the agent's, so
  :meth:`Dataplane.claim` does nothing, and its drift steps read the table it holds (only a test
  playing ``ipvsadm`` on it makes them find a difference);
* :class:`lvs_events.agent.dataplane.ipvs.IpvsDataplane`: the kernel's table over netlink
  (``docs/kernel-dataplane.md``).

The drift check's values (:class:`KernelDump`, :class:`Drift`) and its pure comparison
(:func:`compare`) live here too, so both implementations return the same types; the check
itself is :mod:`lvs_events.agent.drift`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lvs_events.domain.ipvsadm_save import sorted_like_ipvsadm
from lvs_events.domain.table import Op, Service, Table, diff, same_service

__all__ = ["Dataplane", "Drift", "KernelDump", "compare", "reconcile", "reconcile_changed"]


@dataclass(frozen=True, slots=True)
class KernelDump:
    """The dataplane's whole table as the drift check read it (the kernel's, for IPVS): every
    service, owned or not, with its destinations, by key; ``unread``: listed, but its
    destinations could not be read (gone meanwhile), ``listed``: those as listed."""

    services: Mapping[str, Service]
    unread: frozenset[str] = frozenset()
    listed: Mapping[str, Service] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Drift:
    """What the dataplane holds that the desired table does not (owned services only)."""

    ops: tuple[Op, ...]  # the operations that repair it, in apply order
    actual: Table  # the owned part of the table as read
    foreign: tuple[str, ...] = ()  # keys of services this agent does not own (left alone)

    @property
    def clean(self) -> bool:
        return not self.ops

    def lines(self) -> list[str]:
        """One line per repair, e.g. ``edit-dest TCP 203.0.113.10:80 -> 192.0.2.11:80 w=10``."""
        return [str(op) for op in self.ops]


class Dataplane(Protocol):
    """Where the agent's table lives. Every method may raise
    :class:`lvs_events.errors.DataplaneError`; none blocks the event loop.

    The drift check calls, in this order: :meth:`begin_drift_check` (no lock of the agent's
    held), :meth:`snapshot_kernel` (under the agent's apply lock), :meth:`compare` (no lock),
    and for a difference :meth:`recheck` (under the lock again) before it applies the repair.
    """

    async def dump(self) -> Table:
        """The table as it is now (the services this agent owns)."""
        ...

    async def apply(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order; raise ``lvs_events.errors.DataplaneError`` on refusal."""
        ...

    def claim(self, desired: Table) -> None:
        """Own every service of ``desired``: the configuration says they are ours (a dataplane
        whose every service is the agent's has nothing to record)."""
        ...

    async def reconcile_services(self, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
        """Make the services named in ``desired`` match it (``None``: must not exist), the rest
        untouched (the per-event path); claims them. Returns the operations applied and whether
        those services now match."""
        ...

    async def begin_drift_check(self) -> KernelDump:
        """Start a drift check: from now on remember the services applies touch, and read the
        whole table without holding up applies."""
        ...

    async def snapshot_kernel(self, desired: Table, since: KernelDump) -> KernelDump:
        """The table as it is now: ``since`` (from :meth:`begin_drift_check`) with the services
        applies touched meanwhile read again. The caller holds its apply lock (``desired`` is
        the table it applied last) and claims ``desired`` through this call."""
        ...

    async def compare(self, seen: KernelDump, desired: Table) -> Drift:
        """:func:`compare` of a :meth:`snapshot_kernel` with ``desired``, off the event loop;
        the caller holds no lock (applies go on meanwhile)."""
        ...

    async def recheck(self, desired: Table, services: Iterable[Service]) -> Drift:
        """The drift of these services alone (by key), read now: :meth:`compare` found them
        different in a snapshot that applies may have overtaken. The caller holds its apply
        lock. ``foreign`` is left empty."""
        ...

    async def close(self) -> None:
        """Release what the dataplane holds (sockets, threads, pending writes); the table stays."""
        ...


def compare(seen: KernelDump, desired: Table, owned: Iterable[str]) -> Drift:
    """What a snapshot of the table holds that ``desired`` does not, for the ``owned`` services
    (the others are listed as foreign). Pure, O(table): for a thread."""
    owned = owned if isinstance(owned, set | frozenset) else set(owned)
    mine = {k: s for k, s in seen.services.items() if k in owned}
    theirs = [s for k, s in seen.services.items() if k not in owned]
    foreign = tuple(s.key for s in sorted_like_ipvsadm(theirs)) if theirs else ()
    want = {s.key: s for s in desired.services}
    # The common case, nothing changed: one comparison per service, no sort, no diff.
    if len(want) == len(mine) and all(same_service(mine.get(k), s) for k, s in want.items()):
        return Drift((), Table(tuple(mine.values())), foreign)
    actual = Table(tuple(sorted_like_ipvsadm(mine.values())))
    return Drift(tuple(diff(actual, desired)), actual, foreign)


async def reconcile(dp: Dataplane, desired: Table) -> tuple[list[Op], Table]:
    """Make ``dp`` hold ``desired`` with the minimal operations; idempotent. Claims ``desired``'s
    services first (an IPVS dataplane then manages them, and only them).

    Returns the operations applied (empty when it already matched) and the table dumped
    afterwards, so the caller can verify it.
    """
    dp.claim(desired)
    actual = await dp.dump()
    ops = diff(actual, desired)
    if not ops:
        return ops, actual
    await dp.apply(ops)
    return ops, await dp.dump()


async def reconcile_changed(dp: Dataplane, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
    """Make only the services named in ``desired`` match it (``None``: must not exist); the
    per-event path when the rest of the table is known to be in place already.

    Returns the operations applied and whether those services now match
    (:meth:`Dataplane.reconcile_services`: each dataplane does it in O(changed) on what it holds).
    """
    return await dp.reconcile_services(desired)
