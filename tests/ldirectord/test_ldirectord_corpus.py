"""The shared corpus: ldirectord's verdict at ldirectord's line, and the same structure."""

from __future__ import annotations

import pytest

from lvs_events.domain import codec
from lvs_events.domain.events import ConfigApplied, Event
from lvs_events.domain.state import State, fold
from lvs_events.ldirectord import ConfigError, format_config, parse_file, parse_text
from lvs_events.wire import event_from_bytes, event_to_bytes

from .corpus import (
    Entry,
    entries,
    our_globals_view,
    our_virtual_view,
    require_corpus,
    resolver_for,
    upstream_globals_view,
    upstream_parse,
    upstream_virtual_view,
)

ENTRIES = entries()
ACCEPTED = [e for e in ENTRIES if e.verdict == "ACCEPT"]


def test_corpus_is_present() -> None:
    require_corpus()
    assert len(ENTRIES) >= 18


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.file for e in ENTRIES])
def test_same_verdict_and_line(entry: Entry, strict: bool) -> None:
    d = require_corpus()
    resolver = resolver_for(upstream_parse(entry.file))
    if entry.verdict == "ACCEPT":
        config = parse_file(d / entry.file, resolver=resolver, strict=strict, filename=entry.file)
        assert len(config.virtuals) == entry.virtuals
        assert sum(len(v.reals) for v in config.virtuals) == entry.reals
    else:
        with pytest.raises(ConfigError) as info:
            parse_file(d / entry.file, resolver=resolver, strict=strict, filename=entry.file)
        err = info.value
        assert err.line == entry.line, str(err)
        assert err.upstream == entry.message
        assert str(err).startswith(f"{entry.file}:{entry.line}:{err.column}: ")
        assert err.column >= 1


@pytest.mark.parametrize("entry", ACCEPTED, ids=[e.file for e in ACCEPTED])
def test_same_structure_as_upstream(entry: Entry) -> None:
    d = require_corpus()
    parsed = upstream_parse(entry.file)
    assert parsed["status"] == "ok"
    config = parse_file(d / entry.file, resolver=resolver_for(parsed), filename=entry.file)
    assert our_globals_view(config) == upstream_globals_view(parsed["globals"])
    assert len(config.virtuals) == len(parsed["virtuals"])
    for ours, theirs in zip(config.virtuals, parsed["virtuals"], strict=True):
        assert our_virtual_view(ours) == upstream_virtual_view(theirs), ours.key


@pytest.mark.parametrize("entry", ACCEPTED, ids=[e.file for e in ACCEPTED])
def test_round_trip(entry: Entry) -> None:
    d = require_corpus()
    config = parse_file(
        d / entry.file, resolver=resolver_for(upstream_parse(entry.file)), filename=entry.file
    )
    text = format_config(config)
    # the printed form is numeric: it needs no resolver beyond numeric addresses
    again = parse_text(text, entry.file, resolver=resolver_for({}))
    assert again == config
    assert format_config(again) == text
    # what `config show` prints: the config as it comes back from the log -- published as a
    # ConfigApplied event (protobuf), folded, sent by GetState (the state's JSON codec)
    event = Event("e1", "corpus", "cli", "operator", "", 0.0, ConfigApplied(config), revision=1)
    state = fold(State(), event_from_bytes(event_to_bytes(event)))
    in_force = codec.loads(State, codec.dumps(state)).config
    assert in_force == config
    assert format_config(in_force) == text
