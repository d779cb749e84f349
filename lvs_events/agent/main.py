"""``lvs-agent``: replay the event log into this director's IPVS table (``python -m lvs_events.agent.main``).

SIGTERM / SIGINT: stop following the log, finish the batch in hand, persist the applied
revision, flush queued events to the coordinator, all within ``--drain-timeout`` seconds.

TLS: ``--tls-ca/--tls-cert/--tls-key`` (else ``$LVS_EVENTS_CA`` ..., else
``/etc/default/lvs-events``): this director's certificate, used by its calls to the coordinators
and to its peer, and by its Peer service, which then admits heartbeats and handovers only from
``--peer-node``'s certificate. Without TLS material the Peer service listens on loopback only,
unless ``--insecure`` (see docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from lvs_events import logs
from lvs_events.agent.commands import load_allowlist
from lvs_events.agent.config_source import ConfigSourceError, LoadedConfig, load_config_json, load_ldirectord
from lvs_events.agent.dataplane import Dataplane
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.ha.hooks import Hooks
from lvs_events.agent.ha.runner import HaRunner, HaSettings
from lvs_events.agent.ha.timing import HaTiming
from lvs_events.agent.ha.vips import ExternalVips, NetlinkVips, VipManager
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.client.ha import LeaderElectionClient
from lvs_events.client.log import CoordinatorClient
from lvs_events.errors import LvsEventsError
from lvs_events.security import tls
from lvs_events.security.tls import ListenMode, TlsFiles, check_listen, insecure_warning

log = structlog.get_logger("agent")

# How long a thread may hold the interpreter while another waits for it (Python's default: 5 ms).
# The agent's event loop carries every event from the log to the kernel; its helper threads
# (the drift check's netlink dump and comparison, the state file's encoding) run Python for
# seconds, and each time the loop gives the interpreter up (every socket call, every wait) it may
# wait up to an interval to get it back: the interval bounds what each event waits for while a
# helper thread runs (measurements in docs/kernel-dataplane.md).
SWITCH_INTERVAL = 0.001

DATAPLANES = ("memory", "ipvs")  # ipvs: the kernel's table over netlink (needs pyroute2 and root)


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
        "--drift-interval",
        type=float,
        default=30.0,
        help="ipvs: every so many seconds compare the kernel with the applied table, record and "
        "repair a difference (0: never; default %(default)s)",
    )
    p.add_argument(
        "--report-interval",
        type=float,
        default=10.0,
        help="report the applied revision and digest (TableApplied) this often, even on a quiet "
        "log, for lvs-events status to see this node alive (0: only on change; default %(default)s)",
    )
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
    cmd = p.add_argument_group(
        "commands a configuration names (checkcommand, fallbackcommand; see docs/security.md)",
        "They run only if allowed here or named by this director's own --config/--config-json file.",
    )
    cmd.add_argument(
        "--allow-command",
        action="append",
        default=[],
        metavar="'PATH [ARG...]'",
        help="allow this exact command: an absolute path, optionally with fixed arguments (repeatable)",
    )
    cmd.add_argument(
        "--commands-allow-file",
        type=Path,
        metavar="FILE",
        help="allowed commands, one per line as --allow-command ('#' comments), e.g. "
        "/etc/lvs-events/commands.allow; read at start",
    )
    checks = p.add_argument_group("health checks (see docs/health-checks.md)")
    checks.add_argument(
        "--check-capacity",
        type=float,
        default=None,
        help="checks a second the checker starts at most (default: measured from its own lateness)",
    )
    checks.add_argument(
        "--mass-down-threshold",
        type=float,
        default=0.5,
        help="share of a virtual service's real servers this node may take down within one check "
        "interval without the other director's view confirming it (1 = no guard; default %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of coordinator calls, seconds")
    p.add_argument("--drain-timeout", type=float, default=5.0, help="shutdown drain deadline, seconds")
    ha = p.add_argument_group("high availability (a director pair; see docs/failover.md)")
    ha.add_argument("--peer", help="the peer agent's Peer service host:port; enables HA")
    ha.add_argument(
        "--peer-node",
        default="",
        help="the peer's node name (its certificate's CN): the only director whose heartbeats and "
        "handovers our Peer service accepts; required with TLS",
    )
    ha.add_argument(
        "--listen-peer",
        default="0.0.0.0:7421",
        help="our Peer service (default %(default)s: needs TLS, or --insecure, or a loopback address)",
    )
    ha.add_argument("--advertise-peer", default="", help="our Peer address as others reach it")
    ha.add_argument("--vip", action="append", default=[], help="a VIP (repeatable), ADDR or ADDR/PREFIX")
    ha.add_argument("--vip-interface", default="", help="interface the VIPs go on")
    ha.add_argument(
        "--vip-mode",
        choices=("netlink", "external"),
        default="netlink",
        help="netlink: we add/remove the VIPs; external: the notify hooks' business",
    )
    ha.add_argument(
        "--no-config-vips", action="store_true", help="only the --vip addresses, not the config's virtuals"
    )
    ha.add_argument("--on-active", default="", help="command run on becoming active (+ role term reason)")
    ha.add_argument("--on-standby", default="", help="command run on becoming standby")
    ha.add_argument("--on-fault", default="", help="command run on letting go for lack of confirmation")
    ha.add_argument("--hook-timeout", type=float, default=10.0)
    d = HaTiming()
    ha.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval)
    ha.add_argument("--miss-limit", type=int, default=d.miss_limit)
    ha.add_argument("--keepalive-interval", type=float, default=d.keepalive_interval)
    ha.add_argument("--retry-deadline", type=float, default=d.retry_deadline)
    ha.add_argument("--authority", type=float, default=d.authority)
    ha.add_argument("--lease-ttl", type=int, default=d.lease_ttl)
    tls.add_arguments(p, server=True)
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
    if kind == "ipvs":
        from lvs_events.agent.dataplane.ipvs import IpvsDataplane  # noqa: PLC0415 -- pyroute2 only when asked for

        return IpvsDataplane(owned_path=state_dir / "ipvs-owned.json")
    raise SystemExit(f"lvs-agent: unknown dataplane {kind!r}")


def settings_from(args: argparse.Namespace) -> AgentSettings:
    endpoints = tuple(e.strip() for e in args.coordinators.split(",") if e.strip())
    if not endpoints:
        raise SystemExit("lvs-agent: --coordinators is empty")
    if args.publish_config and args.config is None and args.config_json is None:
        raise SystemExit("lvs-agent: --publish-config needs --config or --config-json")
    if not 0.0 < args.mass_down_threshold <= 1.0:
        raise SystemExit("lvs-agent: --mass-down-threshold must be in (0, 1]")
    if args.check_capacity is not None and args.check_capacity <= 0:
        raise SystemExit("lvs-agent: --check-capacity must be positive")
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
        drift_interval=args.drift_interval,
        allowlist=load_allowlist(args.allow_command, args.commands_allow_file),
        check_capacity=args.check_capacity,
        mass_down_threshold=args.mass_down_threshold,
        report_interval=args.report_interval,
    )


def tls_from(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files of the flags, environment or defaults file; with HA, checks that the Peer
    service may listen as asked (:class:`~lvs_events.security.tls.ListenRefused` if not) and
    logs the insecure warning."""
    files = tls.files_from_args(args)
    if args.peer:
        if files is not None and not args.peer_node:
            raise SystemExit("lvs-agent: --peer-node is needed with TLS (the peer's certificate CN)")
        if check_listen(args.listen_peer, files is not None, args.insecure) is ListenMode.INSECURE:
            log.warning(insecure_warning(args.listen_peer), listen=args.listen_peer)
    return files


