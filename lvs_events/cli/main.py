"""``lvs-events``: the operator's command line.

Exit codes (the same for every command; ``--help`` and the README list them):

* 0: done (for ``config diff``: no difference);
* 1: the request was refused or failed (for ``config diff``: the files differ, like diff(1));
* 2: bad usage or input: an unknown option, a malformed endpoint, revision or duration, a
  virtual service or real server the config in force does not define, a file ldirectord would
  refuse, a cluster these coordinators do not serve;
* 3: no coordinator answered (a refused connection fails at once; a silent one after ``--timeout``);
* 4: a coordinator answered, but its etcd is unreachable;
* ``status`` only: 5 a node is silent, 6 a node is out of sync, 7 an HA cluster has no active
  director (when several hold, the smallest).

No Python traceback reaches the user: anything unexpected is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime as dt
import getpass
import hashlib
import importlib.metadata
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import structlog

from lvs_events.cli import views
from lvs_events.cli.reach import StoreUnreachable, reachable
from lvs_events.cli.verify import add_parser as add_verify_parser
from lvs_events.cli.verify import run_verify
from lvs_events.client.events import new_event
from lvs_events.client.ha import HaStatus, PeerUnavailable, SwitchoverFailed, ha_status, switchover
from lvs_events.client.log import CoordinatorClient, CoordinatorRejected
from lvs_events.domain.config import Config, VirtualService
from lvs_events.domain.config_diff import removal
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Event
from lvs_events.domain.filters import EventFilter, InvalidFilter
from lvs_events.domain.ipvsadm_save import format_ipvsadm_save
from lvs_events.domain.render import render
from lvs_events.domain.snapshot import Snapshot, StateView
from lvs_events.domain.state import State, ended_overrides
from lvs_events.domain.table import format_ipvsadm
from lvs_events.domain.validate import validate_config
from lvs_events.errors import CoordinatorUnavailable, InvalidEvent, LvsEventsError
from lvs_events.ldirectord import ConfigError, ConfigWarning, format_config, parse_file
from lvs_events.ldirectord.printer import format_config_diff
from lvs_events.retry import RetryPolicy
from lvs_events.security import pki_cli
from lvs_events.security.tls import TlsError, TlsFiles, files_from_args

DEFAULT_ENDPOINTS = "127.0.0.1:7420"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_STORE = 0, 1, 2, 3, 4
EXIT_SILENT, EXIT_OUT_OF_SYNC, EXIT_NO_ACTIVE = 5, 6, 7
DEFAULT_SILENT_AFTER = 30.0  # three of the agent's default report intervals (--report-interval 10)
DEFAULT_MAX_REMOVAL = 50.0  # percent of the virtual services or real servers in force
# tail -f: reconnecting after every coordinator stopped answering, 0.5 s then doubling up to 5 s
FOLLOW_RETRY = RetryPolicy(initial=0.5, cap=5.0)
# Codes of a refusal caused by the request itself (exit 2), not by the state of the cluster.
BAD_INPUT_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})

EXIT_CODES_HELP = (
    "exit codes: 0 ok; 1 refused or failed (config diff: differences); 2 bad usage or input; "
    "3 no coordinator answered; 4 a coordinator answered but its etcd did not; status: 5 a node "
    "is silent, 6 a node is out of sync, 7 an HA cluster has no active director"
)


class UsageError(LvsEventsError):
    """Bad arguments or input from the operator."""


class Refused(LvsEventsError):
    """The CLI itself refuses the request (nothing was recorded)."""


def _whole(noun: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 0, named ``noun`` in its error (argparse turns the
    error into exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from e
        if value < 0:
            raise argparse.ArgumentTypeError(f"{noun} is >= 0, not {value}")
        return value

    return parse


_revision = _whole("a revision")
_count = _whole("a number")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from e
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected > 0 seconds, not {text}")
    return value


def _add_globals(p: argparse.ArgumentParser, *, here: bool) -> None:
    """The global options. On the main parser with their defaults; on every subcommand again
    with no default (``argparse.SUPPRESS``), so that they are accepted after the subcommand
    too and, there, override only when given."""

    def default(value: object) -> object:
        return value if here else argparse.SUPPRESS

    p.add_argument(
        "--endpoints",
        default=default(os.environ.get("LVS_EVENTS_ENDPOINTS", DEFAULT_ENDPOINTS)),
        help="coordinator endpoints, comma-separated host:port, [v6]:port "
        f"(env LVS_EVENTS_ENDPOINTS; default {DEFAULT_ENDPOINTS})",
    )
    p.add_argument(
        "--timeout", type=_seconds, default=default(5.0), help="seconds to wait for a coordinator (default 5)"
    )
    p.add_argument(
        "--cluster",
        default=default(os.environ.get("LVS_EVENTS_CLUSTER", "default")),
        help="cluster name (env LVS_EVENTS_CLUSTER; default 'default')",
    )
    g = p.add_argument_group(
        "TLS (default: $LVS_EVENTS_CA, $LVS_EVENTS_CERT, $LVS_EVENTS_KEY, /etc/default/lvs-events)"
    )
    g.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=default(None),
        help="CA bundle the coordinators' certificates chain to",
    )
    g.add_argument("--tls-cert", metavar="PEM", default=default(None), help="this operator's certificate")
    g.add_argument("--tls-key", metavar="PEM", default=default(None), help="its private key")


def _version() -> str:
    try:
        return importlib.metadata.version("lvs-events")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 -- one declaration per option
    p = argparse.ArgumentParser(
        prog="lvs-events",
        description="Audit, inspect and operate an lvs-events cluster (the log of two LVS directors).",
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("--version", action="version", version=f"lvs-events {_version()}")
    _add_globals(p, here=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, here=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], epilog=EXIT_CODES_HELP, help=help, description=description or help
        )

    t = command(
        "tail",
        help="the audit log: who changed what, when and why",
        description="Print the last events of the log (-n, like tail), or from a revision or a "
        "time; with -f keep printing new ones, across coordinator restarts and failovers, with no "
        "gap and no duplicate. Filters are applied by the coordinator: a filter given twice means "
        "either value, different filters must all match. --vip and --real also show the "
        "ConfigApplied events whose configuration defines that service or server.",
    )
    t.add_argument(
        "-n", "--lines", type=_count, default=10, metavar="N", help="the last N events (default 10)"
    )
    start = t.add_mutually_exclusive_group()
    start.add_argument("--rev", type=_revision, default=0, help="every event from this log revision on")
    start.add_argument(
        "--since",
        help="every event of this time or later (ISO 8601, or a duration back from now like 10m, 2h, 1d)",
    )
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they come")
    t.add_argument(
        "--vip", action="append", default=[], help="only this virtual service (key, ip:port or IP)"
    )
    t.add_argument("--real", action="append", default=[], help="only this real server (ip:port or IP)")
    t.add_argument("--type", action="append", default=[], help="only this event type (e.g. RealServerHealth)")
    t.add_argument("--node", action="append", default=[], help="only events from or about this node")
    t.add_argument("-o", "--output", choices=["text", "json"], default="text")

    tb = command("table", help="the IPVS table the log renders, now or at a revision")
    tb.add_argument(
        "--at", type=_revision, default=0, metavar="REV", help="at this log revision (default: now)"
    )
    tb.add_argument(
        "-o",
        "--output",
        choices=["ipvsadm", "json", "ipvsadm-save"],
        default="ipvsadm",
        help="ipvsadm -L -n layout (byte for byte), canonical JSON, or rules for ipvsadm -R "
        "(default %(default)s)",
    )
    tb.add_argument(
        "--digest", action="store_true", help="then a line '# revision REV  digest SHA256' (ipvsadm layout)"
    )

    for name, text in (
        ("drain", "set a real server's weight to 0 (existing connections finish)"),
        ("disable", "take a real server out of the table"),
        ("weight", "give a real server another weight"),
        ("enable", "clear an operator override (drain, disable, weight)"),
    ):
        a = command(
            name,
            help=text,
            description=text + ". The virtual service and the real server "
            "must be defined by the config in force.",
        )
        a.add_argument(
            "virtual", help='the virtual service: "TCP 203.0.113.10:80", 203.0.113.10:80 or "FWM 5"'
        )
        a.add_argument("real", help="the real server, e.g. 192.0.2.11:80 (or its IP when that is unique)")
        if name == "weight":
            a.add_argument("weight", type=_count, help="the weight, 0..65535")
        a.add_argument("--reason", required=True, help="why (recorded in the log)")
        a.add_argument("--operator", default=_operator(), help="who (default: the login name)")
        if name != "enable":
            a.add_argument(
                "--for",
                dest="duration",
                help="end it after this long (e.g. 90s, 30m, 2h; > 0); the coordinator records the expiry",
            )

    cf = command("config", help="ldirectord.cf through the log: validate, diff, apply, show")
    csub = cf.add_subparsers(dest="config_command", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return csub.add_parser(name, parents=[common], help=text, epilog=EXIT_CODES_HELP)

    v = action("validate", "parse a file as ldirectord would; print what it defines")
    v.add_argument("file")
    v.add_argument("--strict", action="store_true", help="reproduce ldirectord's verdicts exactly")
    d = action("diff", "what applying FILE would change, in ldirectord.cf lines (exit 1: it differs)")
    d.add_argument("file")
    d.add_argument("--strict", action="store_true")
    ap = action("apply", "validate FILE, then publish it as the config in force")
    ap.add_argument("file")
    ap.add_argument("--reason", required=True, help="why (recorded in the log)")
    ap.add_argument("--operator", default=_operator(), help="who (default: the login name)")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument(
        "--replaces",
        type=_revision,
        metavar="REV",
        help="apply only if the config in force is still the one of revision REV (as config diff "
        "showed it); default: the one this command reads",
    )
    ap.add_argument(
        "--max-removal",
        type=float,
        default=DEFAULT_MAX_REMOVAL,
        metavar="PERCENT",
        help="refuse, unless confirmed, a file that removes every virtual service or real server "
        "in force or more than this share of either (default %(default)g)",
    )
    ap.add_argument("-y", "--yes", action="store_true", help="confirm a removal above --max-removal")
    sh = action("show", "the config in force, written back as ldirectord.cf")
    sh.add_argument("--at", type=_revision, default=0, metavar="REV", help="as it was at this log revision")

    so = command("switchover", help="planned handover to the standby (ready before the active lets go)")
    so.add_argument("--to", default="", metavar="NODE", help="the node to hand over to (default: the peer)")

    st = command(
        "status",
        help="nodes: applied revision, lag, digest, last report; leadership",
        description="Each node's applied revision, LAG (head - applied), digest, whether it holds "
        "the table of the head (IN SYNC) and when it last reported. Agents report every "
        "--report-interval seconds (10 by default) even on a quiet log; a node not heard for "
        "--silent-after seconds is shown SILENT. Exit 5 a node is silent, 6 a node is out of "
        "sync, 7 an HA cluster has no active director (the smallest when several hold).",
    )
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.add_argument(
        "--silent-after",
        type=_seconds,
        default=DEFAULT_SILENT_AFTER,
        metavar="SECONDS",
        help="a node not heard for this long is silent (default %(default)g)",
    )

    _drill_parser(sub)
    add_verify_parser(sub)
    pki_cli.add_parser(sub)
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


def positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if not seconds > 0:
        raise UsageError(f"bad duration {text!r}: it must be > 0 (to end an override, use enable)")
    return seconds


def parse_since(text: str, now: float) -> float:
    """An ISO 8601 time (UTC if no zone) or a duration back from now."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return now - parse_duration(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def parse_endpoints(text: str) -> list[str]:
    """``host:port`` (or ``[v6]:port``) endpoints, comma-separated; the port is required."""
    out: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError as e:
                raise UsageError(f"bad endpoint {item!r}: {host} is not an IPv6 address") from e
        elif not sep or not host or ":" in host:
            raise UsageError(f"bad endpoint {item!r}: expected host:port (IPv6 as [addr]:port)")
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise UsageError(f"bad endpoint {item!r}: the port must be a number 1..65535")
        out.append(item)
    if not out:
        raise UsageError("no coordinator endpoint given (--endpoints host:port[,host:port...])")
    return out


