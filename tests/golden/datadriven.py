"""A small data-driven test format (after etcd-io/raft's testdata files).

A file is a sequence of blocks::

    command arg arg ...
    ----
    expected output

Blank lines separate blocks; ``#`` lines between blocks are comments (they belong to the block
below them). The runner calls a handler for each command and compares its output with the
expected text.

With ``UPDATE_GOLDEN=1`` in the environment a file whose outputs differ is rewritten with the
actual outputs, and its test still fails, naming the file: a rewrite is never a pass (review the
diff, commit, run again). Under CI (``$CI`` set, see ``tests.conftest.in_ci``) ``UPDATE_GOLDEN``
is refused: CI only compares.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import in_ci


@dataclass
class Block:
    line: int
    command: str
    args: list[str]
    expected: str
    comments: list[str]


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    comments: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        words = shlex.split(line)
        start = i + 1
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"line {i}: expected ---- after the command {line!r}")
        i += 1
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append(Block(start, words[0], words[1:], "\n".join(out), comments))
        comments = []
    return blocks


def render(blocks: list[Block], outputs: list[str]) -> str:
    parts: list[str] = []
    for b, out in zip(blocks, outputs, strict=True):
        head = "\n".join([*b.comments, shlex.join([b.command, *b.args])])
        parts.append(f"{head}\n----\n{out.rstrip()}\n")
    return "\n".join(parts)


def run_file(path: Path, handler: Callable[[str, list[str]], str]) -> None:
    blocks = parse(path.read_text())
    outputs = [handler(b.command, b.args) for b in blocks]
    if os.environ.get("UPDATE_GOLDEN"):
        _rewrite(path, render(blocks, outputs))
        return
    for b, out in zip(blocks, outputs, strict=True):
        assert out.rstrip() == b.expected.rstrip(), (
            f"{path.name}:{b.line}: {b.command} {' '.join(b.args)}\n"
            f"--- expected\n{b.expected}\n--- actual\n{out}\n(rewrite with UPDATE_GOLDEN=1)"
        )


def _rewrite(path: Path, text: str) -> None:
    """Write ``text`` over ``path`` if it differs, and fail the test if it did (or under CI)."""
    if in_ci():
        pytest.fail(
            f"UPDATE_GOLDEN is set under CI: refusing to rewrite {path} (CI compares, it never rewrites)",
            pytrace=False,
        )
    if path.read_text() == text:
        return
    path.write_text(text)
    pytest.fail(
        f"rewrote {path} (UPDATE_GOLDEN): review the diff, then run again without UPDATE_GOLDEN",
        pytrace=False,
    )
