"""The in-memory dataplane: a :class:`Table` value, changed with ``apply_ops``.

After each apply it writes itself, atomically, to ``<dir>/table.txt`` (the ``ipvsadm -L -n``
layout) and ``<dir>/table.json`` (canonical JSON), so tests, the CLI and the demo can show each
agent's table. At start it loads ``table.json`` if present, the way a kernel table outlives a
restart of the agent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.persist import atomic_write
from lvs_events.domain.table import Op, Table, apply_ops, format_ipvsadm, table_from_json
from lvs_events.errors import DataplaneError

__all__ = ["MemoryDataplane"]


class MemoryDataplane:
    def __init__(self, dump_dir: Path | None = None, *, load_existing: bool = True) -> None:
        self.dump_dir = dump_dir
        self.table = Table()
        self.applied_ops = 0
        if dump_dir is not None and load_existing:
            path = dump_dir / "table.json"
            if path.exists():
                try:
                    self.table = table_from_json(json.loads(path.read_bytes()))
                except (ValueError, TypeError, KeyError):
                    self.table = Table()  # unreadable: start empty, the reconcile fills it

    async def dump(self) -> Table:
        return self.table

    async def apply(self, ops: list[Op]) -> None:
        try:
            table = apply_ops(self.table, ops)
        except ValueError as e:
            raise DataplaneError(f"memory dataplane refused an operation: {e}") from e
        self.table = table
        self.applied_ops += len(ops)
        if self.dump_dir is not None:
            await asyncio.to_thread(self.write_files, table, self.dump_dir)

    def format(self) -> str:
        """The table as ``ipvsadm -L -n`` prints it."""
        return format_ipvsadm(self.table)

    @staticmethod
    def write_files(table: Table, directory: Path) -> None:
        blob = json.dumps(table.to_json(), sort_keys=True, indent=1).encode()
        atomic_write(directory / "table.json", blob + b"\n")
        atomic_write(directory / "table.txt", format_ipvsadm(table).encode())