# --- the configuration as operators name things ------------------------------------------------


def _services(cfg: Config | None) -> str:
    return ", ".join(v.key for v in cfg.virtuals) if cfg is not None and cfg.virtuals else "none"


def find_virtual(cfg: Config | None, text: str) -> VirtualService:
    """The virtual service ``text`` names in ``cfg``: a key (``TCP 203.0.113.10:80``,
    ``FWM 5``; the protocol in any case) or ``ip:port`` when one service has it."""
    words = text.split()
    if cfg is None:
        raise UsageError("no config in force: there is no virtual service to name (config apply first)")
    if len(words) == 2:
        key = f"{words[0].upper()} {words[1]}"
        found = [v for v in cfg.virtuals if v.key == key]
    elif len(words) == 1:
        found = [v for v in cfg.virtuals if v.key.split(" ", 1)[1] == words[0]]
    else:
        found = []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UsageError(f"{text!r} names {len(found)} virtual services: {', '.join(v.key for v in found)}")
    raise UsageError(f"no virtual service {text!r} in the config in force; configured: {_services(cfg)}")


def find_real(v: VirtualService, text: str) -> str:
    """The key of the real server ``text`` names in ``v``: ``ip:port``, or an IP its only one has."""
    if v.real(text) is not None:
        return text
    same_ip = [r.key for r in v.reals if r.address == text.strip("[]")]
    if len(same_ip) == 1:
        return same_ip[0]
    reals = ", ".join(r.key for r in v.reals) or "none"
    raise UsageError(f"no real server {text!r} in {v.key}; its real servers: {reals}")


