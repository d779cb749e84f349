"""Every RPC of the coordinator and of an agent's Peer service, fuzzed against live processes.

A few thousand generated and mutated messages here (``bench/fuzz_rpc.py`` sends 100,000): no
process dies, no call ends in ``UNKNOWN``/``INTERNAL`` (an exception that escaped a handler),
malformed bytes get ``INVALID_ARGUMENT``, a Publish stream answers every event it was sent, and
every event that made it into the log passes the domain's validation.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from lvs_events import wire
from lvs_events.domain.validate import validate_event
from tests.fuzz.rpcfuzz import (
    Case,
    Tally,
    case_strategy,
    live_stack,
    read_whole_log,
    rpcs,
    rss_kib,
    run_cases,
)

CASES = 1_200


def draw_cases(count: int) -> list[Case]:
    table = rpcs()
    out: list[Case] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case_strategy(table))
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


def test_the_rpc_table_covers_every_service() -> None:
    paths = {r.path for r in rpcs()}
    services = {p.split("/")[1] for p in paths}
    assert services == {"lvs_events.v1.Coordinator", "lvs_events.v1.LeaderElection", "lvs_events.v1.Peer"}
    assert "/lvs_events.v1.Coordinator/Publish" in paths
    assert "/lvs_events.v1.Peer/Handover" in paths


@pytest.mark.slow
def test_every_rpc_survives_generated_and_mutated_messages(etcd_bin: str) -> None:
    cases = draw_cases(CASES)
    assert {c.rpc.path for c in cases} == {r.path for r in rpcs()}, "every RPC got some messages"
    with live_stack(etcd_bin) as stack:
        rss_before = rss_kib(stack.coordinator.pid)
        tally = Tally()
        asyncio.run(run_cases(stack, cases, tally))
        alive = stack.alive()
        assert alive == {"coordinator": True, "agent": True}, (
            f"{alive}\n{stack.log_tail('coordinator')}\n{stack.log_tail('agent')}"
        )
        rss_after = rss_kib(stack.coordinator.pid)
        events = asyncio.run(read_whole_log(stack.coordinator_address))
    assert tally.sent == CASES
    assert tally.findings == [], "\n".join(tally.findings[:20])
    # Malformed bytes are refused as such, not as something else.
    assert tally.codes["INVALID_ARGUMENT"] > 0
    invalid = []
    for ev in events:
        try:
            validate_event(wire.event_from_pb(ev))
        except Exception as e:  # any failure of a stored event is a finding
            invalid.append(f"revision {ev.revision}: {e}")
    assert invalid == []
    # No unbounded growth: a few thousand hostile calls leave the coordinator's memory bounded.
    assert rss_after < rss_before + 64 * 1024, (rss_before, rss_after)
