"""The apply loop's decision step (lvs_events.agent.core): pure, driven with explicit times."""

from __future__ import annotations

from lvs_events.agent.core import ApplyCore, Policy, Ready, render_full
from lvs_events.domain.render import render
from lvs_events.domain.snapshot import Snapshot
from lvs_events.domain.state import fold_all
from tests.agent.helpers import REALS, applied, cfg_event, drain, ev, health

POLICY = Policy(persist_interval=1.0, publish_delay=1.0, republish_after=10.0, resync_interval=60.0)


def _do(core: ApplyCore, ready: Ready, now: float, *, ok: bool = True) -> None:
    """What a well-behaved shell does: the dataplane ends up exactly as desired."""
    digest = ready.desired_digest if ok else "0" * 64
    core.advance(ready, now, actual_digest=digest if ready.desired is not None else None, published=True)


def test_nothing_to_do_before_anything_happens_except_the_first_reconcile() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.desired is not None
    assert not r.desired.services
    assert r.publish is not None  # the node has never reported a digest
    _do(core, r, 0.0)
    assert core.ready(0.1, caught_up=True) is None


def test_a_backlog_is_applied_once_not_per_event() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    for rev, real in enumerate(REALS * 100, start=2):
        core.step(ev(health(real, rev % 2 == 0), rev))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.revision == 301
    assert r.desired == render(core.state)
    assert r.persist
    assert r.publish is not None
    assert r.publish.revision == 301
    assert r.publish.digest == r.desired_digest
    _do(core, r, 0.0)
    assert core.ready(0.0, caught_up=True) is None
    assert core.applied_revision == 301
    assert core.persisted_revision == 301
    assert core.events_folded == 301


def test_table_applied_waits_until_caught_up_or_publish_delay() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    core.step(ev(health(REALS[0], True), 2))
    r = core.ready(0.0, caught_up=False)
    assert r is not None
    assert r.desired is not None
    assert r.publish is None
    _do(core, r, 0.0)
    assert core.next_deadline() == 1.0  # publish_delay after it became pending
    assert core.ready(0.5, caught_up=False) is None
    r = core.ready(1.0, caught_up=False)
    assert r is not None
    assert r.publish is not None
    assert r.desired is None
    _do(core, r, 1.0)
    assert core.ready(1.1, caught_up=True) is None  # in flight: not again


def test_own_table_applied_in_the_log_stops_publishing_and_needs_no_reconcile() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.publish is not None
    _do(core, r, 0.0)
    core.step(ev(applied("lb1", 1, r.publish.digest), 2))  # our report comes back through the log
    r2 = core.ready(0.1, caught_up=True)
    # the table is unchanged: no reconcile, no publish; only (later) a persist of revision 2
    assert r2 is None or (r2.desired is None and r2.publish is None)
    assert core.reported_digest() == r.publish.digest
    # even after republish_after: the log has it, nothing to republish
    r3 = core.ready(20.0, caught_up=True)
    assert r3 is None or r3.publish is None


def test_another_nodes_report_changes_nothing_for_us() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    _do(core, r, 0.0)
    core.step(ev(applied("lb2", 1, "a" * 64), 2))
    r2 = core.ready(0.1, caught_up=True)
    assert r2 is None or r2.desired is None


def test_unverified_reconcile_is_retried_and_not_published() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    _do(core, r, 0.0, ok=False)
    assert core.ready(0.5, caught_up=True) is None  # waits retry_after
    r2 = core.ready(1.0, caught_up=True)
    assert r2 is not None
    assert r2.desired is not None


def test_reconcile_failure_backs_off_then_retries() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    core.reconcile_failed(r, 0.0)
    assert core.next_deadline() == 1.0
    early = core.ready(0.2, caught_up=True)
    assert early is not None
    assert early.desired is None
    _do(core, early, 0.2)
    r2 = core.ready(1.0, caught_up=True)
    assert r2 is not None
    assert r2.desired is not None
    assert r2.publish is not None


def test_periodic_resync_reconciles_an_unchanged_table() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    _do(core, r, 0.0)
    core.step(ev(applied("lb1", 1, r.desired_digest), 2))
    r2 = core.ready(0.0, caught_up=True)
    if r2 is not None:
        _do(core, r2, 0.0)
    r_persist = core.ready(1.0, caught_up=True)
    assert r_persist is not None
    assert r_persist.persist
    assert r_persist.desired is None
    _do(core, r_persist, 1.0)
    assert core.ready(59.0, caught_up=True) is None
    r3 = core.ready(60.0, caught_up=True)
    assert r3 is not None
    assert r3.desired is not None
    assert r3.publish is None


def test_persist_is_rate_limited_when_the_table_does_not_change() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.persist
    _do(core, r, 0.0)
    core.step(ev(applied("lb2", 1, "b" * 64), 2))  # no table change
    assert core.ready(0.5, caught_up=True) is None
    assert core.next_deadline() == 1.0
    r2 = core.ready(1.0, caught_up=True)
    assert r2 is not None
    assert r2.persist
    assert r2.desired is None
    assert r2.revision == 2


