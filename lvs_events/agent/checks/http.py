"""``http``, ``https`` and ``http_proxy`` negotiate checks (ldirectord's ``check_http``).

A small HTTP/1.1 client over asyncio streams (one request per connection, ``Connection: close``):

* ``GET`` or ``HEAD`` of the spec's URL; ``Host`` is ``virtualhost`` when set, else the real
  server's address (with the port when not the default, as LWP sends it);
* ``http_proxy``: the request (an absolute URL) is sent to the real server as a proxy request;
* TLS is not verified (ldirectord sets ``verify_hostname => 0``); SNI is the virtual host;
* redirects of ``GET``/``HEAD`` are followed (up to 7, as LWP::UserAgent), staying on the same
  real server for relative and same-host locations;
* up when the final status is 2xx and, when ``receive`` is set, the body matches it as a regular
  expression (a search, like Perl's ``=~``).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Final
from urllib.parse import urljoin, urlsplit

from lvs_events.agent.checks.base import MAX_BODY, MAX_LINE, Down, Result, close_writer, open_tcp
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["check_http", "fetch"]

MAX_REDIRECTS: Final = 7
_USER_AGENT: Final = "lvs-events-check/1"


class Response:
    __slots__ = ("body", "headers", "status", "status_line")

    def __init__(self, status: int, status_line: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.status_line = status_line
        self.headers = headers
        self.body = body


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], method: str, status: int
) -> bytes:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise Down("connection closed inside a chunked body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise Down("body too large")
            out += await reader.readexactly(size)
            await reader.readline()
    length = headers.get("content-length")
    if length is not None and length.strip().isdigit():
        n = int(length)
        if n > MAX_BODY:
            raise Down("body too large")
        return await reader.readexactly(n)
    data = await reader.read(MAX_BODY + 1)
    out = bytearray(data)
    while data and len(out) <= MAX_BODY:
        data = await reader.read(MAX_BODY + 1 - len(out))
        out += data
    if len(out) > MAX_BODY:
        raise Down("body too large")
    return bytes(out)


async def fetch(spec: CheckSpec, url: str, *, proxy: bool) -> Response:
    """One request to the real server of ``spec`` (no redirect handling)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https" and not proxy
    if parts.scheme not in ("http", "https"):
        raise Down(f"unsupported URL scheme in {url!r}")
    host_header = spec.virtualhost or parts.netloc
    if proxy:
        target = url
        host_header = parts.netloc
    else:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
    sni = spec.virtualhost if spec.virtualhost and not spec.virtualhost[0].isdigit() else None
    reader, writer = await open_tcp(spec, tls=tls, server_hostname=sni, limit=MAX_LINE * 2)
    try:
        writer.write(
            (
                f"{spec.httpmethod} {target} HTTP/1.1\r\n"
                f"Host: {host_header}\r\n"
                f"User-Agent: {_USER_AGENT}\r\n"
                "Accept: */*\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1", "replace")
        )
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not status_line:
            raise Down("connection closed without a response")
        m = re.match(r"HTTP/\d(?:\.\d)?\s+(\d{3})(?:\s+(.*))?$", status_line)
        if m is None:
            raise Down(f"not an HTTP response: {status_line[:80]!r}")
        status = int(m.group(1))
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise Down("connection closed inside the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await _read_body(reader, headers, spec.httpmethod, status)
        text = f"{status} {m.group(2) or ''}".strip()
        return Response(status, text, headers, body)
    finally:
        await close_writer(writer)


async def check_http(spec: CheckSpec) -> Result:
    proxy = spec.service == "http_proxy"
    url = spec.url
    res = await fetch(spec, url, proxy=proxy)
    hops = 0
    while res.status in (301, 302, 303, 307, 308) and "location" in res.headers and hops < MAX_REDIRECTS:
        hops += 1
        url = urljoin(url, res.headers["location"])
        if not proxy:
            loc = urlsplit(url)
            if loc.hostname is None or loc.hostname != spec.address.strip("[]"):
                # a redirect elsewhere: follow it only on this real server (never leave it)
                url = loc._replace(netloc=urlsplit(spec.url).netloc).geturl()
                loc = urlsplit(url)
            port = loc.port or (443 if loc.scheme == "https" else 80)
            res = await fetch(replace(spec, port=port) if port != spec.port else spec, url, proxy=False)
        else:
            res = await fetch(spec, url, proxy=True)
    if not 200 <= res.status < 300:
        raise Down(res.status_line)
    if spec.receive:
        body = res.body.decode("utf-8", "replace")
        if re.search(spec.receive, body) is None:
            raise Down(f"{res.status_line}; receive {spec.receive!r} not found in {body[:120]!r}")
    return Result(True, res.status_line)
