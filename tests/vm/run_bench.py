"""Run ``bench/bench_kernel.py`` in the IPVS VM and print its JSON (root; boots the VM once).

sudo .venv/bin/python tests/vm/run_bench.py [services reals changes [agent-drift-interval]]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.vm import vm


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ipvs-bench-") as work:
        run = vm.run(Path(work), "bench", *sys.argv[1:], timeout=900)
        out = Path(work) / "out" / "bench.json"
        if run.returncode != 0 or not out.exists():
            print("\n".join(run.console.splitlines()[-40:]), file=sys.stderr)
            return 1
        print(json.dumps(json.loads(out.read_text()), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
