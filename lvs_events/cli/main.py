"""``lvs-events``: the operator's command line.

Exit codes: 0 ok; 1 the request was refused or failed; 2 bad usage or input; 3 no coordinator
answered within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import structlog

from lvs_events.cli import views
from lvs_events.cli.verify import add_parser as add_verify_parser
from lvs_events.cli.verify import run_verify
from lvs_events.client.events import new_event
from lvs_events.client.ha import HaStatus, PeerUnavailable, SwitchoverFailed, ha_status, switchover
from lvs_events.client.log import CoordinatorClient, CoordinatorRejected
from lvs_events.domain.config import Config
from lvs_events.domain.config_diff import diff_configs
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied
from lvs_events.domain.filters import EventFilter, InvalidFilter
from lvs_events.domain.ipvsadm_save import format_ipvsadm_save
from lvs_events.domain.render import render
from lvs_events.domain.snapshot import Snapshot
from lvs_events.domain.table import format_ipvsadm
from lvs_events.domain.validate import validate_config
from lvs_events.errors import CoordinatorUnavailable, InvalidEvent, LvsEventsError
from lvs_events.ldirectord import ConfigError, ConfigWarning, format_config, parse_file

DEFAULT_ENDPOINTS = "127.0.0.1:7420"
EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


class UsageError(LvsEventsError):
    """Bad arguments or input from the operator."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvs-events",
        description="Audit, inspect and operate an lvs-events cluster (the log of two LVS directors).",
    )
    p.add_argument(
        "--endpoints",
        default=os.environ.get("LVS_EVENTS_ENDPOINTS", DEFAULT_ENDPOINTS),
        help="coordinator endpoints, comma-separated host:port "
        "(env LVS_EVENTS_ENDPOINTS; default %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a coordinator (default 5)")
    p.add_argument("--cluster", default=os.environ.get("LVS_EVENTS_CLUSTER", "default"), help="cluster name")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "tail",
        help="the audit log: who changed what, when and why",
        description="Print the log. Filters are applied by the coordinator: a filter given twice "
        "means either value, different filters must all match. --vip and --real also show the "
        "ConfigApplied events whose configuration defines that service or server.",
    )
    start = t.add_mutually_exclusive_group()
    start.add_argument("--rev", type=int, default=0, help="start at this log revision")
    start.add_argument(
        "--since",
        help="start at the first event of this time or later (ISO 8601, or a duration back "
        "from now like 10m, 2h, 1d)",
    )
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they come")
    t.add_argument(
        "--vip", action="append", default=[], help="only this virtual service (key, ip:port or IP)"
    )
    t.add_argument("--real", action="append", default=[], help="only this real server (ip:port or IP)")
    t.add_argument("--type", action="append", default=[], help="only this event type (e.g. RealServerHealth)")
    t.add_argument("--node", action="append", default=[], help="only events from or about this node")
    t.add_argument("-o", "--output", choices=["text", "json"], default="text")

    tb = sub.add_parser("table", help="the IPVS table the log renders, now or at a revision")
    tb.add_argument("--at", type=int, default=0, metavar="REV", help="at this log revision (default: now)")
    tb.add_argument(
        "-o",
        "--output",
        choices=["ipvsadm", "json", "ipvsadm-save"],
        default="ipvsadm",
        help="ipvsadm -L -n layout, canonical JSON, or rules for ipvsadm -R (default %(default)s)",
    )

    for name, text in (
        ("drain", "set a real server's weight to 0"),
        ("enable", "clear an operator override"),
    ):
        a = sub.add_parser(name, help=text)
        a.add_argument("virtual", help='the virtual service, e.g. "TCP 203.0.113.10:80"')
        a.add_argument("real", help="the real server, e.g. 192.0.2.11:80")
        a.add_argument("--reason", required=True, help="why (recorded in the log)")
        a.add_argument("--operator", default=_operator(), help="who (default: the login name)")
        if name == "drain":
            a.add_argument("--for", dest="duration", help="expire after this long (e.g. 30m)")

    cf = sub.add_parser("config", help="ldirectord.cf through the log: validate, diff, apply, show")
    csub = cf.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    v = csub.add_parser("validate", help="parse a file as ldirectord would; print what it defines")
    v.add_argument("file")
    v.add_argument("--strict", action="store_true", help="reproduce ldirectord's verdicts exactly")
    d = csub.add_parser("diff", help="what applying FILE would change, against the config in force")
    d.add_argument("file")
    d.add_argument("--strict", action="store_true")
    ap = csub.add_parser("apply", help="validate FILE, then publish it as the config in force")
    ap.add_argument("file")
    ap.add_argument("--reason", required=True, help="why (recorded in the log)")
    ap.add_argument("--operator", default=_operator(), help="who (default: the login name)")
    ap.add_argument("--strict", action="store_true")
    sh = csub.add_parser("show", help="the config in force, written back as ldirectord.cf")
    sh.add_argument("--at", type=int, default=0, metavar="REV", help="as it was at this log revision")

    so = sub.add_parser(
        "switchover", help="planned handover to the standby (ready before the active lets go)"
    )
    so.add_argument("--to", default="", metavar="NODE", help="the node to hand over to (default: the peer)")

    st = sub.add_parser("status", help="nodes, their applied revision, digest and lag")
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")

    _drill_parser(sub)
    add_verify_parser(sub)
    return p


