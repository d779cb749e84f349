"""The one typed error of the ldirectord.cf parser, and the warnings it can collect."""

from __future__ import annotations

from dataclasses import dataclass

from lvs_events.errors import LvsEventsError


class ConfigError(LvsEventsError):
    """An ldirectord.cf that ldirectord (and therefore we) refuses.

    ``line`` is the line at which ldirectord itself refuses the file (1-based; 0 when the file could
    not be read at all), ``column`` the 1-based column of the offending text in that line.
    ``upstream`` is the message ldirectord prints for the same refusal, for operators who grep
    their old logs and for the differential tests.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str,
        line: int,
        column: int = 1,
        found: str | None = None,
        expected: str | None = None,
        hint: str | None = None,
        upstream: str | None = None,
    ) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.found = found
        self.expected = expected
        self.hint = hint
        self.upstream = upstream if upstream is not None else message
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.filename}:{self.line}:{self.column}: {self.message}"
        details = []
        if self.found is not None:
            details.append(f"found {self.found}")
        if self.expected is not None:
            details.append(f"expected {self.expected}")
        if details:
            text += f" ({', '.join(details)})"
        if self.hint:
            text += f" hint: {self.hint}"
        return text

    def __str__(self) -> str:
        return self._render()


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something ldirectord accepts but warns about (or that the event log replaces)."""

    filename: str
    line: int  # 0 when not tied to one line
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: warning: {self.message}"
