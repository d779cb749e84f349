"""The dataplane seam: where the IPVS table actually lives.

``memory`` (here) keeps it in process; the kernel dataplane (netlink, pyroute2) comes in its own
issue and implements the same :class:`Dataplane` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from lvs_events.domain.table import Op, Service, Table, diff, diff_services, same_service

__all__ = ["Dataplane", "reconcile", "reconcile_changed"]


@runtime_checkable
class Dataplane(Protocol):
    async def dump(self) -> Table:
        """The table as it is now."""
        ...

    async def apply(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order; raise ``lvs_events.errors.DataplaneError`` on refusal."""
        ...


async def reconcile(dp: Dataplane, desired: Table) -> tuple[list[Op], Table]:
    """Make ``dp`` hold ``desired`` with the minimal operations; idempotent.

    Returns the operations applied (empty when it already matched) and the table dumped
    afterwards, so the caller can verify it.
    """
    claim = getattr(dp, "claim", None)  # a dataplane with ownership (IPVS): these services are ours
    if claim is not None:
        claim(desired)
    actual = await dp.dump()
    ops = diff(actual, desired)
    if not ops:
        return ops, actual
    await dp.apply(ops)
    return ops, await dp.dump()


async def reconcile_changed(dp: Dataplane, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
    """Make only the services named in ``desired`` match it (``None``: must not exist); the
    per-event path when the rest of the table is known to be in place already.

    Returns the operations applied and whether those services now match. A dataplane with its
    own ``reconcile_services`` (IPVS: O(changed) on its shadow) does the work; otherwise the
    generic way, a dump and a diff of the named services.
    """
    own = getattr(dp, "reconcile_services", None)
    if own is not None:
        ops, ok = await own(desired)
        return list(ops), bool(ok)
    have = {s.key: s for s in (await dp.dump()).services}
    ops = diff_services(have, desired)
    if ops:
        await dp.apply(ops)
        have = {s.key: s for s in (await dp.dump()).services}
    return ops, all(same_service(have.get(k), s) for k, s in desired.items())
