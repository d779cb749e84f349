"""Diff, apply, digest and the ipvsadm layout (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lvs_events.domain.config import Forwarding, Protocol
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold_all
from lvs_events.domain.table import Dest, Service, Table, apply_ops, diff, format_ipvsadm, table_from_json
from tests.domain.strategies import event_logs


def _tables() -> st.SearchStrategy[Table]:
    return event_logs(max_size=30).map(lambda evs: render(fold_all(State(), evs)))


@settings(max_examples=150, deadline=None)
@given(_tables(), _tables())
def test_applying_the_diff_reaches_the_desired_table(actual: Table, desired: Table) -> None:
    ops = diff(actual, desired)
    assert apply_ops(actual, ops).digest() == desired.digest()
    assert diff(apply_ops(actual, ops), desired) == []


@settings(max_examples=100, deadline=None)
@given(_tables(), _tables())
def test_diff_adds_before_it_removes(actual: Table, desired: Table) -> None:
    kinds = [op.kind for op in diff(actual, desired)]
    order = {
        "add-service": 0,
        "add-dest": 0,
        "edit-service": 1,
        "edit-dest": 1,
        "del-dest": 2,
        "del-service": 3,
    }
    assert [order[k] for k in kinds] == sorted(order[k] for k in kinds)


@settings(max_examples=100, deadline=None)
@given(_tables())
def test_json_round_trip_keeps_the_digest(t: Table) -> None:
    assert table_from_json(t.to_json()).digest() == t.digest()


def test_weight_change_is_one_edit() -> None:
    a = Table((Service(Protocol.TCP, "203.0.113.10", 80, dests=(Dest("192.0.2.11", 80, weight=10),)),))
    b = Table((Service(Protocol.TCP, "203.0.113.10", 80, dests=(Dest("192.0.2.11", 80, weight=0),)),))
    assert [str(op) for op in diff(a, b)] == ["edit-dest TCP 203.0.113.10:80 -> 192.0.2.11:80 w=0"]


def test_digest_ignores_listing_order() -> None:
    d1, d2 = Dest("192.0.2.11", 80), Dest("192.0.2.12", 80)
    a = Table((Service(Protocol.TCP, "203.0.113.10", 80, dests=(d1, d2)),))
    b = Table((Service(Protocol.TCP, "203.0.113.10", 80, dests=(d2, d1)),))
    assert a.digest() == b.digest()


def test_ipvsadm_layout_matches_ipvsadm() -> None:
    t = Table(
        (
            Service(
                Protocol.TCP,
                "203.0.113.10",
                80,
                persistent=7200,
                dests=(
                    Dest("192.0.2.11", 80, Forwarding.GATE, 10),
                    Dest("192.0.2.12", 80, Forwarding.MASQ, 20),
                ),
            ),
            Service(
                Protocol.FWM,
                None,
                0,
                fwmark=5,
                scheduler="rr",
                dests=(Dest("192.0.2.13", 0, Forwarding.IPIP),),
            ),
        )
    )
    assert format_ipvsadm(t) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  203.0.113.10:80 wrr persistent 7200\n"
        "  -> 192.0.2.11:80                Route   10     0          0\n"
        "  -> 192.0.2.12:80                Masq    20     0          0\n"
        "FWM  5 rr\n"
        "  -> 192.0.2.13:0                 Tunnel  1      0          0\n"
    )