# --- commands ----------------------------------------------------------------------------------


def _check_cluster(view: StateView, args: argparse.Namespace) -> None:
    """Reads are of the cluster asked for: the log names its cluster in every event."""
    served = view.state.cluster
    if served and served != args.cluster:
        raise UsageError(
            f"cluster {args.cluster!r} is not served at {args.endpoints} (they serve {served!r})"
        )


async def _view(client: CoordinatorClient, args: argparse.Namespace, revision: int = 0) -> StateView:
    view = await client.get_state(revision)
    _check_cluster(view, args)
    return view


def _write(item: Event | Snapshot, output: str) -> None:
    if isinstance(item, Snapshot):
        if output == "text":
            sys.stdout.write(f"# events up to revision {item.revision} were compacted into a snapshot\n")
        return
    sys.stdout.write((views.event_json(item) if output == "json" else views.event_line(item)) + "\n")


async def _tail(client: CoordinatorClient, args: argparse.Namespace) -> int:
    view = await _view(client, args)
    head = view.head_revision
    wanted = EventFilter(types=args.type, nodes=args.node, virtuals=args.vip, reals=args.real)
    since = parse_since(args.since, time.time()) if args.since else 0.0
    nxt = head + 1  # the first revision not yet read
    if args.rev or args.since:  # every event from there on
        async with client.subscribe(args.rev, filters=wanted, since=since) as sub:
            async for item in sub:
                _write(item, args.output)
            nxt = max(sub.last_revision, head) + 1
    elif args.lines:
        last: collections.deque[Event | Snapshot] = collections.deque(maxlen=args.lines)
        # unfiltered, the last N are the last N revisions; filtered, the coordinator's filter
        # is read from the start and the last N of its answer are kept
        begin = max(1, head - args.lines + 1) if wanted.everything else 0
        async with client.subscribe(begin, filters=wanted) as sub:
            async for item in sub:
                last.append(item)
            nxt = max(sub.last_revision, head) + 1
        for item in last:
            _write(item, args.output)
    sys.stdout.flush()
    if args.follow:
        await _follow(client, args, wanted, nxt)
    return EXIT_OK


