"""Many healthy HTTP real servers in one process: ``python -m tests.checks.http_farm HOST PORT``.

Listens on ``HOST:PORT`` (``0.0.0.0`` answers on every loopback address: 127.0.0.0/8 is all
local, so ``127.1.x.y:PORT`` are as many real servers); each connection gets one ``200 OK``
answer and is closed. Prints ``ready`` once listening; runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nOK farm"


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf and self.transport is not None:
            self.transport.write(RESPONSE)
            self.transport.close()
            self.transport = None


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, host, port, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
