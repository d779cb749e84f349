"""What the suite needs from outside the repository is there (so no test can pass by skipping).

Always collected: a missing seed or corpus makes these fail outright, in CI and out of it, instead
of turning into skips or empty parameter lists in the tests that use them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LVS_SHARED_DIR") or REPO.parent / "shared")


def test_the_seed_configuration_is_present() -> None:
    seed = SHARED / "seed" / "ldirectord.cf"
    assert seed.is_file(), f"{seed} not found (set LVS_SHARED_DIR to the shared material)"
    text = seed.read_text(encoding="utf-8", errors="replace")
    assert any(line.replace(" ", "").startswith("virtual=") for line in text.splitlines())


def test_the_ldirectord_corpus_is_present_and_not_empty() -> None:
    corpus = SHARED / "corpus" / "ldirectord"
    sources = corpus / "SOURCES.tsv"
    assert sources.is_file(), f"{sources} not found (set LVS_SHARED_DIR to the shared material)"
    with sources.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) >= 10, f"the corpus lists {len(rows)} files"
    missing = [r["file"] for r in rows if not (corpus / r["file"]).is_file()]
    assert missing == []
    verdicts = {r["upstream_verdict"].split()[0].rstrip(":") for r in rows}
    assert verdicts >= {"ACCEPT", "REJECT"}, verdicts
