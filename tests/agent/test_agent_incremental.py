"""The per-event path: the core renders and reconciles only the services an event touched
(``Ready.changed``), within them only the real servers it touched (``ServiceChanges.deltas``), the
dataplanes apply just those, and the digest waits until after the ack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvs_events.agent.core import ApplyCore, Policy, Ready
from lvs_events.agent.dataplane import reconcile, reconcile_changed
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.domain.config import CheckSettings, Config, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    Event,
    Leadership,
    LeadershipChange,
    RealServerHealth,
)
from lvs_events.domain.render import render
from lvs_events.domain.table import (
    Dest,
    Op,
    Service,
    ServiceChanges,
    Table,
    apply_ops,
    diff,
    diff_services,
    same_service,
)
from lvs_events.errors import DataplaneError
from tests.agent.helpers import applied, cfg_event, ev
from tests.domain.strategies import event_logs, render_event_logs

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
    from lvs_events.agent.dataplane.ipvs import IpvsDataplane  # pyroute2 is optional

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


# --- the per-real path: deltas from the renderer to the memory dataplane ---------------------------


async def _carry_out(core: ApplyCore, dp: MemoryDataplane, now: float) -> Ready | None:
    """One Ready, carried out as the shell does it (the per-event path, else the whole table)."""
    r = core.ready(now, caught_up=True)
    if r is None or r.desired is None:
        return r
    if r.changed is not None:
        _ops, ok = await reconcile_changed(dp, r.changed)
        if not ok:
            await reconcile(dp, r.desired)
    else:
        await reconcile(dp, r.desired)
    core.advance(r, now, actual_digest=(await dp.dump()).digest(), published=True)
    return r


@settings(max_examples=150, deadline=None)
@given(render_event_logs(unique=True), st.data())
def test_the_memory_dataplane_follows_the_render_by_deltas(events: list[Event], data: st.DataObject) -> None:
    """Any log (shared destinations, fallbacks, expiring overrides, leader and config changes),
    folded in any batches, carried out through the memory dataplane's reconcile_services: it
    always holds exactly the render, and nothing is left to retry."""

    async def go() -> None:
        core = ApplyCore("lb1", policy=POLICY)
        dp = MemoryDataplane()
        for i, e in enumerate(events):
            core.step(e)
            if i + 1 < len(events) and not data.draw(st.booleans(), label="ready now"):
                continue
            await _carry_out(core, dp, float(i))
            assert core.applied_table is not None
            assert (await dp.dump()).digest() == render(core.state).digest()
            assert same_table(dp.table, render(core.state))

    asyncio.run(go())


def same_table(a: Table, b: Table) -> bool:
    """Equal as the kernel sees them: the same services by key, each the same (in any order)."""
    have = {s.key: s for s in a.services}
    return len(have) == len(a.services) == len(b.services) and all(
        same_service(have.get(s.key), s) for s in b.services
    )


def _one_big_service(n: int) -> Config:
    reals = tuple(RealServer(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 80) for i in range(n))
    return Config(virtuals=(VirtualService(Protocol.TCP, "203.0.113.1", 80, reals=reals),))


def test_one_verdict_in_a_big_service_is_one_operation_by_delta() -> None:
    async def go() -> None:
        cfg = _one_big_service(2_000)
        v = cfg.virtuals[0]
        core = ApplyCore("lb1", policy=POLICY)
        dp = MemoryDataplane()
        core.step(cfg_event(1, cfg))
        rev = 1
        for r in v.reals:  # every server up, one event each
            rev += 1
            core.step(ev(RealServerHealth(v.key, r.key, True, "lb1"), rev))
        await _carry_out(core, dp, 0.0)  # the first reconcile: the whole table
        assert len(dp.table.services[0].dests) == 2_000
        for n, r in enumerate(v.reals[:3]):
            rev += 1
            core.step(ev(RealServerHealth(v.key, r.key, False, "lb1"), rev))  # quiescent=no: removed
            ready = core.ready(1.0 + n, caught_up=True)
            assert ready is not None
            assert isinstance(ready.changed, ServiceChanges)
            delta = ready.changed.deltas[v.key]
            assert delta.base is core.applied_table.services[0]  # type: ignore[union-attr]
            assert dict(delta.dests) == {r.key: None}
            ops, ok = await reconcile_changed(dp, ready.changed)
            assert ok
            assert [str(o) for o in ops] == [f"del-dest {v.key} -> {r.key} w=1"]
            # after the whole-table reconcile the dataplane cannot know the base yet: the first
            # change is diffed whole (and makes the base known), the next ones go by delta
            assert dp.delta_services == n
            core.advance(ready, 1.0 + n, actual_digest=ready.desired_digest, published=True)
        assert (await dp.dump()).digest() == render(core.state).digest()

    asyncio.run(go())


def test_a_delta_on_another_base_is_diffed_whole() -> None:
    """A service changed behind the per-event path (here: replaced) is not patched by a delta."""

    async def go() -> None:
        cfg = _one_big_service(10)
        v = cfg.virtuals[0]
        core = ApplyCore("lb1", policy=POLICY)
        dp = MemoryDataplane()
        core.step(cfg_event(1, cfg))
        await _carry_out(core, dp, 0.0)
        for n in range(3):
            core.step(ev(RealServerHealth(v.key, v.reals[n].key, True, "lb1"), 2 + n))
            await _carry_out(core, dp, 1.0 + n)
        assert dp.delta_services == 2  # the first after the whole table is diffed whole
        dp.table = Table((replace(dp.table.services[0], dests=()),))  # somebody emptied it
        core.step(ev(RealServerHealth(v.key, v.reals[3].key, True, "lb1"), 5))
        await _carry_out(core, dp, 4.0)
        assert dp.delta_services == 2  # diffed whole: all four servers are back
        assert [d.key for d in dp.table.services[0].dests] == [r.key for r in v.reals[:4]]

    asyncio.run(go())


# --- the memory dataplane: apply_ops semantics, all or nothing; the files ------------------------

_SVC = [Service(Protocol.TCP, "203.0.113.1", 80), Service(Protocol.TCP, "203.0.113.2", 80, scheduler="rr")]
_DESTS = [Dest("192.0.2.1", 80), Dest("192.0.2.1", 80, weight=5), Dest("192.0.2.2", 80)]


@st.composite
def _ops(draw: st.DrawFn) -> Op:
    kind = draw(
        st.sampled_from(["add-service", "edit-service", "del-service", "add-dest", "edit-dest", "del-dest"])
    )
    svc = draw(st.sampled_from(_SVC))
    if kind.endswith("-service"):
        return Op(kind, replace(svc, scheduler=draw(st.sampled_from(["wrr", "rr"]))))
    return Op(kind, svc, draw(st.sampled_from(_DESTS)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_ops(), max_size=8), max_size=6))
def test_the_memory_dataplane_applies_as_apply_ops(batches: list[list[Op]]) -> None:
    async def go() -> None:
        dp = MemoryDataplane()
        table = Table()
        for ops in batches:
            error = ""
            try:
                want = apply_ops(table, ops)
            except ValueError as e:
                error = str(e)
            if error:
                with pytest.raises(DataplaneError, match="refused") as raised:
                    await dp.apply(ops)
                assert error in str(raised.value)  # the same first refusal
                assert dp.table == table  # all or nothing
                continue
            await dp.apply(ops)
            table = want
            assert dp.table == table
            assert await dp.dump() == table

    asyncio.run(go())


def test_the_files_follow_a_burst_in_one_write_and_are_paced(tmp_path: Path) -> None:
    async def go() -> None:
        dp = MemoryDataplane(tmp_path, write_cost_factor=1e6)  # after a write, the next waits
        table = render(_applied_core().state)
        for op in diff(Table(), table):  # a burst: no yield between the applies
            await dp.apply([op])
        async with asyncio.timeout(30):  # the write (four fsyncs) runs in a thread: wait for it
            while dp.files_written == 0:  # noqa: ASYNC110 -- a counter of a thread's work, no event
                await asyncio.sleep(0.01)
        assert dp.files_written == 1  # one write for the whole burst
        assert json.loads((tmp_path / "table.json").read_bytes()) == dp.table.to_json()
        svc = table.services[0]
        await dp.apply([Op("edit-dest", svc, replace(svc.dests[0], weight=42))])
        for _ in range(5):
            await asyncio.sleep(0)
        assert dp.files_written == 1  # paced: not yet
        await dp.flush()
        assert dp.files_written == 2
        assert json.loads((tmp_path / "table.json").read_bytes()) == dp.table.to_json()
        assert (tmp_path / "table.txt").read_text() == dp.format()
        await dp.close()
        reloaded = MemoryDataplane(tmp_path)
        assert reloaded.table.digest() == dp.table.digest()  # the file is in canonical order

    asyncio.run(go())
