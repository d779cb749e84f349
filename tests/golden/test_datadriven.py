"""The data-driven runner: compare, rewrite only outside CI, and never pass on a rewrite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.golden.datadriven import parse, run_file

GOOD = "# a comment\necho a b\n----\na b\n\nupper x\n----\nX\n"
STALE = "# a comment\necho a b\n----\na c\n\nupper x\n----\nX\n"


def handler(cmd: str, args: list[str]) -> str:
    if cmd == "echo":
        return " ".join(args)
    if cmd == "upper":
        return " ".join(args).upper()
    raise ValueError(cmd)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


def test_parse_keeps_comments_with_their_block() -> None:
    blocks = parse(GOOD)
    assert [(b.command, b.args, b.expected, b.comments) for b in blocks] == [
        ("echo", ["a", "b"], "a b", ["# a comment"]),
        ("upper", ["x"], "X", []),
    ]


def test_a_matching_file_passes_and_a_stale_one_fails(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.txt"
    path.write_text(GOOD)
    run_file(path, handler)
    path.write_text(STALE)
    with pytest.raises(AssertionError, match=re.escape("t.txt:2: echo a b")):
        run_file(path, handler)


def test_update_rewrites_and_still_fails(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setenv("UPDATE_GOLDEN", "1")
    env.setenv("CI", "false")  # a false CI value is not CI
    path = tmp_path / "t.txt"
    path.write_text(STALE)
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"rewrote {path}")):
        run_file(path, handler)
    assert path.read_text() == GOOD
    run_file(path, handler)  # nothing left to rewrite: passes, file untouched
    assert path.read_text() == GOOD


@pytest.mark.parametrize("text", [GOOD, STALE])
def test_update_is_refused_under_ci(tmp_path: Path, env: pytest.MonkeyPatch, text: str) -> None:
    env.setenv("UPDATE_GOLDEN", "1")
    env.setenv("CI", "true")
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(pytest.fail.Exception, match="refusing to rewrite"):
        run_file(path, handler)
    assert path.read_text() == text
