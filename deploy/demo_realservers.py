"""Real servers for the demo: HTTP and HTTPS answering ``OK webN`` at ``/areyouthere.php``.

Usage: ``python deploy/demo_realservers.py CERT KEY ADDR:PORT:NAME[:tls] ...`` — one listener per
argument, until SIGTERM. Used by ``deploy/demo.sh`` inside the demo's network namespace, where the
seed's real-server addresses sit on the loopback interface.
"""

from __future__ import annotations

import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"OK {name}\n".encode() if self.path == "/areyouthere.php" else b"hello\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def main(argv: list[str]) -> None:
    cert, key, *specs = argv
    servers: list[ThreadingHTTPServer] = []
    for spec in specs:
        addr, port, name, *tls = spec.split(":")
        srv = ThreadingHTTPServer((addr, int(port)), handler_for(name))
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for srv in servers:
        srv.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
