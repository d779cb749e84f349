"""diff_configs: per global, virtual service and real server (pure)."""

from __future__ import annotations

from dataclasses import replace

from lvs_events.domain.config import Config, Forwarding, GlobalSettings, Protocol, RealServer, VirtualService
from lvs_events.domain.config_diff import diff_configs

WEB = VirtualService(
    Protocol.TCP,
    "203.0.113.10",
    80,
    scheduler="wrr",
    reals=(
        RealServer("192.0.2.11", 80, Forwarding.GATE, 10),
        RealServer("192.0.2.12", 80, Forwarding.GATE, 20),
    ),
)
CFG = Config(GlobalSettings(checkinterval=5.0), (WEB,))


def test_same_config_has_no_changes() -> None:
    assert diff_configs(CFG, replace(CFG, source="other-name.cf")) == []


def test_everything_is_added_against_no_config() -> None:
    assert diff_configs(None, CFG) == [
        "~ global checkinterval 10.0 -> 5.0",
        "+ virtual TCP 203.0.113.10:80 (wrr, 2 real servers)",
        "  + real 192.0.2.11:80 gate 10",
        "  + real 192.0.2.12:80 gate 20",
    ]


def test_changes_per_virtual_and_real() -> None:
    web2 = replace(
        WEB,
        scheduler="wlc",
        reals=(
            RealServer("192.0.2.11", 80, Forwarding.GATE, 15),
            RealServer("192.0.2.13", 80, Forwarding.MASQ, 5),
        ),
    )
    dns = VirtualService(Protocol.UDP, "203.0.113.10", 53)
    new = Config(GlobalSettings(checkinterval=5.0, quiescent=True), (web2, dns))
    assert diff_configs(CFG, new) == [
        "~ global quiescent False -> True",
        "~ virtual TCP 203.0.113.10:80: scheduler 'wrr' -> 'wlc'",
        "  ~ real 192.0.2.11:80: weight 10 -> 15",
        "  + real 192.0.2.13:80 masq 5",
        "  - real 192.0.2.12:80 gate 20",
        "+ virtual UDP 203.0.113.10:53 (wrr, 0 real servers)",
    ]
    assert diff_configs(new, CFG)[-1] == "- virtual UDP 203.0.113.10:53 (0 real servers)"
