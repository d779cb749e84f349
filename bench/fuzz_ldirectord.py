"""Fuzz the ldirectord.cf parser with mutated corpus files; print a JSON summary.

    python bench/fuzz_ldirectord.py [--count 100000] [--seed 1] [--strict]

Every mutation must either parse or raise ConfigError; anything else is counted in
``other_exceptions`` (and the first few are described on stderr). Exit status 1 if any.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvs_events.ldirectord import ConfigError, StaticResolver, parse_text  # noqa: E402
from tests.ldirectord.corpus import corpus_dir  # noqa: E402
from tests.ldirectord.mutate import mutations  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strict", action="store_true")
    args = ap.parse_args()
    files = sorted(corpus_dir().glob("*.cf"))
    if not files:
        print(json.dumps({"error": f"no corpus at {corpus_dir()} (set LVS_SHARED_DIR)"}))
        return 2
    corpus = [p.read_bytes() for p in files]
    resolver = StaticResolver()
    config_errors = accepted = other = 0
    start = time.perf_counter()
    for i, data in enumerate(mutations(corpus, args.count, args.seed)):
        text = data.decode("utf-8", "surrogateescape")
        try:
            parse_text(text, f"mutation-{i}.cf", resolver=resolver, strict=args.strict)
        except ConfigError:
            config_errors += 1
        except Exception:  # the point of the exercise: count what should never happen
            other += 1
            if other <= 5:
                sys.stderr.write(f"mutation {i}: {traceback.format_exc()}\n{data!r}\n")
        else:
            accepted += 1
    seconds = round(time.perf_counter() - start, 2)
    print(
        json.dumps(
            {
                "mutations": args.count,
                "config_errors": config_errors,
                "accepted": accepted,
                "other_exceptions": other,
                "seconds": seconds,
            }
        )
    )
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())