async def _follow(client: CoordinatorClient, args: argparse.Namespace, wanted: EventFilter, nxt: int) -> None:
    """New events from ``nxt`` on, for ever: when every coordinator stops answering, say so once
    and keep trying; resume from the revision after the last one read (no gap, no duplicate)."""
    backoff = FOLLOW_RETRY.start()
    lost = False
    while True:
        try:
            async with client.subscribe(nxt, follow=True, filters=wanted) as sub:
                async for item in sub:
                    if lost:
                        sys.stderr.write(f"lvs-events: following again from {client.endpoint}\n")
                        lost, backoff = False, FOLLOW_RETRY.start()
                    _write(item, args.output)
                    sys.stdout.flush()
                    nxt = sub.last_revision + 1
        except CoordinatorUnavailable as e:
            delay = backoff.next_delay()
            if not lost:
                sys.stderr.write(f"lvs-events: {str(e).splitlines()[0]}; still trying\n")
                lost = True
            await asyncio.sleep(delay)
            continue
        return  # the server ended a following stream: only at our own close


def _ipvsadm_text(view: StateView) -> str:
    # rendered from the state for the config's own order (the digest is order-independent)
    return format_ipvsadm(render(view.state) if view.state.config else view.table)


async def _table(client: CoordinatorClient, args: argparse.Namespace) -> int:
    view = await _view(client, args, args.at)
    if args.output == "json":
        doc = {"revision": view.revision, "digest": view.table_digest, "services": view.table.to_json()}
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    elif args.output == "ipvsadm-save":
        # exactly the rules: the output is fed to ``ipvsadm -R``
        sys.stdout.write(format_ipvsadm_save(render(view.state) if view.state.config else view.table))
    else:
        sys.stdout.write(_ipvsadm_text(view))
        if args.digest:
            sys.stdout.write(f"# revision {view.revision}  digest {view.table_digest}\n")
    return EXIT_OK