def test_persist_is_paced_by_interval_and_by_what_a_write_costs() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.persist
    _do(core, r, 0.0)
    core.persist_took(0.5)  # a big state: half a second to write
    core.step(ev(health(REALS[0], True), 2))  # the table changes: reconcile now, persist later
    r2 = core.ready(0.1, caught_up=True)
    assert r2 is not None
    assert r2.desired is not None
    assert not r2.persist
    _do(core, r2, 0.1)
    early = core.ready(4.9, caught_up=True)  # 10 x 0.5 s have not passed yet
    assert early is None or not early.persist
    r3 = core.ready(5.0, caught_up=True)
    assert r3 is not None
    assert r3.persist
    assert r3.revision == 2


def test_snapshot_replaces_older_state_and_is_ignored_when_behind() -> None:
    events = [cfg_event(1), ev(health(REALS[0], True), 2), ev(drain(REALS[0]), 3)]
    full = fold_all(ApplyCore("x").state, events)
    core = ApplyCore("lb1", policy=POLICY)
    core.step(events[0])
    core.step(Snapshot(3, full, render(full).digest()))
    assert core.state is full
    assert core.snapshots_loaded == 1
    core.step(Snapshot(2, fold_all(ApplyCore("x").state, events[:2]), ""))
    assert core.state is full  # an older snapshot never goes back
    core.step(events[2])  # already folded: ignored
    assert core.state.revision == 3
    assert core.events_folded == 1


def test_restart_from_stored_state_starts_there() -> None:
    events = [cfg_event(1), ev(health(REALS[1], True), 2)]
    stored = fold_all(ApplyCore("x").state, events)
    core = ApplyCore("lb1", stored, policy=POLICY)
    assert core.start_revision == 2
    assert core.persisted_revision == 2
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.desired is not None
    assert not r.persist


def test_same_items_give_the_same_decisions_on_two_nodes() -> None:
    events = [cfg_event(1), *(ev(health(REALS[i % 3], i % 4 != 0), i) for i in range(2, 50))]
    a, b = ApplyCore("lb1", policy=POLICY), ApplyCore("lb2", policy=POLICY)
    for e in events:
        a.step(e)
    for e in events[:20]:
        b.step(e)
    rb = b.ready(0.0, caught_up=False)
    assert rb is not None
    _do(b, rb, 0.0)
    for e in events[20:]:
        b.step(e)
    ra, rb2 = a.ready(0.0, caught_up=True), b.ready(0.0, caught_up=True)
    assert ra is not None
    assert rb2 is not None
    assert ra.desired_digest == rb2.desired_digest


def test_table_applied_is_rate_limited_while_the_table_keeps_changing() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.publish is not None
    _do(core, r, 0.0)
    core.step(ev(health(REALS[0], True), 2))  # the table changes again at once
    r2 = core.ready(0.1, caught_up=True)
    assert r2 is not None
    assert r2.desired is not None
    assert r2.publish is None  # applied, but not reported yet: min_publish_interval
    _do(core, r2, 0.1)
    r3 = core.ready(0.5, caught_up=True)
    assert r3 is not None
    assert r3.publish is not None
    assert r3.publish.digest == r2.desired_digest


def test_a_write_outside_ready_is_recorded_so_nothing_is_persisted_twice() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    _do(core, r, 0.0)
    core.step(ev(applied("lb2", 1, "b" * 64), 2))
    assert core.persisted_revision == 1
    core.persisted(2, 0.2)  # the shell's final write on drain
    assert core.persisted_revision == 2
    later = core.ready(5.0, caught_up=True)
    assert later is None or not later.persist
    core.persisted(1, 0.3)  # an older write never moves it back
    assert core.persisted_revision == 2


def test_a_whole_table_render_can_be_made_elsewhere_and_adopted() -> None:
    """The runtime renders a new configuration in a thread (render_full) and hands it over."""
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    assert core.full_render_due()
    prepared = render_full(core.state)
    core.adopt(prepared)
    assert not core.full_render_due()  # the prepared one will do
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.desired is prepared.renderer.table
    assert r.desired == render(core.state)
    assert r.desired_digest == render(core.state).digest()
    _do(core, r, 0.0)
    # the same configuration: one real server's event is rendered incrementally, on the spot
    core.step(ev(health(REALS[0], True), 2))
    assert not core.full_render_due()
    r = core.ready(0.1, caught_up=True)
    assert r is not None
    assert r.desired == render(core.state)


def test_a_render_of_an_older_state_is_not_adopted() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    stale = render_full(core.state)
    core.step(ev(health(REALS[0], True), 2))  # the state moved on while the thread rendered
    core.adopt(stale)
    assert core.full_render_due()
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.desired is not stale.renderer.table
    assert r.desired == render(core.state)
    assert r.desired_digest == render(core.state).digest()
