"""http, https and http_proxy negotiate checks against real stdlib HTTP servers on loopback."""

from __future__ import annotations

import pytest

from tests.checks.servers import HUNG_TIMEOUT, check, check_hung, closed_port, hang, make_spec, tcp_server

SERVICES = ("http", "https", "http_proxy")


def _request(service: str, path: str) -> str:
    return f"/http://backend.example{path}" if service == "http_proxy" else path


def _port(service: str, ports: dict[str, int]) -> int:
    return ports["https" if service == "https" else "http"]


@pytest.mark.parametrize("service", SERVICES)
async def test_checks_http_healthy(service: str, http_ports: dict[str, int]) -> None:
    spec = make_spec(service, _port(service, http_ports), request=_request(service, "/ok"), receive="OK web1")
    r = await check(spec)
    assert r.up, r.detail
    assert r.detail == "200 OK"


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(("path", "receive", "expect"), [
    ("/ok", "OK web2", "not found in"),
    ("/fail", "", "500"),
    ("/missing", "", "404"),
])  # fmt: skip
async def test_checks_http_answers_wrong(
    service: str, path: str, receive: str, expect: str, http_ports: dict[str, int]
) -> None:
    spec = make_spec(service, _port(service, http_ports), request=_request(service, path), receive=receive)
    r = await check(spec)
    assert not r.up
    assert expect in r.detail


@pytest.mark.parametrize("service", SERVICES)
async def test_checks_http_hangs(service: str) -> None:
    async with tcp_server(hang) as port:
        spec = make_spec(service, port, request=_request(service, "/ok"), receive="OK", timeout=HUNG_TIMEOUT)
        r = await check_hung(spec)
    assert not r.up
    assert r.detail == f"negotiate: timeout after {HUNG_TIMEOUT:g}s"


@pytest.mark.parametrize("service", SERVICES)
async def test_checks_http_port_closed(service: str) -> None:
    r = await check(make_spec(service, closed_port(), request=_request(service, "/ok")))
    assert not r.up
    assert "ConnectionRefused" in r.detail


async def test_checks_http_virtualhost_head_and_redirect(http_ports: dict[str, int]) -> None:
    port = http_ports["http"]
    r = await check(
        make_spec("http", port, request="/ok", receive="host=www.example.org", virtualhost="www.example.org")
    )
    assert r.up, r.detail
    # default Host is the real server's address and port
    r = await check(make_spec("http", port, request="/ok", receive=f"host=127.0.0.1:{port}"))
    assert r.up, r.detail
    r = await check(make_spec("http", port, request="/ok", httpmethod="HEAD"))
    assert r.up, r.detail
    r = await check(make_spec("http", port, request="/moved", receive="OK web1"))
    assert r.up, r.detail


async def test_checks_http_per_real_request(http_ports: dict[str, int]) -> None:
    port = http_ports["https"]
    spec = make_spec("https", port, request="/fail", receive="x", real_request="/ok", real_receive="web1")
    assert spec.url == f"https://127.0.0.1:{port}/ok"
    r = await check(spec)
    assert r.up, r.detail


async def test_checks_http_receive_is_a_regex(http_ports: dict[str, int]) -> None:
    r = await check(make_spec("http", http_ports["http"], request="/ok", receive=r"^OK web\d"))
    assert r.up, r.detail
