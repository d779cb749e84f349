"""The agent's state file when it cannot be used: real etcd, a real coordinator, the agent in
process on the memory dataplane.

For each kind of bad file (torn JSON, an unknown format, a corrupt state inside a good header,
a path that cannot be read, another node's file) the agent: logs an error naming the file,
does not crash, starts from the log (revision 0, ``starts.jsonl`` says so), never puts on its
dataplane a service that only the file had, converges to the coordinator's table, and replaces
the file with its own. (A stored revision ahead of the log: ``test_agent_revision_ahead.py``.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.persist import StateStore
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.client.events import new_event
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.config import Config, RealServer, VirtualService
from lvs_events.domain.events import ConfigApplied, Event, RealServerHealth
from lvs_events.domain.state import State, fold
from lvs_events.domain.table import Op, Service
from tests.agent.cluster import CLUSTER, coordinators, demo_config
from tests.support.etcd import EtcdCluster

FOREIGN_VIP = "198.51.100.77"  # a service only the bad files know


class RecordingDataplane(MemoryDataplane):
    """The memory dataplane, remembering every service key it ever held."""

    def __init__(self) -> None:
        super().__init__(None)
        self.ever: set[str] = set()

    async def _record(self) -> None:
        self.ever.update(s.key for s in (await self.dump()).services)

    async def apply(self, ops: list[Op]) -> None:
        await super().apply(ops)
        await self._record()

    async def reconcile_services(self, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
        out = await super().reconcile_services(desired)
        await self._record()
        return out


def foreign_config() -> Config:
    web = demo_config(1).virtuals[0]
    return Config(
        virtuals=(VirtualService(web.protocol, FOREIGN_VIP, 80, reals=(RealServer("192.0.2.99", 80),)),)
    )


def foreign_state(revision: int) -> State:
    """A state folded from a log that is not this one: a config this log never had."""
    event = Event(
        "x1", CLUSTER, "lb2", "t", "", 1_700_000_000.0, ConfigApplied(foreign_config()), revision=revision
    )
    return fold(State(), event)


def good_file(node: str, revision: int) -> bytes:
    return StateStore(Path("/nonexistent")).encode(node, foreign_state(revision), "d" * 64)


def with_header(revision: int, **change: object) -> bytes:
    doc = json.loads(good_file("lb1", revision))
    doc.update(change)
    return json.dumps(doc).encode()


def corrupt_state(revision: int) -> bytes:
    doc = json.loads(good_file("lb1", revision))
    doc["state"]["health"] = [1, 2]
    return json.dumps(doc).encode()


def make_unreadable(path: Path, revision: int) -> None:
    path.mkdir()  # a directory where the file should be: reading it fails with an OSError


BadFile = Callable[[Path, int], None]


def writes(make: Callable[[int], bytes]) -> BadFile:
    def write(path: Path, revision: int) -> None:
        path.write_bytes(make(revision))

    return write


CASES: dict[str, tuple[BadFile, str, str]] = {
    "torn": (writes(lambda rev: good_file("lb1", rev)[:200]), "agent.state_unreadable", "not a state file"),
    "unknown-format": (
        writes(lambda rev: with_header(rev, format=99)),
        "agent.state_unreadable",
        "unknown format 99",
    ),
    "corrupt-state": (writes(corrupt_state), "agent.state_unreadable", "corrupt state"),
    "unreadable": (make_unreadable, "agent.state_unreadable", "Is a directory"),
    "another-node": (writes(lambda rev: good_file("lb2", rev)), "agent.state_other_node", "'lb2'"),
}


async def _publish_log(client: CoordinatorClient) -> int:
    """A config and a few verdicts; the head revision."""
    web = demo_config(0).virtuals[0]
    events = [new_event(ConfigApplied(demo_config(0)), cluster=CLUSTER, origin="op", actor="t")]
    events += [
        new_event(RealServerHealth(web.key, r.key, True, "lb2"), cluster=CLUSTER, origin="lb2", actor="t")
        for r in web.reals
    ]
    acks = await client.publish(events)
    assert all(a.ok for a in acks), acks
    return max(a.revision for a in acks)


def _records(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [r for r in logs if r.get("event") == name]


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_bad_state_file_is_logged_and_the_agent_starts_from_the_log(
    case: str, etcd: EtcdCluster, tmp_path: Path
) -> None:
    make, event, says = CASES[case]
    state_dir = tmp_path / "lb1"
    state_dir.mkdir()
    async with coordinators(etcd.endpoints, 1) as (coord,), CoordinatorClient([coord.address]) as client:
        head = await _publish_log(client)
        make(state_dir / "agent-state.json", head)  # at the head: not "ahead of the log"
        settings = AgentSettings(
            node="lb1",
            cluster=CLUSTER,
            endpoints=(coord.address,),
            state_dir=state_dir,
            health_checks=False,
            drift_interval=0,
        )
        dataplane = RecordingDataplane()
        with capture_logs() as logs:
            agent = Agent(settings, dataplane)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                want = (await client.get_state()).table_digest
                deadline = time.monotonic() + 30
                while agent.core.applied_digest != want:
                    assert not task.done(), task
                    assert time.monotonic() < deadline, (
                        f"not converged in 30 s: the agent holds {agent.core.applied_digest[:12]!r}, "
                        f"the log's table is {want[:12]!r}; it started from revision "
                        f"{agent.core.start_revision}"
                    )
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                async with asyncio.timeout(30):
                    await task  # a clean stop: anything the start raised would be raised here
    [error] = _records(logs, event)
    assert error["log_level"] == "error", error
    assert says in error["error"], error
    assert str(state_dir / "agent-state.json") == error["path"]
    assert agent.core.start_revision == 0
    starts = [json.loads(line) for line in (state_dir / "starts.jsonl").read_text().splitlines()]
    assert [s["stored_revision"] for s in starts] == [0]
    assert not any(FOREIGN_VIP in key for key in dataplane.ever), dataplane.ever
    assert not list(state_dir.glob(".agent-state.json.*")), "a failed write leaves no temp file"
    if case == "unreadable":  # a directory cannot be replaced by the file: each write fails, logged
        assert _records(logs, "agent.persist_failed"), logs
    else:
        stored = StateStore(state_dir).load()
        assert stored is not None
        assert stored.node == "lb1"
        assert stored.revision >= head  # the log's revisions (and its own TableApplied after them)
