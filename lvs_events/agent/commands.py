"""Local consent for the commands a configuration names (``checkcommand``, ``fallbackcommand``).

A configuration comes from the log, and whoever may publish ``ConfigApplied`` writes it; the
agent runs its commands as root. So a command named by a configuration runs only when this
director's own policy allows it:

* it is in the **allowlist**: ``--allow-command`` (repeatable) and the lines of
  ``--commands-allow-file``. An entry is an absolute executable path, optionally followed by
  fixed arguments; it allows exactly that argument vector (a path alone does not allow the same
  program with other arguments: ``/bin/sh -c ...`` is not ``/bin/sh``); or
* it is named, as the same kind of command, by **this director's own configuration file**
  (``--config`` / ``--config-json``). The comparison is per command string, not a digest of the
  whole configuration: an unrelated change by another operator (a weight, a new real server)
  does not revoke the consent, and a command that only the log names is never consented.

Nothing else runs: a refused external check counts as failed, a refused ``fallbackcommand`` is
not started. :func:`decide` is the one decision, pure; :class:`CommandGate` caches its answers
for the configuration in force and lists the refusals to record in the log, once per
(kind, command, configuration revision).

The HA notify hooks (``--on-active`` ...) are agent flags, never read from the log: they are
local by construction and are not decided here.
"""

from __future__ import annotations

import enum
import os
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from lvs_events.domain.config import Config
from lvs_events.domain.events import CommandRefused
from lvs_events.domain.render import fallback_for
from lvs_events.errors import LvsEventsError

__all__ = [
    "NO_CONSENT",
    "Allowlist",
    "AllowlistError",
    "CommandConsent",
    "CommandGate",
    "CommandKind",
    "Consent",
    "command_argv",
    "decide",
    "load_allowlist",
    "named_commands",
    "parse_allow_entry",
]

Argv = tuple[str, ...]

#: What ``checktype = external`` runs when the configuration names no ``checkcommand``
#: (the program's own default, not something a configuration can choose).
BUILTIN_CHECKCOMMAND: Final = "/bin/true"
MAX_VIRTUALS_LISTED: Final = 100  # per CommandRefused event


class CommandKind(enum.StrEnum):
    CHECK = "checkcommand"
    FALLBACK = "fallbackcommand"


class AllowlistError(LvsEventsError):
    """An allowlist entry or file that cannot be used (relative path, bad quoting, unreadable)."""


@dataclass(frozen=True, slots=True)
class Consent:
    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Allowlist:
    """The argument vectors this director allows, and where the list came from (for reasons)."""

    entries: frozenset[Argv] = frozenset()
    sources: tuple[str, ...] = ()


class CommandConsent(Protocol):
    """What the runners ask before starting a command named by the configuration."""

    def consent(self, kind: CommandKind, command: str) -> Consent: ...


class _NoConsent:
    """The consent of a runner given no policy: nothing runs."""

    def consent(self, kind: CommandKind, command: str) -> Consent:
        return Consent(False, "no local command policy was given to this runner")


NO_CONSENT: Final[CommandConsent] = _NoConsent()


def command_argv(kind: CommandKind, command: str, exists: Callable[[str], bool] = os.path.exists) -> Argv:
    """The argument vector the agent executes for ``command`` (before the arguments it adds).

    ``checkcommand``: ldirectord execs the string as one program path; a string with blanks that
    is not an existing path is split as a shell would (what its author meant). ``fallbackcommand``:
    split as a shell would. An unparseable string (unbalanced quotes) gives ``()``.
    """
    if kind is CommandKind.CHECK and (exists(command) or not any(ch.isspace() for ch in command)):
        return (command,) if command else ()
    try:
        return tuple(shlex.split(command))
    except ValueError:
        return ()