async def run(
    settings: AgentSettings,
    dataplane_kind: str,
    args: argparse.Namespace | None = None,
    files: TlsFiles | None = None,
) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = CoordinatorClient(settings.endpoints, timeout=settings.client_timeout, tls=files)
    election = None
    ha = None
    if args is not None and args.peer:
        election = LeaderElectionClient(settings.endpoints, timeout=args.retry_deadline, tls=files)
        ha = make_ha(args, settings, election, files)
    dataplane = make_dataplane(dataplane_kind, settings.state_dir)
    agent = Agent(settings, dataplane, client=client, ha=ha)
    if (
        ha is not None
        and args is not None
        and isinstance(ha.vip_manager, NetlinkVips)
        and not args.no_config_vips
    ):
        # agent.core is read at each call: the agent replaces it (stored state, rebase)
        def config_vips() -> list[str]:
            cfg = agent.core.state.config
            return [v.address for v in (cfg.virtuals if cfg else ()) if v.address]

        ha.vip_manager.dynamic = config_vips
    try:
        await agent.run(stop)
    finally:
        await client.close()
        if election is not None:
            await election.close()
        await dataplane.close()


def make_ha(
    args: argparse.Namespace,
    settings: AgentSettings,
    election: LeaderElectionClient,
    files: TlsFiles | None = None,
) -> HaRunner:
    timing = HaTiming(
        heartbeat_interval=args.heartbeat_interval,
        miss_limit=args.miss_limit,
        keepalive_interval=args.keepalive_interval,
        retry_deadline=args.retry_deadline,
        authority=args.authority,
        lease_ttl=args.lease_ttl,
    ).validate()
    vips: VipManager
    if args.vip_mode == "external":
        vips = ExternalVips(args.vip)
    else:
        if not args.vip_interface:
            raise SystemExit("lvs-agent: --vip-interface is needed with --vip-mode netlink")
        vips = NetlinkVips(args.vip_interface, args.vip)
    hooks = Hooks(args.on_active, args.on_standby, args.on_fault, args.hook_timeout)
    ha_settings = HaSettings(
        node=settings.node,
        listen=args.listen_peer,
        peer=args.peer,
        advertise=args.advertise_peer,
        timing=timing,
        hooks=hooks,
        tls=files,
        peer_node=args.peer_node,
        insecure=args.insecure,
    )
    return HaRunner(ha_settings, election, vips)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        settings = settings_from(args)
        files = tls_from(args)
        asyncio.run(run(settings, args.dataplane, args, files))
    except (LvsEventsError, ConfigSourceError, OSError) as e:
        print(f"lvs-agent: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
