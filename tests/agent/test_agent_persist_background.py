"""The agent's state is written in the background: the apply loop hands it to the persister and
goes on with the next event (a write of megabytes once held up every event behind it for a
second in the VM benchmark); the file is the canonical JSON, with the configuration's text
encoded once per configuration."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from lvs_events.agent.core import ApplyCore, Policy
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.persist import StateStore
from lvs_events.agent.runtime import Agent, AgentSettings, LatestWriter
from lvs_events.domain import codec
from lvs_events.domain.state import State, fold
from tests.agent.helpers import REALS, cfg_event, config, ev, health

POLICY = Policy(persist_interval=1.0, publish_delay=1.0, republish_after=10.0, resync_interval=60.0)


def test_no_second_write_is_asked_for_while_one_is_under_way() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    assert r.persist
    core.persist_started()  # the shell hands it to its writer, and reports the Ready without it
    core.advance(replace(r, persist=False), 0.0, actual_digest=r.desired_digest, published=True)
    assert core.persisting
    core.step(ev(health(REALS[0], True), 2))
    for now in (0.5, 5.0, 50.0):
        later = core.ready(now, caught_up=True)
        assert later is None or not later.persist
        if later is not None:
            core.advance(later, now, actual_digest=later.desired_digest, published=True)
    assert core.persisted_revision == 0
    deadline = core.next_deadline()
    assert deadline is None or deadline >= 60.0  # no wake-up for a write: its end is news itself
    core.persist_took(0.01)
    core.persisted(1, 50.0)
    assert not core.persisting
    assert core.persisted_revision == 1
    assert core.next_deadline() == 51.0
    r2 = core.ready(51.0, caught_up=True)
    assert r2 is not None
    assert r2.persist
    assert r2.revision == 2


def test_a_failed_background_write_is_asked_for_again() -> None:
    core = ApplyCore("lb1", policy=POLICY)
    core.step(cfg_event(1))
    r = core.ready(0.0, caught_up=True)
    assert r is not None
    core.persist_started()
    core.persist_failed(0.0)
    assert not core.persisting
    again = core.ready(1.0, caught_up=True)
    assert again is not None
    assert again.persist


def test_the_file_is_the_canonical_json_and_the_config_text_is_reused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = ApplyCore("x").state
    for e in (cfg_event(1), ev(health(REALS[0], True), 2), ev(health(REALS[1], False), 3)):
        state = fold(state, e)
        blob = store.encode("lb1", state, "d" * 64)
        doc = json.loads(blob)
        want = {
            "format": 1,
            "node": "lb1",
            "revision": state.revision,
            "digest": "d" * 64,
            "saved_at": doc["saved_at"],
            "state": codec.encode(state),
        }
        assert blob == json.dumps(want, sort_keys=True, separators=(",", ":")).encode()
    cached = store._config_text
    assert cached is not None
    assert cached[0] is state.config  # encoded once for the three writes
    other = fold(state, cfg_event(4, config(checktype="off")))
    doc = json.loads(store.encode("lb1", other, ""))
    assert doc["state"] == codec.encode(other)  # a new configuration: encoded again
    store._save("lb1", other, "")
    stored = store.load()
    assert stored is not None
    assert stored.state == other
    assert isinstance(stored.state, State)


async def test_latest_writer_writes_the_newest_item_one_at_a_time() -> None:
    written: list[int] = []
    gate = asyncio.Event()
    started = asyncio.Event()
    running = 0

    async def write(item: int) -> None:
        nonlocal running
        running += 1
        assert running == 1
        started.set()
        await gate.wait()
        written.append(item)
        running -= 1

    w: LatestWriter[int] = LatestWriter(write)
    task = asyncio.create_task(w.run())
    w.offer(1)
    async with asyncio.timeout(5):
        await started.wait()  # the writer has taken 1 and is blocked in write(1)
    assert w.busy
    for i in (2, 3, 4):  # while 1 is being written: only the newest is kept
        w.offer(i)
    gate.set()
    async with asyncio.timeout(5):
        await w.idle()
    assert written == [1, 4]
    assert not w.busy
    task.cancel()


async def test_the_apply_loop_does_not_wait_for_the_state_file(tmp_path: Path) -> None:
    dp = MemoryDataplane()
    settings = AgentSettings("lb1", "test", ("127.0.0.1:1",), tmp_path, health_checks=False, policy=POLICY)
    agent = Agent(settings, dp)
    gate = asyncio.Event()
    saves: list[int] = []
    real_save = agent.store.save

    async def slow_save(node: str, state: State, digest: str) -> None:
        await gate.wait()  # a write of megabytes
        await real_save(node, state, digest)
        saves.append(state.revision)

    agent.store.save = slow_save  # type: ignore[method-assign]
    persister = asyncio.create_task(agent.persister.run())
    agent.core.step(cfg_event(1))
    ready = agent.core.ready(0.0, caught_up=True)
    assert ready is not None
    assert ready.persist
    async with asyncio.timeout(5):
        await agent._execute(ready, 0.0)  # returns with the write still under way
    assert agent.core.persisting
    assert agent.core.applied_revision == 1
    agent.core.step(ev(health(REALS[0], True), 2))  # the next event is applied meanwhile
    nxt = agent.core.ready(0.1, caught_up=True)
    assert nxt is not None
    assert not nxt.persist
    async with asyncio.timeout(5):
        await agent._execute(nxt, 0.1)
    assert agent.core.applied_revision == 2
    assert dp.table == agent.core.applied_table
    assert saves == []
    gate.set()
    async with asyncio.timeout(5):
        await agent.persister.idle()
    assert saves == [1]
    assert agent.core.persisted_revision == 1
    assert not agent.core.persisting
    stored = agent.store.load()
    assert stored is not None
    assert stored.revision == 1
    persister.cancel()
    await agent.client.close()
