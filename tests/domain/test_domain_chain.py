"""The hash chain (lvs_events.domain.chain): a sealed run of events verifies; an edited body, an
edit with its own hash recomputed, a removed event and an inserted one each break it at the
right revision; the follower reports each break once and goes on."""

from __future__ import annotations

import itertools

import pytest

from lvs_events import wire
from lvs_events.domain.chain import ChainBreak, ChainFollower, Link, check_link, genesis, link_hash, verify
from lvs_events.pb.v1 import events_pb2 as pb

CLUSTER = "c1"


def _event(revision: int, real: str = "192.0.2.11:80") -> pb.Event:
    msg = pb.Event(event_id=f"e{revision}", cluster=CLUSTER, origin="lb1", actor="agent", wall_time=1.0)
    msg.real_server_health.virtual = "TCP 203.0.113.10:80"
    msg.real_server_health.real = real
    msg.real_server_health.observer = "lb1"
    msg.revision = revision
    return msg


def _sealed(n: int) -> list[pb.Event]:
    """``n`` events as the append transaction stores them, parsed back."""
    out = []
    prev = genesis(CLUSTER)
    for rev in range(1, n + 1):
        stored, prev = wire.seal(_event(rev), prev)
        out.append(pb.Event.FromString(stored))
    return out


def _links(msgs: list[pb.Event]) -> list[Link]:
    return [wire.chain_link(m) for m in msgs]


def test_a_sealed_log_verifies_and_ends_at_the_last_hash() -> None:
    msgs = _sealed(20)
    found, head, checked = verify(genesis(CLUSTER), _links(msgs))
    assert found is None
    assert checked == 20
    assert head == msgs[-1].hash
    assert msgs[0].prev_hash == genesis(CLUSTER)
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(msgs))


def test_seal_stores_what_a_serialization_of_the_sealed_event_would_be() -> None:
    msg = _event(7)
    stored, digest = wire.seal(msg, genesis(CLUSTER))
    assert stored == msg.SerializeToString(deterministic=True)
    assert digest == msg.hash == link_hash(genesis(CLUSTER), wire.chain_link(msg).body)
    # sealing again (a retry at another revision) starts from the unsealed body
    msg.revision = 8
    again, digest2 = wire.seal(msg, digest)
    assert pb.Event.FromString(again).prev_hash == digest
    assert check_link(digest, wire.chain_link(pb.Event.FromString(again))) is None
    assert digest2 != digest


def test_an_edited_body_breaks_its_own_hash() -> None:
    msgs = _sealed(10)
    msgs[4].real_server_health.up = not msgs[4].real_server_health.up  # the edit behind our back
    found, _, _ = verify(genesis(CLUSTER), _links(msgs))
    assert found is not None
    assert (found.revision, found.what) == (5, "hash")
    assert found.found == msgs[4].hash


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link() -> None:
    msgs = _sealed(10)
    msgs[4].real_server_health.real = "192.0.2.99:80"
    msgs[4].hash = link_hash(msgs[4].prev_hash, wire.chain_link(msgs[4]).body)
    found, _, _ = verify(genesis(CLUSTER), _links(msgs))
    assert found is not None
    assert (found.revision, found.what) == (6, "prev_hash")
    assert found.expected == msgs[4].hash


@pytest.mark.parametrize("where", [0, 5, 9])
def test_a_removed_event_breaks_the_chain_where_it_was(where: int) -> None:
    msgs = _sealed(10)
    del msgs[where]
    found, _, _ = verify(genesis(CLUSTER), _links(msgs))
    if where == 9:  # the last one gone: nothing after it to notice (the head key does)
        assert found is None
        return
    assert found is not None
    assert found.revision == where + 2
    assert found.what == "prev_hash"


def test_another_clusters_genesis_does_not_verify() -> None:
    found, _, _ = verify(genesis("other"), _links(_sealed(3)))
    assert found is not None
    assert (found.revision, found.what) == (1, "prev_hash")
    assert genesis("other") != genesis(CLUSTER)


def test_the_follower_reports_each_break_once_and_goes_on() -> None:
    msgs = _sealed(12)
    msgs[2].actor = "mallory"
    msgs[8].actor = "mallory"
    seen: list[ChainBreak] = []
    follower = ChainFollower(genesis(CLUSTER), on_break=seen.append)
    for link in _links(msgs):
        follower.step(link)
    assert [(b.revision, b.what) for b in seen] == [(3, "hash"), (9, "hash")]
    assert follower.breaks == 2
    assert follower.head == msgs[-1].hash


def test_a_follower_started_mid_log_checks_the_first_hash_then_links() -> None:
    msgs = _sealed(6)
    follower = ChainFollower(None, revision=3)
    assert follower.step(wire.chain_link(msgs[3])) is None  # nothing known before it: own hash
    msgs[4].prev_hash = b"\0" * 32
    found = follower.step(wire.chain_link(msgs[4]))
    assert found is not None
    assert (found.revision, found.what, found.expected) == (5, "prev_hash", msgs[3].hash)


def test_a_follower_reset_at_a_snapshot_continues_from_its_head() -> None:
    msgs = _sealed(8)
    follower = ChainFollower(genesis(CLUSTER))
    follower.reset(5, msgs[4].hash)
    assert [follower.step(link) for link in _links(msgs[5:])] == [None, None, None]
    follower.reset(5, b"\1" * 32)  # a snapshot whose head does not match the log after it
    found = follower.step(wire.chain_link(msgs[5]))
    assert found is not None
    assert found.revision == 6
