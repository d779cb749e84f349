"""One gRPC channel to etcd and etcd3aio's services on it; deadlines and error translation.

The store owns its channel (built by etcd3aio's :class:`ConnectionManager`, with the options of
a :class:`ChannelTuning`) and creates etcd3aio's KV, Lease and Watch services on it, so it can
tune the channel per use (the election's connection fails over faster than the log's) and send
the append transaction on it (:mod:`lvs_events.etcd.bypass`) without reaching into etcd3aio's
client object.

Every call through a :class:`Connection` carries a deadline (``timeout``, or the caller's
``within``); every etcd3aio or gRPC error leaves this package as a :class:`StoreError`
(:func:`translate`), :class:`StoreUnavailable` when retrying may help.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import structlog
from etcd3aio import EtcdError
from etcd3aio.connections import ConnectionManager
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from lvs_events.errors import StoreError, StoreUnavailable
from lvs_events.etcd import bypass
from lvs_events.etcd.txn import Txn

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds, every etcd call
# what a call to etcd may raise; callers catch these and :func:`translate` them
ETCD_ERRORS: tuple[type[BaseException], ...] = (EtcdError, grpc.aio.AioRpcError, TimeoutError)
# ... and a connection that is not open: what a retry loop over etcd calls catches
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*ETCD_ERRORS, StoreUnavailable)


def translate(e: BaseException, what: str) -> StoreError:
    """An error of a call to etcd as this package raises it (chain it: ``raise ... from e``)."""
    if isinstance(e, TimeoutError):
        return StoreUnavailable(f"etcd {what}: no answer within the deadline")
    if isinstance(e, EtcdError):
        return StoreUnavailable(f"etcd {what}: {e}")
    if isinstance(e, grpc.aio.AioRpcError):
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailable(f"etcd {what}: {e.code().name} {e.details()}")
        return StoreError(f"etcd {what}: {e.code().name} {e.details()}")
    return StoreError(f"etcd {what}: {e!r}")


def is_compacted(e: BaseException) -> bool:
    """etcd's own compaction: 'mvcc: required revision has been compacted' (OUT_OF_RANGE)."""
    return isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.OUT_OF_RANGE


def compare_mod(key: bytes, mod_revision: int) -> Any:
    """A txn compare: ``key``'s mod_revision equals ``mod_revision`` (0: the key does not exist).

    etcd3aio has no helper for this target: its create_revision compare, retargeted."""
    compare = KVService.txn_compare_create_revision(key, 0)
    compare.target = compare.MOD
    compare.mod_revision = mod_revision
    return compare


@dataclass(frozen=True, slots=True)
class ChannelTuning:
    """gRPC channel options: load balancing over the endpoints, HTTP/2 keepalive, reconnects."""

    keepalive_time_ms: int = 10_000
    keepalive_timeout_ms: int = 5_000
    pick_first: bool = False  # False: round-robin over the endpoints
    reconnect_backoff_ms: tuple[int, int] | None = None  # (initial, max); None: gRPC's own

    def options(self, endpoints: Sequence[str]) -> tuple[str, list[tuple[str, str | int | bool]]]:
        """(gRPC target, channel options) as etcd3aio's ConnectionManager makes them, tuned."""
        manager = ConnectionManager(
            endpoints,
            keepalive_time_ms=self.keepalive_time_ms,
            keepalive_timeout_ms=self.keepalive_timeout_ms,
        )
        balance = "pick_first" if self.pick_first else "round_robin"
        options: list[tuple[str, str | int | bool]] = [
            (k, balance if k == "grpc.lb_policy_name" else v) for k, v in manager.grpc_options
        ]
        if self.reconnect_backoff_ms is not None:
            options += [
                ("grpc.initial_reconnect_backoff_ms", self.reconnect_backoff_ms[0]),
                ("grpc.max_reconnect_backoff_ms", self.reconnect_backoff_ms[1]),
            ]
        return manager.target, options


# The log's connection: round-robin over the members, keepalives of 10 s + 5 s.
LOG_CHANNEL = ChannelTuning()
# The election's connection: pick_first over the endpoints (put the local member first), and
# HTTP/2 keepalive in about a second, so a partitioned member is left within the election's
# deadlines.
ELECTION_CHANNEL = ChannelTuning(
    keepalive_time_ms=1000, keepalive_timeout_ms=500, pick_first=True, reconnect_backoff_ms=(100, 1000)
)


class Connection:
    """A channel to etcd and etcd3aio's services on it. :meth:`connect` is idempotent."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        name: str,
        timeout: float = DEFAULT_TIMEOUT,
        rpc_max_attempts: int = 2,
        tuning: ChannelTuning = LOG_CHANNEL,
        appends: bool = True,
        bytes_txn: bool = True,
    ) -> None:
        """``rpc_max_attempts``: etcd3aio's own retry of UNAVAILABLE per call (1: none).
        ``appends``: this connection sends append transactions (:meth:`append_txn`); then
        ``bytes_txn``: as encoded bytes when etcd3aio allows it."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.name = name
        self.timeout = timeout
        self._rpc_max_attempts = rpc_max_attempts
        self._tuning = tuning
        self._appends = appends
        self._bytes_txn = bytes_txn
        self._channel: grpc.aio.Channel | None = None
        self._kv: KVService | None = None
        self._lease: LeaseService | None = None
        self._watch: WatchService | None = None
        self._txn: bypass.TxnSender | None = None
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        if self._channel is not None:
            return
        async with self._connecting:
            if self._channel is not None:
                return
            target, options = self._tuning.options(self.endpoints)
            channel = grpc.aio.insecure_channel(target, options=options)
            attempts = self._rpc_max_attempts
            self._kv = KVService(channel, max_attempts=attempts)
            self._lease = LeaseService(channel, max_attempts=attempts)
            self._watch = WatchService(channel, max_attempts=attempts)
            if self._appends:
                self._txn = bypass.choose(channel, self._kv, prefer_bytes=self._bytes_txn)
            self._channel = channel
            log.debug("etcd connection open", connection=self.name, target=target, txn_path=self.txn_path)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._kv = self._lease = self._watch = None
        self._txn = None
        if channel is not None:
            await channel.close(None)

    @property
    def connected(self) -> bool:
        return self._channel is not None

    @property
    def kv(self) -> KVService:
        if self._kv is None:
            raise StoreUnavailable(f"etcd connection ({self.name}) is not open")
        return self._kv

    @property
    def lease(self) -> LeaseService:
        if self._lease is None:
            raise StoreUnavailable(f"etcd connection ({self.name}) is not open")
        return self._lease

    @property
    def watch(self) -> WatchService:
        if self._watch is None:
            raise StoreUnavailable(f"etcd connection ({self.name}) is not open")
        return self._watch

    @property
    def txn_path(self) -> str:
        """How append transactions are sent: "bytes" or "etcd3aio-txn" ("": closed, or a
        connection that sends none)."""
        return self._txn.name if self._txn is not None else ""

    def append_txn(self, txn: Txn) -> Awaitable[Any]:
        """Send an append transaction (see :mod:`lvs_events.etcd.bypass`); the ``TxnResponse``.
        Raises what etcd3aio and gRPC raise (:data:`ETCD_ERRORS`). The sender's own coroutine,
        not one more around it: this is every append's path."""
        if self._txn is None:
            raise StoreUnavailable(f"etcd connection ({self.name}) is not open for appends")
        return self._txn.send(txn, self.timeout)