def parse_allow_entry(text: str) -> Argv:
    """One allowlist entry: an absolute path, optionally with fixed arguments (shell quoting)."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as e:
        raise AllowlistError(f"allowed command {text!r}: {e}") from e
    if not argv:
        raise AllowlistError("allowed command: empty")
    if not os.path.isabs(argv[0]):
        raise AllowlistError(f"allowed command {text!r}: the executable must be an absolute path")
    return argv


def load_allowlist(flags: Iterable[str], file: Path | None) -> Allowlist:
    """The allowlist from ``--allow-command`` values and ``--commands-allow-file`` (one entry per
    line, ``#`` comments and blank lines ignored). Blocking: call at start-up."""
    entries = {parse_allow_entry(f) for f in flags}
    sources = ["--allow-command"] if entries else []
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise AllowlistError(f"cannot read {file}: {e.strerror or e}") from e
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entries.add(parse_allow_entry(line))
            except AllowlistError as e:
                raise AllowlistError(f"{file}:{n}: {e}") from e
        sources.append(str(file))
    return Allowlist(frozenset(entries), tuple(sources))


def named_commands(
    config: Config | None, exists: Callable[[str], bool] = os.path.exists
) -> dict[tuple[CommandKind, str], tuple[str, ...]]:
    """Every command ``config`` would have the agent run, with the virtual services naming it:
    the ``checkcommand`` of external checks and the ``fallbackcommand`` of services with a
    fallback server (each virtual's own, else the global one), keyed by (kind, command string)."""
    out: dict[tuple[CommandKind, str], list[str]] = {}
    if config is None:
        return {}
    g = config.globals
    for v in config.virtuals:
        c = v.check
        if c.checktype in ("external", "external-perl") and v.reals:
            out.setdefault((CommandKind.CHECK, c.checkcommand or BUILTIN_CHECKCOMMAND), []).append(v.key)
        command = v.fallbackcommand or g.fallbackcommand
        if command and fallback_for(config, v) is not None:
            out.setdefault((CommandKind.FALLBACK, command), []).append(v.key)
    return {k: tuple(vs) for k, vs in out.items()}


def decide(
    kind: CommandKind,
    argv: Argv,
    allowlist: Allowlist,
    own: frozenset[tuple[CommandKind, Argv]],
    own_source: str,
) -> Consent:
    """May the agent run ``argv`` (a command of kind ``kind`` named by the configuration in
    force)? ``own``: the (kind, argv) pairs this director's own configuration file names."""
    if not argv:
        return Consent(False, f"{kind.value} is empty or cannot be parsed")
    if kind is CommandKind.CHECK and argv == (BUILTIN_CHECKCOMMAND,):
        return Consent(True, "the built-in default checkcommand")
    if argv in allowlist.entries:
        return Consent(True, f"in the local allowlist ({', '.join(allowlist.sources)})")
    if (kind, argv) in own:
        return Consent(True, f"named as {kind.value} by this director's own configuration {own_source}")
    where = ", ".join(allowlist.sources) or "empty"
    own_text = f"not named as {kind.value} by {own_source}" if own_source else "no local --config file"
    return Consent(False, f"not in the local allowlist ({where}) and {own_text}")


@dataclass
class CommandGate:
    """The agent's side of the policy: :func:`decide` for the configuration in force, cached per
    command; the refusals to publish once per (kind, command, configuration revision).

    ``own`` is this director's own configuration (None: started without a file); the runtime
    replaces it (:meth:`set_own`) when the file changes.
    """

    node: str
    allowlist: Allowlist = field(default_factory=Allowlist)
    own: Config | None = None
    own_source: str = ""
    exists: Callable[[str], bool] = os.path.exists
    config_revision: int = -1  # of the configuration the refusals were listed for
    _own_argvs: frozenset[tuple[CommandKind, Argv]] = frozenset()
    _cache: dict[tuple[CommandKind, str], Consent] = field(default_factory=dict)
    _reported: set[tuple[CommandKind, str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.set_own(self.own, self.own_source)

    def set_own(self, own: Config | None, source: str) -> None:
        self.own, self.own_source = own, source
        named = named_commands(own, self.exists)
        self._own_argvs = frozenset((k, command_argv(k, command, self.exists)) for k, command in named)
        self._cache.clear()

    def consent(self, kind: CommandKind, command: str) -> Consent:
        key = (kind, command)
        c = self._cache.get(key)
        if c is None:
            argv = command_argv(kind, command, self.exists)
            c = self._cache[key] = decide(kind, argv, self.allowlist, self._own_argvs, self.own_source)
        return c

    def on_config(self, config: Config | None, config_revision: int) -> list[CommandRefused]:
        """A configuration is in force at ``config_revision``: decide each command it names; the
        refusals not yet listed for that revision (to record in the log)."""
        self.config_revision = config_revision
        self._cache.clear()
        # a revision's refusals are listed once; older revisions do not come back
        self._reported = {k for k in self._reported if k[2] == config_revision}
        out: list[CommandRefused] = []
        named: Mapping[tuple[CommandKind, str], tuple[str, ...]] = named_commands(config, self.exists)
        for (kind, command), virtuals in named.items():
            c = self.consent(kind, command)
            key = (kind, command, config_revision)
            if c.allowed or key in self._reported:
                continue
            self._reported.add(key)
            out.append(
                CommandRefused(
                    node=self.node,
                    kind=kind.value,
                    command=command,
                    virtuals=virtuals[:MAX_VIRTUALS_LISTED],
                    reason=c.reason,
                    config_revision=config_revision,
                )
            )
        return out
