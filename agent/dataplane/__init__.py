"""The dataplane seam: where the IPVS table actually lives.

``memory`` (here) keeps it in process; the kernel dataplane (netlink, pyroute2) comes in its own
issue and implements the same :class:`Dataplane` protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lvs_events.domain.table import Op, Table, diff

__all__ = ["Dataplane", "reconcile"]


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
    actual = await dp.dump()
    ops = diff(actual, desired)
    if not ops:
        return ops, actual
    await dp.apply(ops)
    return ops, await dp.dump()
