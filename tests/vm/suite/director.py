"""One "director" inside the VM: read a table (canonical JSON) on stdin, reconcile this network
namespace's IPVS to it with :class:`IpvsDataplane`, print ``{"digest": ..., "ops": n}``.

Run as ``ip netns exec <ns> python3 director.py < table.json`` by the kernel suite.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agent.dataplane.ipvs import IpvsDataplane
from lvs_events.domain.table import table_from_json


async def main() -> None:
    desired = table_from_json(json.loads(sys.stdin.read()))
    async with IpvsDataplane() as dp:
        ops, _ = await dp.reconcile(desired)
        kernel = await dp.dump_kernel()
    print(json.dumps({"digest": kernel.digest(), "ops": len(ops)}))


if __name__ == "__main__":
    asyncio.run(main())
