"""The per-event path: the core renders and reconciles only the services an event touched
(``Ready.changed``), the dataplanes apply just those, and the digest waits until after the ack."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import ApplyCore, Policy, Ready
from agent.dataplane import reconcile_changed
from agent.dataplane.memory import MemoryDataplane
from lvs_events.domain.config import CheckSettings, Config, Protocol, RealServer, VirtualService
from lvs_events.domain.events import AdminAction, AdminOverride, Event, Leadership, LeadershipChange
from lvs_events.domain.render import render
from lvs_events.domain.table import Dest, Service, Table, apply_ops, diff, diff_services
from tests.agent.helpers import applied, cfg_event, ev
from tests.domain.strategies import event_logs

POLICY = Policy(persist_interval=1.0, publish_delay=1.0, republish_after=10.0, resync_interval=60.0)


def big_config(n: int = 20) -> Config:
    return Config(
        virtuals=tuple(
            VirtualService(
                Protocol.TCP,
                f"203.0.113.{i + 1}",
                80,
                reals=tuple(RealServer(f"192.0.2.{j + 1}", 80, weight=j + 1) for j in range(3)),
                check=CheckSettings(checktype="on"),
            )
            for i in range(n)
        )
    )


def vkey(i: int) -> str:
    return f"TCP 203.0.113.{i + 1}:80"


def _do(core: ApplyCore, ready: Ready, now: float) -> None:
    core.advance(
        ready, now, actual_digest=ready.desired_digest if ready.desired is not None else None, published=True
    )


def _applied_core() -> ApplyCore:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1, big_config()))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.changed is None  # the first reconcile is the whole table
    _do(core, r, 0.0)
    return core


def test_one_override_reconciles_one_service_and_publishes_after() -> None:
    core = _applied_core()
    core.step(ev(AdminOverride(vkey(7), "192.0.2.2:80", AdminAction.DRAIN), 2))
    r = core.ready(0.1, caught_up=True)
    assert r is not None
    assert r.desired == render(core.state)
    assert r.changed is not None
    assert list(r.changed) == [vkey(7)]
    assert r.changed[vkey(7)] == r.desired.services[7]
    assert r.publish is None  # decided after the ack, from the applied digest
    assert r.desired_digest == r.desired.digest()  # the lazy digest is the table's digest
    _do(core, r, 0.1)
    r2 = core.ready(0.6, caught_up=True)
    assert r2 is not None
    assert r2.desired is None
    assert r2.publish is not None
    assert r2.publish.digest == render(core.state).digest()


def test_several_events_between_readies_are_one_partial_reconcile() -> None:
    core = _applied_core()
    core.step(ev(AdminOverride(vkey(1), "192.0.2.1:80", AdminAction.DRAIN), 2))
    core.step(ev(AdminOverride(vkey(3), "192.0.2.1:80", AdminAction.WEIGHT, 9), 3))
    core.step(ev(applied("lb2", 1, "0" * 64), 4))  # touches nothing
    r = core.ready(0.1, caught_up=True)
    assert r is not None
    assert r.changed is not None
    assert sorted(r.changed) == [vkey(1), vkey(3)]
    assert r.desired_digest == render(core.state).digest()


def test_a_new_config_or_leader_or_a_failure_means_the_whole_table() -> None:
    core = _applied_core()
    core.step(cfg_event(2, big_config(21)))
    r = core.ready(0.1, caught_up=True)
    assert r is not None
    assert r.changed is None
    _do(core, r, 0.1)
    core.step(ev(Leadership("lb1", LeadershipChange.ACQUIRED, 1), 3))
    core.step(ev(AdminOverride(vkey(2), "192.0.2.1:80", AdminAction.DRAIN), 4))
    r = core.ready(0.2, caught_up=True)
    assert r is not None
    assert r.changed is None
    core.reconcile_failed(r, 0.2)
    r = core.ready(1.5, caught_up=True)  # the retry
    assert r is not None
    assert r.changed is None
    _do(core, r, 1.5)
    core.step(ev(AdminOverride(vkey(2), "192.0.2.1:80", AdminAction.ENABLE), 5))
    r = core.ready(1.6, caught_up=True)
    assert r is not None
    assert r.changed is not None  # back on the per-event path
    assert list(r.changed) == [vkey(2)]


def test_an_override_that_expires_is_re_rendered_when_the_clock_passes_it() -> None:
    core = _applied_core()
    wall = 1_700_000_000.0
    core.step(ev(AdminOverride(vkey(5), "192.0.2.1:80", AdminAction.DRAIN, 0, wall + 10), 2))
    r = core.ready(0.1, caught_up=True)
    assert r is not None
    _do(core, r, 0.1)
    core.step(ev(applied("lb2", 1, "0" * 64), 20))  # the log's clock moves past the expiry
    r = core.ready(0.2, caught_up=True)
    assert r is not None
    assert r.changed is not None
    assert list(r.changed) == [vkey(5)]
    assert r.desired == render(core.state)
    assert r.changed[vkey(5)].dests[0].weight == 1


def test_reconcile_changed_on_the_memory_dataplane() -> None:
    async def go() -> None:
        dp = MemoryDataplane()
        full = render(_applied_core().state)
        await dp.apply([])
        dp.table = full
        svc = full.services[4]
        edited = Service(svc.protocol, svc.address, svc.port, dests=(Dest("192.0.2.9", 80, weight=3),))
        ops, ok = await reconcile_changed(dp, {svc.key: edited})
        assert ok
        assert [str(o) for o in ops] == [
            f"add-dest {svc.key} -> 192.0.2.9:80 w=3",
            *(f"del-dest {svc.key} -> {d.key} w={d.weight}" for d in svc.dests),
        ]
        assert dp.table.service(svc.key) == edited
        assert dp.table.services[:4] == full.services[:4]

    asyncio.run(go())


# --- IpvsDataplane's per-event path on a fake netlink socket (no kernel needed) --------------------


class FakeSocket:
    """Records requests; dumps return what ``kernel`` holds."""

    def __init__(self, kernel: Table) -> None:
        self.kernel = kernel
        self.sent: list[int] = []
        self.dumps = 0
        self.opened = True

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def send(self, requests: Sequence[object]) -> list[object]:
        self.sent.append(len(requests))
        return []

    def dump_services(self) -> list[Service]:
        self.dumps += 1
        return [
            Service(s.protocol, s.address, s.port, s.fwmark, s.family, s.scheduler)
            for s in self.kernel.services
        ]

    def dump_dests(self, svc: Service) -> list[Dest]:
        found = self.kernel.service(svc.key)
        return list(found.dests) if found else []


def test_ipvs_reconcile_services_touches_only_the_named_services() -> None:
    pytest.importorskip("pyroute2")
    from agent.dataplane.ipvs import IpvsDataplane  # pyroute2 is optional

    async def go() -> None:
        full = render(_applied_core().state)
        dp = IpvsDataplane()
        fake = FakeSocket(full)
        dp._sock = fake  # type: ignore[assignment]
        ops, _ = await dp.reconcile(full)  # the first reconcile: one dump, nothing to do
        assert ops == []
        assert fake.dumps == 1
        svc = full.services[3]
        second = Dest(svc.dests[1].address, 80, weight=0)
        drained = Service(svc.protocol, svc.address, svc.port, dests=(svc.dests[0], second, *svc.dests[2:]))
        ops, ok = await dp.reconcile_services({svc.key: drained})
        assert ok
        assert [o.kind for o in ops] == ["edit-dest"]
        assert fake.sent == [1]  # one request, no dump
        assert fake.dumps == 1
        shadow = await dp.dump()
        assert shadow.service(svc.key) == drained
        assert sum(1 for s in shadow.services if s != full.service(s.key)) == 1
        await dp.close()

    asyncio.run(go())


@settings(max_examples=150, deadline=None)
@given(event_logs(), st.data())
def test_the_dataplane_always_ends_at_the_render(events: list[Event], data: st.DataObject) -> None:
    """Any log, folded in any batches; every Ready carried out the way the shell does (only the
    changed services on the per-event path): the dataplane holds exactly the render."""
    core = ApplyCore("lb1", policy=POLICY)
    table = Table()
    for i, e in enumerate(events):
        core.step(e)
        if i + 1 < len(events) and not data.draw(st.booleans(), label="ready now"):
            continue
        r = core.ready(float(i), caught_up=True)
        if r is None or r.desired is None:
            continue
        if r.changed is not None:
            have = {s.key: s for s in table.services}
            table = apply_ops(table, diff_services(have, r.changed))
        else:
            table = apply_ops(table, diff(table, r.desired))
        assert table.digest() == r.desired_digest
        core.advance(r, float(i), actual_digest=table.digest(), published=True)
        assert table.digest() == render(core.state).digest()
