"""gRPC channels of every client (coordinator, election, Peer): mutual TLS when material is
found, rebuilt after a certificate rotation.

``tls`` arguments of the clients take a :class:`~lvs_events.security.tls.TlsFiles` or None;
None resolves the files from the environment (``LVS_EVENTS_CA``, ``LVS_EVENTS_CERT``,
``LVS_EVENTS_KEY``) and ``/etc/default/lvs-events``; when none is found the channels are
plaintext, for a server on loopback or one run with ``--insecure``.

Rotation. Before handing out a channel, :class:`Channels` asks :meth:`ClientTls.changed`
(three ``stat`` calls) whether the files moved since the credentials were built. If they did,
new credentials are loaded and every cached channel is retired: the next call opens a new
channel with the new certificate; calls in flight on a retired channel go on (a retired channel
is closed once its calls end, at the latest after ``retire_grace`` seconds). Files that do not
check (a rotation half done: the key written, not yet its certificate) keep the credentials in
force, with a warning; the next call tries again.

Server names. The server's certificate is checked against the host of the endpoint, an IP
address or a DNS name: ``lvs-events pki`` puts the directors' addresses, names and the loopback
addresses in their certificates' subject alternative names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import grpc.aio
import structlog

from lvs_events.security.tls import ClientTls, TlsError, TlsFiles

__all__ = ["Channels", "resolve_tls"]

log = structlog.get_logger("lvs_events.client.channels")

Options = Sequence[tuple[str, int | str]]


def resolve_tls(tls: TlsFiles | None) -> TlsFiles | None:
    """``tls`` if given, else the files named by the environment or the defaults file, else
    None (plaintext). :class:`TlsError` when only some of the three are named."""
    return tls if tls is not None else TlsFiles.resolve()


class Channels:
    """One channel per endpoint, secure when ``tls`` (after :func:`resolve_tls`) names files.

    Not thread-safe: used from one event loop. Raises :class:`TlsError` at construction when the
    files do not check, so a misconfigured client fails at start with the file named."""

    def __init__(self, tls: TlsFiles | None, options: Options = (), *, retire_grace: float = 600.0) -> None:
        files = resolve_tls(tls)
        self.files = files
        # own subchannels (see lvs_events/etcd/connection.py): a coordinator restarted on an
        # address that failed before is tried again on this channel's own backoff
        self._options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self._retire_grace = retire_grace
        self._tls = ClientTls(files) if files is not None else None
        self._credentials = self._tls.credentials() if self._tls is not None else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    @property
    def secure(self) -> bool:
        return self._tls is not None

    def get(self, endpoint: str) -> grpc.aio.Channel:
        """The channel to ``endpoint``, opened (or reopened after a rotation) as needed."""
        self._follow_rotation()
        ch = self._channels.get(endpoint)
        if ch is None:
            if self._credentials is None:
                ch = grpc.aio.insecure_channel(endpoint, options=self._options)
            else:
                ch = grpc.aio.secure_channel(endpoint, self._credentials, options=self._options)
            self._channels[endpoint] = ch
        return ch

    def _follow_rotation(self) -> None:
        if self._tls is None or not self._tls.changed():
            return
        try:
            credentials = self._tls.credentials()
        except TlsError as e:
            log.warning(
                "tls files changed but do not check; the previous certificate stays in use", error=str(e)
            )
            return
        self._credentials = credentials
        old, self._channels = self._channels, {}
        log.info("tls files changed; new connections use them", files=str(self.files), channels=len(old))
        for ch in old.values():
            self._retire(ch, self._retire_grace)

    def _retire(self, ch: grpc.aio.Channel, grace: float | None) -> None:
        task = asyncio.get_running_loop().create_task(ch.close(grace=grace))
        self._retiring[task] = ch
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def drop(self, endpoint: str) -> bool:
        """Close the channel to ``endpoint`` now (the next :meth:`get` opens a new one); False
        when there was none."""
        ch = self._channels.pop(endpoint, None)
        if ch is None:
            return False
        await ch.close(grace=None)
        return True

    async def close(self) -> None:
        """Close every channel, the retired ones too, cancelling their calls. Idempotent."""
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close(grace=None)
        retiring, self._retiring = self._retiring, {}
        for ch in retiring.values():
            await ch.close(grace=None)  # ends the calls the graceful close was waiting for
        if retiring:
            await asyncio.gather(*retiring, return_exceptions=True)
