"""The CLI's parsing and decisions that need no cluster: endpoints, names of configured
servers, the global options' places, status's exit code, config diff in ldirectord.cf lines."""

from __future__ import annotations

import pytest
from immutables import Map

from lvs_events.cli import views
from lvs_events.cli.main import (
    EXIT_NO_ACTIVE,
    EXIT_OK,
    EXIT_OUT_OF_SYNC,
    EXIT_SILENT,
    UsageError,
    _parser,
    find_real,
    find_virtual,
    parse_endpoints,
    positive_duration,
    status_exit,
)
from lvs_events.domain.config import Config, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.config_diff import removal
from lvs_events.domain.state import NodeStatus, State
from lvs_events.ldirectord.printer import format_config_diff

R1 = RealServer("192.0.2.11", 80, Forwarding.GATE, 10)
R2 = RealServer("192.0.2.12", 80, Forwarding.GATE, 20)
WEB = VirtualService(Protocol.TCP, "203.0.113.10", 80, reals=(R1, R2))
DNS = VirtualService(
    Protocol.UDP, "203.0.113.10", 53, reals=(RealServer("192.0.2.11", 53, Forwarding.GATE, 1),)
)
CFG = Config(virtuals=(WEB, DNS))


def test_endpoints_need_a_host_and_a_port() -> None:
    assert parse_endpoints("127.0.0.1:7420, [::1]:7420") == ["127.0.0.1:7420", "[::1]:7420"]
    for bad in (
        "127.0.0.1",
        "127.0.0.1:74x20",
        ":7420",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "::1:7420",
        "[nope]:1",
        "",
    ):
        with pytest.raises(UsageError):
            parse_endpoints(bad)


def test_a_virtual_service_and_real_server_are_named_as_configured() -> None:
    assert find_virtual(CFG, "TCP 203.0.113.10:80") is WEB
    assert find_virtual(CFG, "tcp 203.0.113.10:80") is WEB
    assert find_virtual(CFG, "203.0.113.10:53") is DNS
    assert find_real(WEB, "192.0.2.12:80") == "192.0.2.12:80"
    assert find_real(WEB, "192.0.2.12") == "192.0.2.12:80"
    with pytest.raises(UsageError, match=r"configured: TCP 203.0.113.10:80, UDP 203.0.113.10:53"):
        find_virtual(CFG, "UDP 203.0.113.10:80")
    with pytest.raises(UsageError, match=r"its real servers: 192.0.2.11:80, 192.0.2.12:80"):
        find_real(WEB, "192.0.2.1O:80")
    with pytest.raises(UsageError, match="no config in force"):
        find_virtual(None, "TCP 203.0.113.10:80")


def test_durations_of_overrides_are_positive() -> None:
    assert positive_duration("15s") == 15
    for bad in ("0", "0s", "-5m", "soon"):
        with pytest.raises(UsageError):
            positive_duration(bad)


def test_global_options_go_before_or_after_the_subcommand() -> None:
    before = _parser().parse_args(["--endpoints", "a:1", "--cluster", "prod", "status"])
    after = _parser().parse_args(["status", "--endpoints", "a:1", "--cluster", "prod"])
    default = _parser().parse_args(["--cluster", "prod", "status"])
    assert (before.endpoints, before.cluster) == (after.endpoints, after.cluster) == ("a:1", "prod")
    assert default.cluster == "prod"  # the subcommand's copy of the option does not reset it
    nested = _parser().parse_args(["config", "show", "--cluster", "x", "--timeout", "2"])
    assert (nested.cluster, nested.timeout) == ("x", 2.0)


@pytest.mark.parametrize(
    "argv", [["table", "--at", "-1"], ["tail", "--rev", "-5"], ["status", "--timeout", "0"]]
)
def test_bad_numbers_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2


def _state(term: int = 0, **nodes: NodeStatus) -> State:
    return State(cluster="c", term=term, nodes=Map(nodes))


def test_status_exit_codes() -> None:
    d = "a" * 64
    fresh = NodeStatus(10, d, 10, 100.0)
    stale = NodeStatus(10, d, 10, 50.0)
    behind = NodeStatus(8, "b" * 64, 9, 100.0)

    def code(state: State) -> int:
        return status_exit(state, views.node_views(state, 10, d, 101.0, 30.0), None)

    assert code(_state(master=fresh)) == EXIT_OK
    assert code(_state(master=fresh, slave=stale)) == EXIT_SILENT
    assert code(_state(master=fresh, slave=behind)) == EXIT_OUT_OF_SYNC
    assert code(_state(master=behind, slave=stale)) == EXIT_SILENT  # the smallest
    assert code(_state(term=3, master=fresh)) == EXIT_NO_ACTIVE  # had a leader, none answers now


def test_config_diff_is_in_ldirectord_lines() -> None:
    heavier = VirtualService(
        Protocol.TCP, "203.0.113.10", 80, reals=(R1, RealServer("192.0.2.12", 80, Forwarding.GATE, 25))
    )
    new = Config(virtuals=(heavier,))
    lines = format_config_diff(CFG, new)
    assert lines[0] == " virtual=203.0.113.10:80"
    assert "-    real=192.0.2.12:80 gate 20" in lines
    assert "+    real=192.0.2.12:80 gate 25" in lines
    assert "-virtual=203.0.113.10:53" in lines
    assert "-    protocol=udp" in lines
    assert not any("True" in line or "'" in line for line in lines)
    assert format_config_diff(CFG, CFG) == []
    assert format_config_diff(None, CFG)[0] == "+virtual=203.0.113.10:80"


def test_the_blast_radius_of_a_config() -> None:
    assert removal(CFG, Config()).exceeds(0.5)  # everything
    assert removal(CFG, Config()).describe() == "removes 2 of 2 virtual services and 3 of 3 real servers"
    assert not removal(CFG, Config(virtuals=(WEB,))).exceeds(0.5)  # one of two services, one of three reals
    assert removal(CFG, Config(virtuals=(WEB,))).exceeds(0.4)
    assert not removal(None, Config()).exceeds(0.0)  # nothing in force: nothing to remove
