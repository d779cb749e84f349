"""Durable agent state: the last applied revision and the folded state at it.

One JSON file, ``<state-dir>/agent-state.json``, replaced atomically (temp file, fsync, rename,
fsync of the directory), so a crash at any point leaves either the old or the new version. The
blocking work runs in a thread, off the event loop, and never holds the interpreter for long at a
time: the JSON is produced by the pure-Python encoder, piece by piece (``json.dumps`` is one C
call that keeps every other thread -- the agent's event loop -- waiting until it returns, for a
time that grows with the state), and the configuration's text, most of the
bytes, is encoded once per configuration and reused while it stays the same object.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lvs_events.domain import codec
from lvs_events.domain.state import State
from lvs_events.errors import LvsEventsError

__all__ = ["StateStore", "Stored", "UnreadableState", "atomic_write"]

FORMAT = 1

# Same text as json.dumps(..., sort_keys=True, separators=(",", ":")), but iterencode without the
# one-shot C encoder runs in Python, so the interpreter switches threads while it works.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _json_text(value: Any) -> str:
    return "".join(_ENCODER.iterencode(value))


def _object_text(parts: dict[str, str]) -> str:
    """A JSON object from its members' texts, keys sorted (as ``sort_keys``)."""
    return "{" + ",".join(f"{json.dumps(k)}:{parts[k]}" for k in sorted(parts)) + "}"


class UnreadableState(LvsEventsError):
    """The state file is there but cannot be used: unreadable, corrupt, or of an unknown format.
    The agent then starts from the log (the file is replaced at its first write)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # a failed write (disk full, the path taken by a directory) leaves no temp file behind:
        # the agent tries again every persist interval
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True, slots=True)
class Stored:
    node: str
    revision: int
    digest: str
    state: State


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "agent-state.json"
        # the text of the configuration last written, by identity (a State keeps the same Config
        # object until a ConfigApplied or a snapshot replaces it). Used by one writer at a time.
        self._config_text: tuple[object, str] | None = None

    def ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def load(self) -> Stored | None:
        """The stored state, or None when there is none. A file that cannot be used raises
        :class:`UnreadableState` (never anything else: the caller starts from the log)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UnreadableState(f"{self.path}: {e}") from e
        try:
            data = json.loads(blob)
        except ValueError as e:  # not JSON, not UTF-8: a torn or foreign file
            raise UnreadableState(f"{self.path}: not a state file: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise UnreadableState(f"{self.path}: unknown format {found!r} (this agent reads {FORMAT})")
        try:
            state: State = codec.decode(State, data["state"])
            revision, node, digest = data["revision"], data["node"], data["digest"]
        except (ValueError, KeyError, TypeError) as e:
            raise UnreadableState(f"{self.path}: corrupt state: {e!r}") from e
        if not isinstance(revision, int) or state.revision != revision:
            raise UnreadableState(f"{self.path}: revision {revision!r} != state revision {state.revision}")
        if not isinstance(node, str) or not isinstance(digest, str):
            raise UnreadableState(f"{self.path}: corrupt header: node {node!r}, digest {digest!r}")
        return Stored(node, revision, digest, state)

    def encode(self, node: str, state: State, digest: str) -> bytes:
        """The file's content: the same JSON as ``json.dumps(doc, sort_keys=True, separators=(",",
        ":"))`` of ``{format, node, revision, digest, saved_at, state: codec.encode(state)}``."""
        cached = self._config_text
        if cached is None or cached[0] is not state.config:
            cached = self._config_text = (state.config, _json_text(codec.encode(state.config)))
        # getattr by dataclass field name: data access over State's declared fields (the codec's
        # own walk), not a probe of a capability
        members = {
            f.name: _json_text(codec.encode(getattr(state, f.name)))
            for f in fields(State)
            if f.name != "config"
        }
        members["config"] = cached[1]
        doc = {
            "format": json.dumps(FORMAT),
            "node": json.dumps(node),
            "revision": json.dumps(state.revision),
            "digest": json.dumps(digest),
            "saved_at": json.dumps(time.time()),
            "state": _object_text(members),
        }
        return _object_text(doc).encode()

    def _save(self, node: str, state: State, digest: str) -> None:
        atomic_write(self.path, self.encode(node, state, digest))

    async def save(self, node: str, state: State, digest: str) -> None:
        """Write ``state`` (in a thread). One save at a time: the caller does not overlap them."""
        await asyncio.to_thread(self._save, node, state, digest)

    def _append(self, name: str, record: dict[str, object]) -> None:
        with (self.directory / name).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    async def record_start(self, record: dict[str, object]) -> None:
        """Append a line to ``starts.jsonl``: where each run of the agent started from."""
        await asyncio.to_thread(self._append, "starts.jsonl", record)

    async def write_status(self, record: dict[str, object]) -> None:
        """``status.json``: the applied revision and digest now (for tests, the CLI and the demo)."""
        blob = json.dumps(record, sort_keys=True, indent=1).encode() + b"\n"
        await asyncio.to_thread(atomic_write, self.directory / "status.json", blob)
