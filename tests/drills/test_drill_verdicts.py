"""The drills' verdicts, on literal histories (they judge the namespace and VM drills, so they are
tested apart from them): two holders of the VIP, digests agreeing, fencing holding."""

from __future__ import annotations

import pytest

from lvs_events.drills.drill import digests_agree, fencing_held, two_holders

A, B = "lb1", "lb2"


@pytest.mark.parametrize(
    ("log", "since", "expected"),
    [
        pytest.param([], 0.0, False, id="empty"),
        pytest.param([(1.0, A, True)], 0.0, False, id="one holder"),
        pytest.param([(1.0, A, True), (2.0, A, False), (3.0, B, True)], 0.0, False, id="clean handover"),
        pytest.param([(1.0, A, True), (2.0, B, True), (3.0, A, False)], 0.0, True, id="make before break"),
        # a tie cannot prove the release came first, whatever the names' order: an overlap
        pytest.param([(1.0, A, True), (2.0, A, False), (2.0, B, True)], 0.0, True, id="tie, release 1st"),
        pytest.param([(1.0, B, True), (2.0, B, False), (2.0, A, True)], 0.0, True, id="tie, gain 1st"),
        # an overlap over before the drill started is not the drill's
        pytest.param([(1.0, A, True), (2.0, B, True), (3.0, A, False)], 5.0, False, id="ended before since"),
        # an overlap that began before the drill and still holds at its start is
        pytest.param([(1.0, A, True), (2.0, B, True), (9.0, A, False)], 5.0, True, id="overlap across since"),
        pytest.param([(1.0, A, True), (2.0, B, True)], 5.0, True, id="overlap still open, no later event"),
        pytest.param([(6.0, A, True), (7.0, B, True), (7.5, A, False)], 5.0, True, id="overlap after since"),
        # the order of the list is not the order of time
        pytest.param([(3.0, A, False), (1.0, A, True), (4.0, B, True)], 0.0, False, id="unsorted input"),
        pytest.param(
            [(1.0, A, True), (1.0, A, True), (2.0, A, False), (3.0, B, True)], 0.0, False, id="repeated gain"
        ),
    ],
)
def test_two_holders(log: list[tuple[float, str, bool]], since: float, expected: bool) -> None:
    assert two_holders(log, since) is expected


@pytest.mark.parametrize(
    ("digests", "expected"),
    [
        ({A: "4f1c", B: "4f1c"}, True),
        ({A: "4f1c", B: "9a2b"}, False),
        ({A: "4f1c", B: ""}, False),  # a node that reported nothing does not agree
        ({A: "", B: ""}, False),
        ({}, False),
        ({A: "4f1c"}, True),
    ],
)
def test_digests_agree(digests: dict[str, str], expected: bool) -> None:
    assert digests_agree(digests) is expected


@pytest.mark.parametrize(
    ("ack", "expected"),
    [
        ({"error_code": "FAILED_PRECONDITION", "error": "fenced: term 3 < 4", "revision": 0}, True),
        ({"error_code": "", "error": "", "revision": 17}, False),  # appended: fencing failed
        ({"error_code": "INVALID_ARGUMENT", "error": "bad", "revision": 0}, False),
        ({"error_code": "UNAVAILABLE", "error": "no coordinator", "revision": 0}, False),
        ({}, False),
    ],
)
def test_fencing_held(ack: dict[str, object], expected: bool) -> None:
    assert fencing_held(ack) is expected
