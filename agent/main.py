"""``lvs-agent``: replay the event log into this director's IPVS table (``python -m agent.main``).

SIGTERM / SIGINT: stop following the log, finish the batch in hand, persist the applied
revision, flush queued events to the coordinator, all within ``--drain-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.config_source import ConfigSourceError, LoadedConfig, load_config_json, load_ldirectord
from agent.dataplane import Dataplane
from agent.dataplane.memory import MemoryDataplane
from agent.runtime import Agent, AgentSettings
from lvs_events import logs
from lvs_events.errors import LvsEventsError

log = structlog.get_logger("agent")

DATAPLANES = ("memory",)  # "kernel" comes with its own issue


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lvs-agent", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--node", required=True, help="this director's node name (e.g. lb1)")
    p.add_argument("--cluster", default="default", help="cluster name (default %(default)s)")
    p.add_argument(
        "--coordinators",
        default="127.0.0.1:7420",
        help="comma-separated coordinator host:port list; the agent fails over (default %(default)s)",
    )
    p.add_argument("--dataplane", choices=DATAPLANES, default="memory")
    p.add_argument(
        "--state-dir", type=Path, required=True, help="where the applied revision and tables are kept"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="ldirectord.cf of this director")
    src.add_argument(
        "--config-json", type=Path, help="the configuration as canonical JSON (lvs_events codec)"
    )
    p.add_argument(
        "--publish-config",
        action="store_true",
        help="at start, publish ConfigApplied if the configuration differs from the one in force",
    )
    p.add_argument(
        "--no-health-checks", action="store_true", help="run no health checks (this node reports no verdicts)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of coordinator calls, seconds")
    p.add_argument("--drain-timeout", type=float, default=5.0, help="shutdown drain deadline, seconds")
    p.add_argument("--log-format", choices=logs.FORMATS, default="auto")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> LoadedConfig | None:
    if args.config is not None:
        return load_ldirectord(args.config)
    if args.config_json is not None:
        return load_config_json(args.config_json)
    return None


def make_dataplane(kind: str, state_dir: Path) -> Dataplane:
    if kind == "memory":
        return MemoryDataplane(state_dir)
    raise SystemExit(f"lvs-agent: unknown dataplane {kind!r}")


def settings_from(args: argparse.Namespace) -> AgentSettings:
    endpoints = tuple(e.strip() for e in args.coordinators.split(",") if e.strip())
    if not endpoints:
        raise SystemExit("lvs-agent: --coordinators is empty")
    if args.publish_config and args.config is None and args.config_json is None:
        raise SystemExit("lvs-agent: --publish-config needs --config or --config-json")
    return AgentSettings(
        node=args.node,
        cluster=args.cluster,
        endpoints=endpoints,
        state_dir=args.state_dir,
        config=load_config(args),
        config_path=args.config,
        publish_config=args.publish_config,
        health_checks=not args.no_health_checks,
        drain_timeout=args.drain_timeout,
        client_timeout=args.timeout,
    )


async def run(settings: AgentSettings, dataplane_kind: str) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings, make_dataplane(dataplane_kind, settings.state_dir))
    await agent.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        settings = settings_from(args)
        asyncio.run(run(settings, args.dataplane))
    except (LvsEventsError, ConfigSourceError, OSError) as e:
        print(f"lvs-agent: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
