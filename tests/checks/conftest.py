"""Fixtures of the check tests: a certificate and real HTTP/HTTPS servers on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checks.servers import HOST, Cert, make_cert


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(Path(tmp_path_factory.mktemp("cert")))


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/ok`` -> 200 "OK web1"; ``/fail`` -> 500; ``/moved`` -> 302 to ``/ok``; else 404.

    A proxy request (absolute URL) is answered by its path, with ``via-proxy`` in the body.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        path = self.path
        proxied = path.startswith("http://")
        if proxied:
            path = "/" + path.split("/", 3)[3]
        host = self.headers.get("Host", "")
        if path == "/ok":
            self._send(200, f"OK web1 host={host}{' via-proxy' if proxied else ''}", body)
        elif path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/fail":
            self._send(500, "broken", body)
        else:
            self._send(404, "not found", body)

    def _send(self, status: int, text: str, body: bool) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


@pytest.fixture(scope="module")
def http_ports(cert: Cert) -> Iterator[dict[str, int]]:
    """Real stdlib HTTP servers: ``{"http": port, "https": port}`` (threads, module scope)."""
    servers = []
    ports: dict[str, int] = {}
    for scheme in ("http", "https"):
        srv = http.server.ThreadingHTTPServer((HOST, 0), _Handler)
        srv.daemon_threads = True
        if scheme == "https":
            srv.socket = cert.server_context().wrap_socket(srv.socket, server_side=True)
        ports[scheme] = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield ports
    for srv in servers:
        srv.shutdown()
        srv.server_close()
