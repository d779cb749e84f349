"""Replay and cold-start benchmark of the pure core; prints one JSON object.

* ``replay``: events per second folded and rendered, on one core, no I/O, for a realistic mix
  (1% ConfigApplied, 79% RealServerHealth up/down from two observers, 20% AdminOverride
  drain/enable; a pair of directors with 8 virtual services of 8 real servers). Two figures:
  ``render_every_event_events_per_s`` renders after every event (the worst case: a live agent
  receiving one event at a time), ``events_per_s`` renders once per 100 events (an agent
  catching up: it folds everything it has received, then renders once). The target applies to the replay path
  the agent runs, the batched one; the per-event figure is shown beside it.
* ``cold_start``: a snapshot of a state with 10,000 real servers (100 virtual services of 100,
  all checked up): decode its canonical JSON, render, reconcile into an empty in-memory dataplane.

Targets: replay >= 50,000 events/s; cold start <= 1 s.

Run: ``python bench/bench_replay.py [--events N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvs_events.agent.dataplane import reconcile
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.domain import codec
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    Event,
    Payload,
    RealServerHealth,
)
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold

REPLAY_TARGET = 50_000.0
COLD_TARGET_S = 1.0


def make_config(n_virtuals: int, n_reals: int, variant: int = 0) -> Config:
    virtuals = []
    for v in range(n_virtuals):
        reals = tuple(
            RealServer(f"10.{v // 250}.{v % 250}.{r + 1}", 80, weight=1 + (r + variant) % 5)
            for r in range(n_reals)
        )
        virtuals.append(
            VirtualService(
                protocol=Protocol.TCP,
                address=f"203.0.{v // 250}.{v % 250 + 1}",
                port=80,
                scheduler="wrr",
                persistent=300 if v % 3 == 0 else None,
                reals=reals,
                fallback=RealServer("127.0.0.1", 80),
                quiescent=v % 2 == 0,
                check=CheckSettings(checktype="negotiate"),
            )
        )
    return Config(virtuals=tuple(virtuals))


def mixed_events(n: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    cfgs = [make_config(8, 8, variant) for variant in range(3)]
    targets = [(v.key, r.key) for v in cfgs[0].virtuals for r in v.reals]
    events: list[Event] = []
    t0 = 1_700_000_000.0
    for i in range(1, n + 1):
        x = rng.random()
        payload: Payload
        if i == 1 or x < 0.01:
            payload = ConfigApplied(rng.choice(cfgs))
        else:
            vkey, rkey = rng.choice(targets)
            if x < 0.80:
                payload = RealServerHealth(vkey, rkey, rng.random() < 0.8, rng.choice(("lb1", "lb2")))
            else:
                action = AdminAction.DRAIN if rng.random() < 0.5 else AdminAction.ENABLE
                payload = AdminOverride(vkey, rkey, action)
        events.append(Event(f"e{i}", "bench", "lb1", "bench", "", t0 + i * 0.01, payload, revision=i))
    return events


def bench_replay(events: list[Event], render_every: int) -> float:
    state = State()
    start = time.perf_counter()
    for i, e in enumerate(events, 1):
        state = fold(state, e)
        if i % render_every == 0:
            render(state)
    render(state)
    return len(events) / (time.perf_counter() - start)


def snapshot_blob(n_virtuals: int = 100, n_reals: int = 100) -> tuple[bytes, int]:
    cfg = make_config(n_virtuals, n_reals)
    state = fold(
        State(), Event("cfg", "bench", "lb1", "bench", "", 1_700_000_000.0, ConfigApplied(cfg), revision=1)
    )
    rev = 1
    for v in cfg.virtuals:
        for r in v.reals:
            rev += 1
            state = fold(
                state,
                Event(
                    f"h{rev}",
                    "bench",
                    "lb1",
                    "bench",
                    "",
                    1_700_000_000.0 + rev,
                    RealServerHealth(v.key, r.key, True, "lb1"),
                    revision=rev,
                ),
            )
    return codec.dumps(state), n_virtuals * n_reals


async def bench_cold_start(blob: bytes) -> dict[str, float]:
    t0 = time.perf_counter()
    state = codec.loads(State, blob)
    t1 = time.perf_counter()
    table = render(state)
    t2 = time.perf_counter()
    dp = MemoryDataplane(None)
    ops, actual = await reconcile(dp, table)
    t3 = time.perf_counter()
    digest = actual.digest()
    t4 = time.perf_counter()
    assert digest == table.digest()
    assert len(ops) == len(table.services) + sum(len(s.dests) for s in table.services)
    return {
        "decode_s": round(t1 - t0, 4),
        "render_s": round(t2 - t1, 4),
        "reconcile_s": round(t3 - t2, 4),
        "digest_s": round(t4 - t3, 4),
        "total_s": round(t4 - t0, 4),
        "ops": len(ops),
    }


def best(fn, runs: int):  # type: ignore[no-untyped-def]
    return max(fn() for _ in range(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    events = mixed_events(args.events)
    per_event = best(lambda: bench_replay(events, 1), args.runs)
    batched = best(lambda: bench_replay(events, 100), args.runs)
    fold_only = best(lambda: bench_replay(events, len(events) + 1), args.runs)
    blob, reals = snapshot_blob()
    colds = [asyncio.run(bench_cold_start(blob)) for _ in range(args.runs)]
    cold = min(colds, key=lambda c: c["total_s"])
    out = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "replay": {
            "events": len(events),
            "mix": "1% ConfigApplied, 79% RealServerHealth, 20% AdminOverride; 8 virtuals x 8 reals",
            "events_per_s": round(batched),
            "render_every_events": 100,
            "render_every_event_events_per_s": round(per_event),
            "fold_only_events_per_s": round(fold_only),
            "target_events_per_s": REPLAY_TARGET,
            "ok": batched >= REPLAY_TARGET,
        },
        "cold_start": {
            "real_servers": reals,
            "snapshot_bytes": len(blob),
            **cold,
            "target_s": COLD_TARGET_S,
            "ok": cold["total_s"] <= COLD_TARGET_S,
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
