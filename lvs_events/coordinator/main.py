"""``lvs-coordinator``: run one coordinator (``python -m lvs_events.coordinator.main`` works too).

SIGTERM / SIGINT: health goes NOT_SERVING, Publish streams stop taking events, events already
taken are appended and acknowledged, then the server stops, all within ``--grace`` seconds.

TLS: ``--tls-ca/--tls-cert/--tls-key`` (or ``$LVS_EVENTS_CA`` ..., or ``/etc/default/lvs-events``)
for the gRPC listener, which then requires client certificates; ``--etcd-ca/--etcd-cert/
--etcd-key`` and ``--etcd-user`` (password from ``--etcd-password-file`` or
``$LVS_EVENTS_ETCD_PASSWORD``) for etcd. See docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from lvs_events import logs
from lvs_events.coordinator.server import (
    ENV_ETCD_PASSWORD,
    CoordinatorSettings,
    access_from,
    install_signal_handlers,
    serve_coordinator,
)
from lvs_events.coordinator.snapshots import (
    DEFAULT_ETCD_HISTORY,
    DEFAULT_RETENTION,
    DEFAULT_SNAPSHOT_EVERY,
    DEFAULT_SNAPSHOT_INTERVAL,
)
from lvs_events.coordinator.trust import (
    DEFAULT_BURST_BYTES,
    DEFAULT_BURST_EVENTS,
    DEFAULT_HIGH_WATER,
    DEFAULT_MAX_SKEW,
    DEFAULT_QUOTA_BYTES,
    DEFAULT_RATE_BYTES,
    DEFAULT_RATE_EVENTS,
    Limits,
)
from lvs_events.errors import LvsEventsError
from lvs_events.etcd.txn import MAX_TXN_OPS
from lvs_events.security import tls

log = structlog.get_logger("coordinator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lvs-coordinator",
        description=__doc__.splitlines()[0] if __doc__ else None,
        # no abbreviations: "--etcd-password SECRET" must be an error, not a file named SECRET
        allow_abbrev=False,
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
    tls.add_arguments(p, server=True)
    e = p.add_argument_group("etcd access (default: $LVS_EVENTS_ETCD_CA, _CERT, _KEY, _USER)")
    e.add_argument("--etcd-ca", metavar="PEM", help="CA of etcd's certificates: TLS to etcd")
    e.add_argument("--etcd-cert", metavar="PEM", help="client certificate for etcd (--client-cert-auth)")
    e.add_argument("--etcd-key", metavar="PEM", help="its private key")
    e.add_argument(
        "--etcd-server-name",
        default="",
        help="name etcd's certificates are checked against, when not the endpoints' hosts",
    )
    e.add_argument("--etcd-user", help="etcd user (etcd auth); its password from the next option")
    e.add_argument(
        "--etcd-password-file",
        metavar="FILE",
        help=f"file whose first line is the etcd user's password (default: ${ENV_ETCD_PASSWORD})",
    )
    e.add_argument(
        "--etcd-quota-bytes",
        type=int,
        default=0,
        help="etcd's --quota-backend-bytes; 0: as etcd reports it, else etcd's default "
        f"({DEFAULT_QUOTA_BYTES})",
    )
    e.add_argument(
        "--etcd-quota-high-water",
        type=float,
        default=DEFAULT_HIGH_WATER,
        help="share of the quota above which only directors' events are appended (default %(default)s)",
    )
    t = p.add_argument_group("publishers")
    t.add_argument(
        "--rate-events",
        type=float,
        default=DEFAULT_RATE_EVENTS,
        help="events per second per principal; 0: no limit (default %(default)s)",
    )
    t.add_argument("--burst-events", type=float, default=DEFAULT_BURST_EVENTS, help="(default %(default)s)")
    t.add_argument(
        "--rate-bytes",
        type=float,
        default=DEFAULT_RATE_BYTES,
        help="event bytes per second per principal; 0: no limit (default %(default)s)",
    )
    t.add_argument("--burst-bytes", type=float, default=DEFAULT_BURST_BYTES, help="(default %(default)s)")
    t.add_argument(
        "--max-clock-skew",
        type=float,
        default=DEFAULT_MAX_SKEW,
        help="seconds a publisher's wall_time may differ from this host's clock before the "
        "coordinator's replaces it (default %(default)s)",
    )
    p.add_argument("--log-format", choices=logs.FORMATS, default="auto")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> CoordinatorSettings:
    endpoints = tuple(e.strip() for e in args.etcd_endpoints.split(",") if e.strip())
    if not endpoints:
        raise SystemExit("lvs-coordinator: --etcd-endpoints is empty")
    return CoordinatorSettings(
        tls=tls.files_from_args(args),
        insecure=args.insecure,
        etcd_access=access_from(
            ca=args.etcd_ca,
            cert=args.etcd_cert,
            key=args.etcd_key,
            user=args.etcd_user,
            password_file=args.etcd_password_file,
            server_name=args.etcd_server_name,
        ),
        limits=Limits(args.rate_events, args.burst_events, args.rate_bytes, args.burst_bytes),
        max_clock_skew=args.max_clock_skew,
        etcd_quota_bytes=args.etcd_quota_bytes,
        quota_high_water=args.etcd_quota_high_water,
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
