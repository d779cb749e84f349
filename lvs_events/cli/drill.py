"""``lvs-events drill``: imported only when that command runs (see ``main._drill``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from lvs_events.cli.main import DRILL_COMMANDS, EXIT_FAILED, UsageError
from lvs_events.drills.drill import DrillReport, Pair, run_drill
from lvs_events.drills.lab import NetnsLab, netns_available
from lvs_events.drills.running import RunningPair, missing_commands
from lvs_events.errors import LvsEventsError


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def _yes(v: bool | None) -> str:
    return "not checked" if v is None else ("yes" if v else "no")


def _drill_text(r: DrillReport, i: int) -> str:
    lines = [
        f"drill {r.scenario} run {i} ({r.drill_id}): {r.old_active or '?'} (term {r.old_term}) -> "
        f"{r.new_active or '?'} (term {r.new_term})",
        f"  detect {_ms(r.detect)}  elect {_ms(r.elect)}  vip {_ms(r.vip)}  "
        f"first connection {_ms(r.first_connection)}",
        f"  failed connections {r.failed_connections} of {r.attempts}  two holders {_yes(r.two_holders)}  "
        f"fenced refused {_yes(r.fenced_refused)}  digests equal {_yes(r.digests_equal)}",
    ]
    if r.two_arp_answers is not None:
        lines.append(f"  two ARP answers {_yes(r.two_arp_answers)} ({r.arp_requests} requests)")
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _drill_args(args: argparse.Namespace) -> tuple[dict[str, str], tuple[str, int]]:
    """The operator commands and the probe's target, checked before anything runs."""
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    commands = {k: getattr(args, f"{k.replace('-', '_')}_command") for k in DRILL_COMMANDS}
    if args.lab:
        return commands, ("", 0)
    missing = missing_commands(args.scenario, commands)
    if missing:
        raise UsageError(
            f"drill {args.scenario} against a running pair needs {' and '.join(missing)} "
            "(shell commands, {node} is replaced by the node name), or --lab"
        )
    host, sep, port = args.vip.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError("drill against a running pair needs --vip HOST:PORT (the service the client probes)")
    return commands, (host.strip("[]"), int(port))


async def run_drill_command(args: argparse.Namespace) -> int:
    """``lvs-events drill``: run the scenario ``args.runs`` times, print each report and a summary."""
    commands, vip = _drill_args(args)

    reports: list[DrillReport] = []
    errors = 0

    async def runs(pair: Pair) -> None:
        nonlocal errors
        for i in range(1, args.runs + 1):
            try:
                r = await run_drill(args.scenario, pair)
            except Exception as e:  # one broken run is reported; the others still run
                errors += 1
                sys.stderr.write(f"lvs-events: drill {args.scenario} run {i} failed: {e}\n")
                continue
            reports.append(r)
            sys.stdout.write(r.to_json() + "\n" if args.output == "json" else _drill_text(r, i))
            sys.stdout.flush()

    if args.lab:
        why = await asyncio.to_thread(netns_available)
        if why:
            raise UsageError(f"drill --lab cannot run here: {why}")
        async with NetnsLab() as lab:
            await runs(lab)
    else:
        endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
        try:
            async with RunningPair(
                endpoints,
                cluster=args.cluster,
                vip=vip,
                commands=commands,
                timeout=args.timeout,
                tls=args.tls,
            ) as pair:
                await runs(pair)
        except RuntimeError as e:
            raise LvsEventsError(str(e)) from e

    firsts = [r.first_connection for r in reports if r.first_connection is not None]
    bad = [r for r in reports if r.two_holders or r.two_arp_answers or not r.digests_equal]
    summary = {
        "summary": args.scenario,
        "runs": args.runs,
        "completed": len(reports),
        "first_connection_p50": _pct(firsts, 0.5),
        "first_connection_p99": _pct(firsts, 0.99),
        "failed_connections": sum(r.failed_connections for r in reports),
        "two_holders_runs": sum(1 for r in reports if r.two_holders),
        "two_arp_answers_runs": sum(1 for r in reports if r.two_arp_answers),
        "unequal_digests_runs": sum(1 for r in reports if not r.digests_equal),
    }
    if args.output == "json":
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    else:
        sys.stdout.write(
            f"{args.scenario}: {len(reports)} of {args.runs} runs, first connection "
            f"p50 {_ms(summary['first_connection_p50'])} p99 {_ms(summary['first_connection_p99'])}, "
            f"{summary['failed_connections']} failed connections, two holders in "
            f"{summary['two_holders_runs']} runs, unequal digests in {summary['unequal_digests_runs']}\n"
        )
    return EXIT_FAILED if bad or errors else 0