def _drill_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dr = sub.add_parser(
        "drill",
        help="break the pair on purpose (a named scenario) and report the failover",
        description="Run a failover drill and print its report: times to detect, elect, move the "
        "VIP and serve the first client on the new active; failed client connections; whether two "
        "nodes held the VIP; whether both tables agree afterwards. Exit 1 if two nodes held the VIP "
        "or the tables differ. Without --lab only switchover needs no --*-command.",
    )
    dr.add_argument("scenario", choices=DRILL_SCENARIOS)
    dr.add_argument(
        "--lab",
        action="store_true",
        help="on a pair started here in network namespaces (root, ip netns, etcd)",
    )
    dr.add_argument("--runs", type=int, default=1, metavar="N", help="run the scenario N times (default 1)")
    dr.add_argument("-o", "--output", choices=["text", "json"], default="text")
    dr.add_argument("--vip", default="", metavar="HOST:PORT", help="the service the client probe connects to")
    for key, what in DRILL_COMMANDS.items():
        dr.add_argument(
            f"--{key}-command", default="", metavar="CMD", help=f"shell command: {what} ({{node}}: the node)"
        )


# The drill scenarios by name, here so that parsing the command line imports no drill code
# (lvs_events.drills imports the agent's VIP code); a test keeps it equal to drills.SCENARIOS.
DRILL_SCENARIOS = ("switchover", "kill-active", "partition-active", "etcd-member-down")

DRILL_COMMANDS = {
    "kill": "SIGKILL the agent of a node",
    "start": "start a node's agent again",
    "isolate": "cut a node off from etcd and its peer",
    "heal": "undo --isolate-command",
    "etcd-stop": "stop the etcd member on a node",
    "etcd-start": "start it again",
}


def _operator() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError) as e:
        raise UsageError(f"bad duration {text!r}: expected a number with s, m, h or d") from e


