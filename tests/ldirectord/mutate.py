"""Deterministic mutations of ldirectord.cf files, for the fuzz tests and bench/fuzz_ldirectord.py."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence

# Words worth splicing in: directive names, values and separators ldirectord cares about.
VOCABULARY: tuple[bytes, ...] = tuple(
    w.encode()
    for w in (
        "virtual=", "virtual6=", "real=", "real6=", "fallback=", "fallback6=", "gate", "masq", "ipip",
        "checktype=", "negotiate", "connect", "external", "ping", "on", "off", "service=", "http",
        "https", "ftp", "none", "dns", "scheduler=", "wrr", "rr", "persistent=", "netmask=", "protocol=",
        "tcp", "udp", "fwm", "quiescent=", "yes", "no", "request=", "receive=", '"', '""', "#", "->",
        ":", "=", "\t", "    ", " ", "\n", "\r\n", "0", "00", "1", "65535", "65536", "127.0.0.1",
        "[::1]", "[2001:db8::1]:80", "10.0.0.1->10.0.0.3", "l:5", "u:9", "checktimeout=",
        "negotiatetimeout=", "connecttimeout=", "timeout=", "supervised", "emailalertstatus=",
        "all,none", "checkport=", "65536", "ops=", "schedflags=", "sh-port", "login=", "www", "domain",
        "logfile=", "callback=", "execute=", "checkcommand=", "virtualhost=", "emailalert=", "5",
    )
)  # fmt: skip

_TOKEN = re.compile(rb"[^\s=:,\"]+")


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def mutate_once(  # noqa: PLR0911, PLR0912, PLR0915 (one branch per kind of edit)
    rng: random.Random, data: bytes, pool: Sequence[bytes]
) -> bytes:
    """One random edit of ``data`` (``pool``: other corpus files, for splicing)."""
    kind = rng.randrange(12)
    lines = _lines(data)
    if kind == 0 and lines:  # drop a line
        del lines[rng.randrange(len(lines))]
        return b"".join(lines)
    if kind == 1 and lines:  # duplicate a line
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
        return b"".join(lines)
    if kind == 2 and len(lines) > 1:  # swap two lines
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return b"".join(lines)
    tokens = [m.span() for m in _TOKEN.finditer(data)]
    if kind == 3 and len(tokens) > 1:  # swap two tokens
        (a0, a1), (b0, b1) = sorted(rng.sample(tokens, 2))
        return data[:a0] + data[b0:b1] + data[a1:b0] + data[a0:a1] + data[b1:]
    if kind == 4 and tokens:  # replace a token by a vocabulary word or another token
        a0, a1 = rng.choice(tokens)
        if rng.random() < 0.5:
            word = rng.choice(VOCABULARY)
        else:
            b0, b1 = rng.choice(tokens)
            word = data[b0:b1]
        return data[:a0] + word + data[a1:]
    if kind == 5:  # insert a vocabulary word
        pos = rng.randrange(len(data) + 1)
        return data[:pos] + rng.choice(VOCABULARY) + data[pos:]
    if kind == 6 and data:  # random bytes: replace, insert or delete
        pos = rng.randrange(len(data))
        op = rng.randrange(3)
        byte = bytes([rng.randrange(256)])
        if op == 0:
            return data[:pos] + byte + data[pos + 1 :]
        if op == 1:
            return data[:pos] + byte + data[pos:]
        return data[:pos] + data[pos + 1 :]
    if kind == 7 and data:  # truncate
        return data[: rng.randrange(len(data))]
    if kind == 8 and lines:  # change indentation of a line
        i = rng.randrange(len(lines))
        body = lines[i].lstrip(b" \t")
        lines[i] = rng.choice([b"", b" ", b"  ", b"   ", b"    ", b"\t", b" \t", b"        "]) + body
        return b"".join(lines)
    if kind == 9 and lines:  # comment / uncomment a line
        i = rng.randrange(len(lines))
        line = lines[i]
        stripped = line.lstrip(b" \t")
        if stripped.startswith(b"#"):
            lines[i] = line[: len(line) - len(stripped)] + stripped[1:]
        else:
            lines[i] = b"#" + line
        return b"".join(lines)
    if kind == 10 and pool:  # splice lines from another file
        other = _lines(rng.choice(pool))
        if other and lines:
            i = rng.randrange(len(other))
            chunk = other[i : i + rng.randrange(1, 6)]
            pos = rng.randrange(len(lines) + 1)
            lines[pos:pos] = chunk
            return b"".join(lines)
    if kind == 11 and data:  # change a digit
        digits = [m.start() for m in re.finditer(rb"\d", data)]
        if digits:
            pos = rng.choice(digits)
            return data[:pos] + str(rng.randrange(10)).encode() * rng.randrange(1, 3) + data[pos + 1 :]
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + bytes([rng.randrange(256)]) + data[pos:]


def mutations(corpus: Sequence[bytes], count: int, seed: int = 1) -> Iterator[bytes]:
    """``count`` mutated files: each a corpus file with one to four random edits."""
    rng = random.Random(seed)
    for _ in range(count):
        data = rng.choice(corpus)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            data = mutate_once(rng, data, corpus)
        yield data