_ACTIONS = {
    "drain": AdminAction.DRAIN,
    "disable": AdminAction.DISABLE,
    "weight": AdminAction.WEIGHT,
    "enable": AdminAction.ENABLE,
}


async def _admin(client: CoordinatorClient, args: argparse.Namespace) -> int:
    action = _ACTIONS[args.command]
    duration = positive_duration(args.duration) if getattr(args, "duration", None) else 0.0
    weight = args.weight if action is AdminAction.WEIGHT else 0
    if weight > 65535:
        raise UsageError(f"bad weight {weight}: 0..65535")
    view = await _view(client, args)
    v = find_virtual(view.state.config, args.virtual)
    real = find_real(v, args.real)
    current = view.state.overrides.get((v.key, real))
    if action is AdminAction.ENABLE and (current is None or not current.active(view.state.clock)):
        sys.stdout.write(f"{v.key} -> {real} has no operator override: nothing to enable, nothing recorded\n")
        return EXIT_OK
    expires = time.time() + duration if duration else 0.0
    event = new_event(
        AdminOverride(v.key, real, action, weight, expires),
        cluster=args.cluster,
        origin=_origin(),
        actor=args.operator,
        reason=args.reason,
    )
    (ack,) = await client.publish([event])
    if not ack.ok:
        raise CoordinatorRejected(ack.error_code, ack.error)
    sys.stdout.write(f"{views.summary(event)}: recorded at revision {ack.revision}\n")
    return EXIT_OK


def _origin() -> str:
    name = socket.gethostname().split(".")[0]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) or "cli"


async def _switchover(_client: CoordinatorClient, args: argparse.Namespace) -> int:
    try:
        r = await switchover(args.endpoint_list, args.to, within=max(args.timeout, 1.0), tls=args.tls)
    except (SwitchoverFailed, PeerUnavailable) as e:
        raise CoordinatorRejected("FAILED_PRECONDITION", str(e)) from e
    sys.stdout.write(
        f"switchover: {r.from_node} (term {r.old_term}) -> {r.to_node} (term {r.new_term}) "
        f"in {r.seconds * 1000:.0f} ms\n"
    )
    return EXIT_OK


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
        return f"leadership: no active director ({views.clean(ha.error or 'no leader')})\n"
    lines = [f"leadership: {views.clean(ha.leader.node)} is active, term {ha.leader.term} (etcd)"]
    if ha.error:
        lines.append(f"  the active agent could not be asked: {views.clean(ha.error)}")
    if ha.nodes:
        lines.append(f"  {'NODE':<12} {'ROLE':<10} {'TERM':>5} {'REVISION':>9}  {'VIPS':<5} SEEN")
        for n in ha.nodes:
            seen = "self" if n.node == ha.leader.node else f"{n.seen_ago:.2f}s ago"
            held = "yes" if n.vips else "no"
            lines.append(
                f"  {views.clean(n.node):<12} {n.role:<10} {n.term:>5} {n.revision:>9}  {held:<5} {seen}"
            )
    if ha.vips:
        lines.append(f"  VIPs: {', '.join(ha.vips)}")
    return "\n".join(lines) + "\n"


async def _ha(args: argparse.Namespace) -> HaStatus | None:
    try:
        return await ha_status(args.endpoint_list, within=args.timeout, tls=args.tls)
    except LvsEventsError:
        return None


def status_exit(state: State, nodes: list[views.NodeView], ha: HaStatus | None) -> int:
    """``status``'s exit code: 5 a node is silent, 6 out of sync, 7 an HA cluster (one that has
    had a leader, or whose agents campaign) with no active director; else 0."""
    if any(n.silent for n in nodes):
        return EXIT_SILENT
    if any(not n.in_sync for n in nodes):
        return EXIT_OUT_OF_SYNC
    ha_cluster = state.term > 0 or (ha is not None and bool(ha.nodes))
    if ha_cluster and (ha is None or not ha.leader.present):
        return EXIT_NO_ACTIVE
    return EXIT_OK


