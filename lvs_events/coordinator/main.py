"""``lvs-coordinator``: run one coordinator (``python -m lvs_events.coordinator.main`` works too).

SIGTERM / SIGINT: health goes NOT_SERVING, Publish streams stop taking events, events already
taken are appended and acknowledged, then the server stops, all within ``--grace`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from lvs_events import logs
from lvs_events.coordinator.server import CoordinatorSettings, install_signal_handlers, serve_coordinator
from lvs_events.coordinator.snapshots import (
    DEFAULT_ETCD_HISTORY,
    DEFAULT_RETENTION,
    DEFAULT_SNAPSHOT_EVERY,
    DEFAULT_SNAPSHOT_INTERVAL,
)
from lvs_events.errors import LvsEventsError
from lvs_events.etcd.txn import MAX_TXN_OPS

log = structlog.get_logger("coordinator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lvs-coordinator", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--listen", default="127.0.0.1:7420", help="host:port to serve gRPC on (default %(default)s)"
    )
    p.add_argument(
        "--etcd-endpoints",
        default="127.0.0.1:2379",
        help="comma-separated etcd host:port list; the client fails over between them (default %(default)s)",
    )
    p.add_argument(
        "--cluster", default="default", help="cluster name: the etcd prefix /lvs-events/<cluster>/"
    )
    p.add_argument(
        "--snapshot-every", type=int, default=DEFAULT_SNAPSHOT_EVERY, help="events between snapshots"
    )
    p.add_argument(
        "--snapshot-interval",
        type=float,
        default=DEFAULT_SNAPSHOT_INTERVAL,
        help="seconds between snapshots when fewer events arrive",
    )
    p.add_argument(
        "--retention",
        type=int,
        default=DEFAULT_RETENTION,
        help="events kept behind the newest snapshot; older ones are deleted",
    )
    p.add_argument(
        "--etcd-history",
        type=int,
        default=DEFAULT_ETCD_HISTORY,
        help="after each snapshot, compact etcd's version history to this many etcd revisions behind "
        "the current one, so that its database stops growing; 0: never (an etcd shared with other "
        "programs, or compacted by its own --auto-compaction-* flags) (default %(default)s)",
    )
    p.add_argument("--etcd-timeout", type=float, default=5.0, help="deadline of every etcd call, seconds")
    p.add_argument(
        "--etcd-max-txn-ops",
        type=int,
        default=MAX_TXN_OPS,
        help="etcd's --max-txn-ops; a larger value there (and here) allows larger append batches "
        "(default %(default)s, etcd's own default)",
    )
    p.add_argument("--grace", type=float, default=10.0, help="shutdown grace period, seconds")
    p.add_argument("--log-format", choices=logs.FORMATS, default="auto")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> CoordinatorSettings:
    endpoints = tuple(e.strip() for e in args.etcd_endpoints.split(",") if e.strip())
    if not endpoints:
        raise SystemExit("lvs-coordinator: --etcd-endpoints is empty")
    return CoordinatorSettings(
        etcd_endpoints=endpoints,
        cluster=args.cluster,
        listen=args.listen,
        snapshot_every=args.snapshot_every,
        snapshot_interval=args.snapshot_interval,
        retention=args.retention,
        etcd_history=args.etcd_history,
        etcd_timeout=args.etcd_timeout,
        etcd_max_txn_ops=args.etcd_max_txn_ops,
        grace=args.grace,
    )


async def run(settings: CoordinatorSettings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop.set)
    async with serve_coordinator(settings) as coordinator:
        # one machine-readable line for supervisors and tests that start us with port 0
        log.info("ready", address=coordinator.address, port=coordinator.port)
        stopping = asyncio.create_task(stop.wait())
        waiting: set[asyncio.Future[Any]] = {stopping}
        if coordinator.background is not None:
            waiting.add(coordinator.background)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if coordinator.background is not None and coordinator.background.done():
            log.error("background task failed; stopping")
            await coordinator.drain()
            raise SystemExit(1)
        log.info("signal received; draining")
        await coordinator.drain()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        asyncio.run(run(settings_from(args)))
    except LvsEventsError as e:
        log.error("coordinator failed", error=str(e))  # noqa: TRY400 -- an expected failure: one line, no trace
        return 1
    except OSError as e:
        print(f"lvs-coordinator: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
