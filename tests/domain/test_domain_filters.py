"""The one event filter (lvs_events.domain.filters): its rule, example by example and as properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvs_events.domain.config import Config, Family, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    PAYLOAD_TYPES,
    AdminAction,
    AdminOverride,
    ConfigApplied,
    DataplaneDrift,
    Event,
    Leadership,
    LeadershipChange,
    Payload,
    RealServerHealth,
    TableApplied,
)
from lvs_events.domain.filters import EventFilter, InvalidFilter, endpoint_forms, virtual_forms
from tests.domain.strategies import event_logs

V4 = "TCP 203.0.113.10:80"
V6 = "TCP [2001:db8::10]:443"


def _e(payload: Payload, origin: str = "master") -> Event:
    return Event("01J0", "c1", origin, "alice", "", 1000.0, payload, revision=7)


def _config(*virtuals: VirtualService) -> ConfigApplied:
    return ConfigApplied(Config(virtuals=virtuals))


WEB = VirtualService(Protocol.TCP, "203.0.113.10", 80, reals=(RealServer("192.0.2.11", 80),))
WEB6 = VirtualService(
    Protocol.TCP, "2001:db8::10", 443, family=Family.INET6, reals=(RealServer("2001:db8::21", 443),)
)
MARKED = VirtualService(Protocol.FWM, None, 0, fwmark=5, reals=(RealServer("192.0.2.12", 80),))


def test_the_empty_filter_matches_everything() -> None:
    f = EventFilter()
    assert f.everything
    assert f(_e(TableApplied("slave", 3, "d")))


@pytest.mark.parametrize("vip", [V4, "203.0.113.10:80", "203.0.113.10"])
def test_a_vip_as_key_endpoint_or_address(vip: str) -> None:
    health = _e(RealServerHealth(V4, "192.0.2.11:80", True, "slave"))
    assert EventFilter(virtuals=[vip])(health)
    assert not EventFilter(virtuals=["203.0.113.1"])(health)
    assert not EventFilter(virtuals=["203.0.113.10:8"])(health)
    assert not EventFilter(virtuals=["UDP 203.0.113.10:80"])(health)


@pytest.mark.parametrize("vip", [V6, "[2001:db8::10]:443", "2001:db8::10"])
def test_an_ipv6_vip_as_key_endpoint_or_address(vip: str) -> None:
    assert EventFilter(virtuals=[vip])(_e(AdminOverride(V6, "[2001:db8::21]:443", AdminAction.DRAIN)))


@pytest.mark.parametrize("real", ["192.0.2.11:80", "192.0.2.11"])
def test_a_real_as_endpoint_or_address(real: str) -> None:
    e = _e(AdminOverride(V4, "192.0.2.11:80", AdminAction.DRAIN))
    assert EventFilter(reals=[real])(e)
    assert not EventFilter(reals=["192.0.2.1"])(e)
    assert EventFilter(reals=["2001:db8::21"])(_e(AdminOverride(V6, "[2001:db8::21]:443", AdminAction.DRAIN)))


def test_config_applied_matches_the_services_and_reals_it_defines() -> None:
    cfg = _e(_config(WEB, WEB6, MARKED))
    assert EventFilter(virtuals=["203.0.113.10"])(cfg)
    assert EventFilter(virtuals=["2001:db8::10"])(cfg)
    assert EventFilter(virtuals=["FWM 5"])(cfg)
    assert not EventFilter(virtuals=["203.0.113.99"])(cfg)
    assert EventFilter(reals=["192.0.2.12"])(cfg)
    # both dimensions: one service must define both (the FWM service has 192.0.2.12, not WEB)
    assert not EventFilter(virtuals=["203.0.113.10"], reals=["192.0.2.12"])(cfg)
    assert EventFilter(virtuals=["FWM 5"], reals=["192.0.2.12:80"])(cfg)


def test_payloads_without_a_service_never_match_a_service_or_real_filter() -> None:
    for payload in (TableApplied("slave", 3, "d"), Leadership("slave", LeadershipChange.ACQUIRED, 2)):
        assert not EventFilter(virtuals=["203.0.113.10"])(_e(payload))
        assert not EventFilter(reals=["192.0.2.11"])(_e(payload))


def test_node_is_the_origin_or_the_node_the_payload_is_about() -> None:
    seen_by_slave = _e(RealServerHealth(V4, "192.0.2.11:80", True, "slave"), origin="relay")
    assert EventFilter(nodes=["slave"])(seen_by_slave)
    assert EventFilter(nodes=["relay"])(seen_by_slave)
    assert not EventFilter(nodes=["master"])(seen_by_slave)
    for payload in (
        TableApplied("slave", 3, "d"),
        Leadership("slave", LeadershipChange.LOST, 2),
        DataplaneDrift("slave", 3, ()),
    ):
        assert EventFilter(nodes=["slave"])(_e(payload, origin="ops"))
    assert not EventFilter(nodes=["slave"])(_e(AdminOverride(V4, "192.0.2.11:80", AdminAction.DRAIN)))


def test_or_within_a_dimension_and_across_dimensions() -> None:
    e = _e(RealServerHealth(V4, "192.0.2.11:80", False, "slave"))
    assert EventFilter(types=["TableApplied", "RealServerHealth"])(e)
    assert EventFilter(nodes=["x", "slave"], reals=["192.0.2.11", "192.0.2.99"])(e)
    assert not EventFilter(nodes=["slave"], reals=["192.0.2.99"])(e)
    assert not EventFilter(types=["RealServerHealth"], virtuals=["203.0.113.20"])(e)


def test_type_names_and_field_names_are_one_type() -> None:
    assert EventFilter(types=["real_server_health"]) == EventFilter(types=["RealServerHealth"])
    assert EventFilter(types=["config_applied"]).types == frozenset({"ConfigApplied"})
    assert EventFilter(types=["dataplane_drift"])(_e(DataplaneDrift("slave", 3, ())))


def test_an_unknown_type_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidFilter) as err:
        EventFilter(types=["RealServerHealth", "Healthz"])
    assert "Healthz" in str(err.value)
    for name in PAYLOAD_TYPES.values():
        assert name in str(err.value)


def test_a_filter_is_an_immutable_value() -> None:
    f = EventFilter(nodes=["a"])
    with pytest.raises(AttributeError):
        f.nodes = frozenset()  # type: ignore[misc]
    assert {f, EventFilter(nodes=("a",))} == {f}
    assert repr(f) == "EventFilter(nodes=['a'])"


def test_forms() -> None:
    assert endpoint_forms("[2001:db8::21]:80") == {"[2001:db8::21]:80", "2001:db8::21"}
    assert virtual_forms("FWM 5 IPv6") == {"FWM 5 IPv6"}
    assert virtual_forms("UDP 203.0.113.10:53") == {"UDP 203.0.113.10:53", "203.0.113.10:53", "203.0.113.10"}


# --- properties --------------------------------------------------------------------------------

_NAMES = sorted(PAYLOAD_TYPES.values())
_dims = st.fixed_dictionaries(
    {
        "types": st.lists(st.sampled_from(_NAMES), max_size=2),
        "nodes": st.lists(st.sampled_from(["master", "slave", "ops"]), max_size=2),
        "virtuals": st.lists(
            st.sampled_from(["203.0.113.10", "TCP 203.0.113.20:80", "2001:db8::10", "FWM 3"]), max_size=2
        ),
        "reals": st.lists(st.sampled_from(["192.0.2.11", "192.0.2.12:80", "2001:db8::21"]), max_size=2),
    }
)


@given(event_logs(max_size=20), _dims)
def test_a_filter_is_the_and_of_its_dimensions(log: list[Event], dims: dict[str, list[str]]) -> None:
    whole = EventFilter(**dims)
    parts = [EventFilter(**{k: v}) for k, v in dims.items()]
    for e in log:
        if not isinstance(e.payload, ConfigApplied):
            assert whole(e) == all(p(e) for p in parts)
            continue
        # a configuration: one of its services must match the vip and the real dimensions together
        service_wise = EventFilter(virtuals=dims["virtuals"], reals=dims["reals"])
        one_service = any(
            service_wise(replace(e, payload=ConfigApplied(Config(virtuals=(v,)))))
            for v in e.payload.config.virtuals
        )
        head = EventFilter(types=dims["types"], nodes=dims["nodes"])
        assert whole(e) == (head(e) and (service_wise.everything or one_service))
        assert not whole(e) or all(p(e) for p in parts)


@given(event_logs(max_size=20), _dims)
def test_each_dimension_is_the_or_of_its_values(log: list[Event], dims: dict[str, list[str]]) -> None:
    for key, values in dims.items():
        if not values:
            continue
        together = EventFilter(**{key: values})
        alone = [EventFilter(**{key: [v]}) for v in values]
        for e in log:
            assert together(e) == any(f(e) for f in alone)


@given(event_logs(max_size=20))
def test_every_event_matches_its_own_type_origin_and_service(log: list[Event]) -> None:
    for e in log:
        assert EventFilter(types=[e.type_name], nodes=[e.origin])(e)
        p = e.payload
        if isinstance(p, (RealServerHealth, AdminOverride)):
            assert EventFilter(virtuals=[p.virtual], reals=[p.real])(e)
        if isinstance(p, ConfigApplied):
            for v in p.config.virtuals:
                assert EventFilter(virtuals=[v.key])(e)
                for r in v.reals:
                    assert EventFilter(virtuals=sorted(virtual_forms(v.key)), reals=[r.address])(e)