def parse_since(text: str, now: float) -> float:
    """An ISO 8601 time (UTC if no zone) or a duration back from now."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return now - parse_duration(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _full_key(text: str) -> str:
    """Accept ``203.0.113.10:80`` for ``TCP 203.0.113.10:80``."""
    if text.split(" ", 1)[0] in ("TCP", "UDP", "FWM"):
        return text
    return f"TCP {text}"


async def _tail(client: CoordinatorClient, args: argparse.Namespace) -> int:
    since = parse_since(args.since, time.time()) if args.since else 0.0
    wanted = EventFilter(types=args.type, nodes=args.node, virtuals=args.vip, reals=args.real)
    out = sys.stdout
    async with client.subscribe(args.rev, follow=args.follow, filters=wanted, since=since) as sub:
        async for item in sub:
            if isinstance(item, Snapshot):
                if args.output == "text":
                    out.write(f"# events up to revision {item.revision} were compacted into a snapshot\n")
                continue
            out.write((views.event_json(item) if args.output == "json" else views.event_line(item)) + "\n")
            out.flush()
    return 0


async def _table(client: CoordinatorClient, args: argparse.Namespace) -> int:
    view = await client.get_state(args.at)
    if args.output == "json":
        doc = {"revision": view.revision, "digest": view.table_digest, "services": view.table.to_json()}
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    elif args.output == "ipvsadm-save":
        # exactly the rules (no comment line): the output is fed to ``ipvsadm -R``
        sys.stdout.write(format_ipvsadm_save(render(view.state) if view.state.config else view.table))
    else:
        # render from the state for the config's own order (the digest is order-independent)
        sys.stdout.write(format_ipvsadm(render(view.state) if view.state.config else view.table))
        sys.stdout.write(f"# revision {view.revision}  digest {view.table_digest}\n")
    return 0


async def _admin(client: CoordinatorClient, args: argparse.Namespace) -> int:
    expires = time.time() + parse_duration(args.duration) if getattr(args, "duration", None) else 0.0
    action = AdminAction.DRAIN if args.command == "drain" else AdminAction.ENABLE
    event = new_event(
        AdminOverride(_full_key(args.virtual), args.real, action, 0, expires),
        cluster=args.cluster,
        origin=_origin(),
        actor=args.operator,
        reason=args.reason,
    )
    (ack,) = await client.publish([event])
    if not ack.ok:
        raise CoordinatorRejected(ack.error_code, ack.error)
    sys.stdout.write(f"{views.summary(event)}: recorded at revision {ack.revision}\n")
    return 0


def _origin() -> str:
    name = socket.gethostname().split(".")[0]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) or "cli"


async def _switchover(client: CoordinatorClient, args: argparse.Namespace) -> int:
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    try:
        r = await switchover(endpoints, args.to, within=max(args.timeout, 1.0))
    except (SwitchoverFailed, PeerUnavailable) as e:
        raise CoordinatorRejected("FAILED_PRECONDITION", str(e)) from e
    sys.stdout.write(
        f"switchover: {r.from_node} (term {r.old_term}) -> {r.to_node} (term {r.new_term}) "
        f"in {r.seconds * 1000:.0f} ms\n"
    )
    return 0


def _ha_doc(ha: HaStatus | None) -> dict[str, object]:
    if ha is None:
        return {"error": "leadership service unavailable"}
    return {
        "active": ha.leader.node or None,
        "term": ha.leader.term,
        "vips": list(ha.vips),
        "reason": ha.reason,
        "error": ha.error,
        "nodes": {
            n.node: {
                "role": n.role,
                "term": n.term,
                "revision": n.revision,
                "digest": n.digest,
                "seen_ago": n.seen_ago,
                "holds_vips": n.vips,
            }
            for n in ha.nodes
        },
    }


def _ha_text(ha: HaStatus | None) -> str:
    if ha is None:
        return "leadership: unavailable (no coordinator answered the election service)\n"
    if not ha.leader.present:
        return f"leadership: no active director ({ha.error or 'no leader'})\n"
    lines = [f"leadership: {ha.leader.node} is active, term {ha.leader.term} (etcd)"]
    if ha.error:
        lines.append(f"  the active agent could not be asked: {ha.error}")
    if ha.nodes:
        lines.append(f"  {'NODE':<12} {'ROLE':<10} {'TERM':>5} {'REVISION':>9}  {'VIPS':<5} SEEN")
        for n in ha.nodes:
            seen = "self" if n.node == ha.leader.node else f"{n.seen_ago:.2f}s ago"
            held = "yes" if n.vips else "no"
            lines.append(f"  {n.node:<12} {n.role:<10} {n.term:>5} {n.revision:>9}  {held:<5} {seen}")
    if ha.vips:
        lines.append(f"  VIPs: {', '.join(ha.vips)}")
    return "\n".join(lines) + "\n"


async def _ha(args: argparse.Namespace) -> HaStatus | None:
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    try:
        return await ha_status(endpoints, within=args.timeout)
    except LvsEventsError:
        return None


async def _status(client: CoordinatorClient, args: argparse.Namespace) -> int:
    view = await client.get_state(0)
    ha = await _ha(args)
    if args.output == "json":
        doc = {
            "cluster": view.state.cluster,
            "head_revision": view.head_revision,
            "digest": view.table_digest,
            "active": view.state.leader,
            "term": view.state.term,
            "nodes": {
                n: {
                    "applied_revision": s.applied_revision,
                    "digest": s.digest,
                    "lag": 0
                    if s.digest == view.table_digest
                    else max(0, view.head_revision - s.applied_revision),
                    "in_sync": s.digest == view.table_digest,
                }
                for n, s in sorted(view.state.nodes.items())
            },
            "leadership": _ha_doc(ha),
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    elif args.output == "ipvsadm-save":
        # exactly the rules (no comment line): the output is fed to ``ipvsadm -R``
        sys.stdout.write(format_ipvsadm_save(render(view.state) if view.state.config else view.table))
    else:
        sys.stdout.write(views.status_text(view.state, view.head_revision, view.table_digest))
        sys.stdout.write("\n" + _ha_text(ha))
    return 0


async def _load(path: str, strict: bool) -> tuple[Config, str, list[ConfigWarning]]:
    """Parse off the event loop (file I/O and name resolution block)."""

    def work() -> tuple[Config, str, list[ConfigWarning]]:
        warnings: list[ConfigWarning] = []
        cfg = parse_file(path, strict=strict, warnings=warnings)
        try:
            validate_config(cfg)  # what the log would refuse, e.g. a scheduler the kernel lacks
        except InvalidEvent as e:
            raise UsageError(f"{path}: ldirectord would accept this file, but the log refuses it: {e}") from e
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return cfg, digest, warnings

    return await asyncio.to_thread(work)


def _print_warnings(warnings: list[ConfigWarning]) -> None:
    for w in warnings:
        sys.stderr.write(f"{w}\n")


async def _config(client: CoordinatorClient, args: argparse.Namespace) -> int:
    action = args.config_command
    if action == "show":
        view = await client.get_state(args.at)
        if view.state.config is None:
            raise CoordinatorRejected("NOT_FOUND", f"no config in force at revision {view.revision}")
        sys.stdout.write(
            f"# config in force at revision {view.revision} (applied at {view.state.config_revision})\n"
        )
        sys.stdout.write(format_config(view.state.config))
        return 0
    cfg, digest, warnings = await _load(args.file, args.strict)
    _print_warnings(warnings)
    if action == "validate":
        reals = sum(len(v.reals) for v in cfg.virtuals)
        sys.stdout.write(f"{args.file}: OK, {len(cfg.virtuals)} virtual services, {reals} real servers\n")
        return 0
    view = await client.get_state(0)
    changes = diff_configs(view.state.config, cfg)
    if action == "diff":
        sys.stdout.write("\n".join(changes) + "\n" if changes else "no changes\n")
        return 0
    if not changes and view.state.config is not None:
        sys.stdout.write(f"no changes: {args.file} is the config in force; nothing published\n")
        return 0
    event = new_event(
        ConfigApplied(dataclasses.replace(cfg, source=Path(args.file).name), digest),
        cluster=args.cluster,
        origin=_origin(),
        actor=args.operator,
        reason=args.reason,
    )
    (ack,) = await client.publish([event])
    if not ack.ok:
        raise CoordinatorRejected(ack.error_code, ack.error)
    sys.stdout.write("\n".join(changes) + "\n")
    sys.stdout.write(f"applied {args.file} at revision {ack.revision}\n")
    return 0


async def _drill(client: CoordinatorClient, args: argparse.Namespace) -> int:
    # Imported here: the drill tooling (lab, scenarios, running pair) is not needed by any other
    # command, and importing it would pull the agent's code into every CLI start.
    from lvs_events.cli.drill import run_drill_command  # noqa: PLC0415

    return await run_drill_command(args)


COMMANDS = {
    "tail": _tail,
    "table": _table,
    "drain": _admin,
    "enable": _admin,
    "status": _status,
    "config": _config,
    "switchover": _switchover,
    "drill": _drill,
    "verify": run_verify,
}


async def run(args: argparse.Namespace) -> int:
    async with CoordinatorClient(args.endpoints, timeout=args.timeout) as client:
        return await COMMANDS[args.command](client, args)


def _fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"lvs-events: {message}\n")
    sys.exit(code)


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # The CLI's own output is the answer; the client's retries are noise unless something is wrong.
    # The factory looks sys.stderr up at each logger's creation (not once, here): a caller that
    # swaps stderr (a test harness, an embedding program) never leaves loggers on a closed file.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except CoordinatorUnavailable as e:
        _fail(EXIT_UNAVAILABLE, str(e).splitlines()[0])
    except (UsageError, InvalidEvent, InvalidFilter, ConfigError) as e:
        _fail(EXIT_USAGE, str(e))
    except LvsEventsError as e:
        _fail(EXIT_FAILED, str(e).splitlines()[0])


if __name__ == "__main__":
    main()