async def _status(client: CoordinatorClient, args: argparse.Namespace) -> int:
    view = await _view(client, args)
    ha = await _ha(args)
    now = time.time()
    nodes = views.node_views(view.state, view.head_revision, view.table_digest, now, args.silent_after)
    if args.output == "json":
        doc = {
            "cluster": view.state.cluster,
            "head_revision": view.head_revision,
            "digest": view.table_digest,
            "active": view.state.leader,
            "term": view.state.term,
            "silent_after": args.silent_after,
            "nodes": {
                n.node: {
                    "applied_revision": n.applied_revision,
                    "digest": n.digest,
                    "lag": n.lag,
                    "in_sync": n.in_sync,
                    "last_seen": n.last_seen,
                    "seen_ago": round(now - n.last_seen, 3),
                    "silent": n.silent,
                }
                for n in nodes
            },
            "leadership": _ha_doc(ha),
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        text = views.status_text(
            view.state, view.head_revision, view.table_digest, now=now, silent_after=args.silent_after
        )
        sys.stdout.write(text + "\n" + _ha_text(ha))
    return status_exit(view.state, nodes, ha)


async def _load(path: str, strict: bool) -> tuple[Config, str, list[ConfigWarning]]:
    """Parse off the event loop (file I/O and name resolution block)."""

    def work() -> tuple[Config, str, list[ConfigWarning]]:
        warnings: list[ConfigWarning] = []
        cfg = parse_file(path, strict=strict, warnings=warnings)
        try:
            validate_config(cfg)  # what the log would refuse, e.g. a scheduler the kernel lacks
        except InvalidEvent as e:
            raise UsageError(f"{path}: ldirectord would accept this file, but the log refuses it: {e}") from e
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as e:
            raise UsageError(f"{path}: {e.strerror}") from e
        return cfg, digest, warnings

    return await asyncio.to_thread(work)


def _print_warnings(warnings: list[ConfigWarning]) -> None:
    for w in warnings:
        sys.stderr.write(f"{w}\n")


def _override_notes(state: State, cfg: Config) -> list[str]:
    """What happens to the operator overrides in force: those on servers ``cfg`` keeps go on,
    those on servers it removes end with it."""
    ended = {key for key, _ in ended_overrides(state, cfg)}
    notes = []
    for (vk, rk), ov in sorted(state.overrides.items()):
        if not ov.active(state.clock):
            continue
        what = f"{ov.action.value}{f' weight={ov.weight}' if ov.action is AdminAction.WEIGHT else ''}"
        who = f"by {views.clean(ov.actor)} at revision {ov.revision}"
        verb = "ends (its server is removed)" if (vk, rk) in ended else "stays"
        notes.append(f"# override {what} on {vk} -> {rk} {who} {verb}")
    return notes


def _confirm(question: str) -> bool:
    """Ask on the terminal; False when there is none (a script must say --yes)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def _config(client: CoordinatorClient, args: argparse.Namespace) -> int:
    action = args.config_command
    if action == "show":
        view = await _view(client, args, args.at)
        if view.state.config is None:
            raise Refused(f"no config in force at revision {view.revision}")
        sys.stdout.write(
            f"# config in force at revision {view.revision} (applied at {view.state.config_revision})\n"
        )
        sys.stdout.write(format_config(view.state.config))
        return EXIT_OK
    cfg, digest, warnings = await _load(args.file, args.strict)
    _print_warnings(warnings)
    if action == "validate":
        reals = sum(len(v.reals) for v in cfg.virtuals)
        sys.stdout.write(f"{args.file}: OK, {len(cfg.virtuals)} virtual services, {reals} real servers\n")
        if not cfg.virtuals:
            sys.stderr.write(
                f"{args.file}: warning: no virtual service: applying it removes every service in force\n"
            )
        return EXIT_OK
    view = await _view(client, args)
    state = view.state
    lines = format_config_diff(state.config, cfg)
    in_force = f"config in force (revision {state.config_revision})" if state.config else "no config in force"
    if action == "diff":
        if not lines:
            sys.stdout.write(f"no changes: {args.file} is the {in_force}\n")
            return EXIT_OK
        sys.stdout.write(f"--- {in_force}\n+++ {args.file}\n")
        sys.stdout.write("\n".join(lines + _override_notes(state, cfg)) + "\n")
        return EXIT_FAILED
    replaces = state.config_revision if args.replaces is None else args.replaces
    if replaces != state.config_revision:
        raise Refused(
            f"the config in force is of revision {state.config_revision}, not {replaces}: "
            "run config diff again; nothing published"
        )
    if not lines and state.config is not None:
        sys.stdout.write(f"no changes: {args.file} is the config in force; nothing published\n")
        return EXIT_OK
    cut = removal(state.config, cfg)
    if cut.exceeds(args.max_removal / 100.0) and not args.yes:
        question = f"{args.file} {cut.describe()}. Apply it?"
        if not _confirm(question):
            raise Refused(
                f"{args.file} {cut.describe()} (more than {args.max_removal:g}% or all): "
                "nothing published; confirm with --yes"
            )
    event = new_event(
        ConfigApplied(dataclasses.replace(cfg, source=Path(args.file).name), digest, replaces),
        cluster=args.cluster,
        origin=_origin(),
        actor=args.operator,
        reason=args.reason,
    )
    (ack,) = await client.publish([event])
    if not ack.ok:
        raise CoordinatorRejected(ack.error_code, ack.error)
    after = (await client.get_state(ack.revision)).state
    if after.config_revision != ack.revision:  # refused by the fold: another config came first
        raise Refused(f"{views.clean(after.config_error) or 'stale config'}; the config in force stays")
    sys.stdout.write("\n".join(lines + _override_notes(state, cfg)) + "\n")
    sys.stdout.write(f"applied {args.file} at revision {ack.revision}\n")
    return EXIT_OK


async def _drill(client: CoordinatorClient, args: argparse.Namespace) -> int:
    # Imported here: the drill tooling (lab, scenarios, running pair) is not needed by any other
    # command, and importing it would pull the agent's code into every CLI start.
    from lvs_events.cli.drill import run_drill_command  # noqa: PLC0415

    return await run_drill_command(args)


COMMANDS = {
    "tail": _tail,
    "table": _table,
    "drain": _admin,
    "disable": _admin,
    "weight": _admin,
    "enable": _admin,
    "status": _status,
    "config": _config,
    "switchover": _switchover,
    "drill": _drill,
    "verify": run_verify,
}


def _needs_coordinator(args: argparse.Namespace) -> bool:
    if args.command == "drill":
        return False
    return not (args.command == "config" and args.config_command == "validate")


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    try:
        return files_from_args(args)
    except TlsError as e:
        raise UsageError(str(e)) from e


async def run(args: argparse.Namespace) -> int:
    args.endpoint_list = parse_endpoints(args.endpoints)
    # the operator's identity: flags, else the environment, else /etc/default/lvs-events;
    # None: plaintext (a coordinator on loopback or run with --insecure)
    tls = args.tls = _tls(args)
    if _needs_coordinator(args):
        args.endpoint_list = await reachable(args.endpoint_list, args.timeout, tls)
    async with CoordinatorClient(args.endpoint_list, timeout=args.timeout, tls=tls) as client:
        return await COMMANDS[args.command](client, args)


def _fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"lvs-events: {views.clean(message)}\n")
    sys.exit(code)


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "pki":
        sys.exit(pki_cli.run(args))
    # The CLI's own output is the answer; the client's retries are noise unless something is wrong.
    # The factory looks sys.stderr up at each logger's creation (not once, here): a caller that
    # swaps stderr (a test harness, an embedding program) never leaves loggers on a closed file.
    # The whole configuration, processors included: nothing is inherited from whatever else
    # configured structlog in this process (a daemon's stdlib processors expect stdlib loggers).
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
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
    except StoreUnreachable as e:
        _fail(EXIT_STORE, str(e))
    except (UsageError, InvalidEvent, InvalidFilter, ConfigError) as e:
        _fail(EXIT_USAGE, str(e))
    except CoordinatorRejected as e:
        _fail(EXIT_USAGE if e.code in BAD_INPUT_CODES else EXIT_FAILED, str(e).splitlines()[0])
    except LvsEventsError as e:
        _fail(EXIT_FAILED, str(e).splitlines()[0])
    except Exception as e:  # the promise: one line, never a traceback
        _fail(EXIT_FAILED, f"internal error: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
