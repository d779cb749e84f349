"""The drills end to end, in network namespaces on this host: two directors, a 3-member etcd
(one member in each director namespace, one in a witness), a client probing the VIP.

Needs root and ``ip netns`` (skipped otherwise; under CI a missing capability is a failure).
No IPVS here: the service on the VIP is a TCP responder in each director namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lvs_events.drills.drill import (
    DrillReport,
    drill_etcd_member_down,
    drill_kill_active,
    drill_partition_active,
    drill_switchover,
)
from lvs_events.drills.lab import NetnsLab, netns_available
from tests.conftest import in_ci

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
async def lab() -> AsyncIterator[NetnsLab]:
    why = netns_available()
    if why:
        if in_ci():
            pytest.fail(f"netns drills cannot run: {why}; CI is set, so this is an error", pytrace=False)
        pytest.skip(why)
    async with NetnsLab() as running:
        yield running


def common(r: DrillReport) -> None:
    assert not r.two_holders, r.to_json()
    # the observer on the link asked for the VIP all along; no request had two answers
    assert r.arp_requests > 0, r.to_json()
    assert r.two_arp_answers is False, r.to_json()
    assert r.digests_equal, r.to_json()
    assert r.new_active, r.to_json()


async def test_kill_active(lab: NetnsLab) -> None:
    r = await drill_kill_active(lab)
    common(r)
    assert r.new_active != r.old_active
    assert r.new_term > r.old_term
    assert r.fenced_refused, "an event with the old active's term must be refused"
    assert r.first_connection is not None


async def test_switchover(lab: NetnsLab) -> None:
    r = await drill_switchover(lab)
    common(r)
    assert r.new_active != r.old_active, r.to_json()
    assert r.fenced_refused
    assert r.vip is not None
    assert r.first_connection is not None
    # make-before-break, as the namespaces' `ip monitor` saw it: the old active put its silent
    # copy on lo before the VIP left its eth0, and dropped it only after the new active held it
    old, new = r.old_active, r.new_active
    silent = [(t, held) for t, n, held in lab.silent_log if n == old and t >= r.started]
    assert [held for _, held in silent] == [True, False], lab.silent_log
    left = [t for t, n, held in lab.holder_log() if n == old and not held and t >= r.started]
    gained = [t for t, n, held in lab.holder_log() if n == new and held and t >= r.started]
    assert silent[0][0] <= left[0] <= gained[0] <= silent[1][0], (lab.silent_log, lab.holder_log())


async def test_partition_active(lab: NetnsLab) -> None:
    r = await drill_partition_active(lab)
    common(r)
    assert r.new_active != r.old_active, r.to_json()
    assert r.fenced_refused


async def test_etcd_member_down(lab: NetnsLab) -> None:
    r = await drill_etcd_member_down(lab)
    common(r)
    assert r.new_active == r.old_active, r.to_json()  # quorum kept: no failover
    assert r.failed_connections == 0, r.to_json()
