"""Fuzz every RPC of a live coordinator and a live agent's Peer service; print a JSON report.

    python bench/fuzz_rpc.py --count 100000

The stack (etcd, one coordinator, one agent with its Peer service) runs as real processes on
loopback, as in ``tests/fuzz/test_fuzz_rpc.py`` (which sends a few thousand); the messages are
hypothesis-generated from the protobuf descriptors and mutated valid requests
(``tests/fuzz/rpcfuzz.py``), drawn in chunks so memory stays flat. The report gives the status
codes seen, the findings (an ``UNKNOWN``/``INTERNAL`` status, a process that died, a Publish
stream that answered fewer events than it was sent, a stored event that fails validation), and
the coordinator's and agent's resident memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvs_events import wire
from lvs_events.domain.validate import validate_event
from tests.fuzz.rpcfuzz import Tally, live_stack, read_whole_log, rss_kib, run_cases
from tests.fuzz.test_fuzz_rpc import draw_cases
from tests.support.etcd import find_etcd


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=100_000, help="messages to send (default %(default)s)")
    p.add_argument("--chunk", type=int, default=2_000, help="messages drawn at a time")
    args = p.parse_args()
    etcd = find_etcd()
    if etcd is None:
        print(json.dumps({"error": "etcd binary not found (apt-get install etcd-server)"}))
        return 2
    started = time.monotonic()
    tally = Tally()
    with live_stack(etcd) as stack:
        rss0 = {"coordinator": rss_kib(stack.coordinator.pid), "agent": rss_kib(stack.agent.pid)}
        sent = 0
        while sent < args.count:
            n = min(args.chunk, args.count - sent)
            asyncio.run(run_cases(stack, draw_cases(n), tally))
            sent += n
            if not all(stack.alive().values()):
                break
        alive = stack.alive()
        rss1 = {
            "coordinator": rss_kib(stack.coordinator.pid) if alive["coordinator"] else 0,
            "agent": rss_kib(stack.agent.pid) if alive["agent"] else 0,
        }
        events = asyncio.run(read_whole_log(stack.coordinator_address)) if alive["coordinator"] else []
    invalid: list[str] = []
    for ev in events:
        try:
            validate_event(wire.event_from_pb(ev))
        except Exception as e:  # any failure of a stored event counts
            invalid.append(f"revision {ev.revision} {ev.WhichOneof('payload')}: {e}"[:300])
    crashes = sum(1 for f in tally.findings if " UNKNOWN " in f or " INTERNAL " in f)
    report = {
        "bench": "fuzz_rpc",
        "sent": tally.sent,
        "seconds": round(time.monotonic() - started, 1),
        "codes": dict(tally.codes.most_common()),
        "crashes": crashes + sum(1 for ok in alive.values() if not ok),
        "findings": len(tally.findings),
        "findings_sample": tally.findings[:10],
        "processes_alive": alive,
        "log_events": len(events),
        "log_events_invalid": len(invalid),
        "log_events_invalid_sample": invalid[:5],
        "rss_kib_before": rss0,
        "rss_kib_after": rss1,
    }
    print(json.dumps(report, indent=2))
    return 0 if not tally.findings and not invalid and all(alive.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
