"""One "director" inside the VM.

``director.py < table.json``: read a table (canonical JSON) on stdin, reconcile this network
namespace's IPVS to it with :class:`IpvsDataplane`, print ``{"digest": ..., "ops": n}``.

``director.py --dump``: print ``{"digest": ..., "services": n, "dests": n}`` of this namespace's
whole IPVS table as the kernel holds it (the failover drill compares both directors' kernels).

Run as ``ip netns exec <ns> python3 director.py ...`` by the kernel suite and the failover drill.
"""

from __future__ import annotations

import asyncio
import json
import sys

from lvs_events.agent.dataplane.ipvs import IpvsDataplane
from lvs_events.domain.table import table_from_json


async def main() -> None:
    if sys.argv[1:] == ["--dump"]:
        async with IpvsDataplane() as dp:
            kernel = await dp.foreign()  # it owns nothing: every service is "foreign" to it
        dests = sum(len(s.dests) for s in kernel.services)
        print(json.dumps({"digest": kernel.digest(), "services": len(kernel.services), "dests": dests}))
        return
    desired = table_from_json(json.loads(sys.stdin.read()))
    async with IpvsDataplane() as dp:
        ops, _ = await dp.reconcile(desired)
        kernel = await dp.dump_kernel()
    print(json.dumps({"digest": kernel.digest(), "ops": len(ops)}))


if __name__ == "__main__":
    asyncio.run(main())
