"""``lvs-events verify``: check the log's hash chain (:mod:`lvs_events.domain.chain`).

Reads the log through a coordinator from revision 1 (the chain starts at the cluster's
genesis) or, with ``--from-snapshot`` and a trimmed log, from the newest snapshot (the chain
starts at the head the snapshot carries), and checks every link. Exit 0: intact; 1: broken, the
first broken revision named (2 and 3 as for every command).
"""

from __future__ import annotations

import argparse
import sys

from lvs_events.client.log import CoordinatorClient, CoordinatorRejected
from lvs_events.domain.chain import ChainBreak, ChainFollower, genesis
from lvs_events.domain.snapshot import Snapshot
from lvs_events.errors import LvsEventsError

EXIT_INTACT, EXIT_BROKEN = 0, 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser("verify", help="check the log's hash chain: was an entry changed behind our back?")
    v.add_argument(
        "--from-snapshot",
        action="store_true",
        help="when the log is trimmed, start from the newest snapshot's chain head (else: refuse)",
    )


async def run_verify(client: CoordinatorClient, args: argparse.Namespace) -> int:
    breaks: list[ChainBreak] = []
    follower = ChainFollower(genesis(args.cluster), on_break=breaks.append)
    checked = 0
    start = 0
    try:
        async with client.subscribe(
            1, follow=False, snapshot_if_compacted=args.from_snapshot, chain=follower
        ) as sub:
            async for item in sub:
                if isinstance(item, Snapshot):
                    start = item.revision
                    sys.stdout.write(f"from the snapshot at revision {item.revision}\n")
                    continue
                checked += 1
                if breaks:
                    break
    except CoordinatorRejected as e:
        if e.code != "OUT_OF_RANGE":
            raise
        # not bad input (exit 2): the log cannot be verified from its start, which is exit 1
        raise LvsEventsError(f"{e}; the log is trimmed: verify --from-snapshot") from e
    if breaks:
        sys.stdout.write(f"chain BROKEN at revision {breaks[0].revision}: {breaks[0].describe()}\n")
        return EXIT_BROKEN
    last = follower.revision
    sys.stdout.write(f"chain intact: revisions {start + 1}..{last} ({checked} events)\n")
    return EXIT_INTACT
