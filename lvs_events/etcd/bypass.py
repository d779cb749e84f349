"""How an append transaction reaches etcd: as encoded bytes, or through etcd3aio's public ``txn``.

The one module that relies on etcd3aio's internals. etcd3aio's public ``KVService.txn`` takes
etcd3aio op objects and copies them into a new request: for a batch of 63 events that costs
about as much as the rest of the append path. The bytes path sends the request as
:func:`lvs_events.etcd.txn.encode` made it, as a ``KV/Txn`` call on the store's own gRPC channel,
and decodes the answer with the ``TxnResponse`` class etcd3aio generated (private module
``etcd3aio._protobuf``: the only internal used).

:func:`choose` runs the declared checks once per connection and logs the path taken:

* the bytes path is wanted (``prefer_bytes``; tests turn it off to cover the other path);
* ``etcd3aio._protobuf`` still provides ``TxnResponse``, a protobuf message class;
* that class is ``etcdserverpb.TxnResponse`` (the message etcd answers ``KV/Txn`` with).

If any check fails, every append goes through :meth:`PublicTxn.send` (etcd3aio's ``txn``, ops
built with its public helpers) instead: slower, same transaction, same answers.

Both paths carry the etcd auth token (:meth:`TxnSender.set_token`) and keep every attempt,
retries included, within the one deadline they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc
import grpc.aio
import structlog
from etcd3aio.kv import KVService
from google.protobuf.message import Message

from lvs_events.etcd.txn import Txn, encode
from lvs_events.retry import Backoff, RetryDeadline, RetryPolicy

log = structlog.get_logger(__name__)

TXN_METHOD = "/etcdserverpb.KV/Txn"
TXN_RESPONSE = "etcdserverpb.TxnResponse"
# A refused connection (a member going away) is tried twice more on the channel's next member,
# as etcd3aio's own retry does; anything else goes back to the append loop, which finds out
# through the ids whether an ambiguous attempt landed.
TXN_ATTEMPTS = 3
_UNAVAILABLE_RETRY = RetryPolicy(initial=0.05, cap=0.2)


class TxnSender(Protocol):
    """Sends an append :class:`Txn` with a deadline of ``within`` seconds; the ``TxnResponse``
    (raises gRPC or etcd3aio errors)."""

    name: str

    def set_token(self, token: str | None) -> None: ...

    async def send(self, txn: Txn, within: float) -> Any: ...


class PublicTxn:
    """etcd3aio's public ``KVService.txn``, ops built with its public helpers."""

    name = "etcd3aio-txn"

    def __init__(self, kv: KVService) -> None:
        self._kv = kv

    def set_token(self, token: str | None) -> None:
        self._kv.set_token(token)

    @staticmethod
    def ops(txn: Txn) -> tuple[list[Any], list[Any], list[Any]]:
        """(compare, success, failure) as etcd3aio op objects."""
        kv = KVService
        compare = [
            kv.txn_compare_create_revision(k, 0) if v is None else kv.txn_compare_value(k, v)
            for k, v in txn.compare
        ]
        success = [kv.txn_op_delete(k) if v is None else kv.txn_op_put(k, v) for k, v in txn.success]
        failure = [kv.txn_op_get(k) for k in txn.failure]
        return compare, success, failure

    async def send(self, txn: Txn, within: float) -> Any:
        compare, success, failure = self.ops(txn)
        return await self._kv.txn(compare, success, failure, timeout=within, max_attempts=TXN_ATTEMPTS)


class BytesTxn:
    """``KV/Txn`` on the channel, the request sent as the bytes :func:`encode` made."""

    name = "bytes"

    def __init__(self, channel: grpc.aio.Channel, decode: Callable[[bytes], Any]) -> None:
        self._call = channel.unary_unary(TXN_METHOD, request_serializer=None, response_deserializer=decode)
        self._metadata: tuple[tuple[str, str], ...] | None = None

    def set_token(self, token: str | None) -> None:
        self._metadata = (("token", token),) if token else None

    async def send(self, txn: Txn, within: float) -> Any:
        request = encode(txn)
        backoff: Backoff | None = None  # made on the first refusal: none on the common path
        timeout = within
        while True:
            try:
                return await self._call(request, timeout=timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # a retry stays within the caller's deadline: the transaction is never sent
                # after it
                backoff = backoff or _UNAVAILABLE_RETRY.start(within)
                if backoff.failures + 1 >= TXN_ATTEMPTS:
                    raise
                try:
                    await backoff.sleep()
                except RetryDeadline as late:
                    raise TimeoutError("append transaction: no time left for a retry") from late
                left = backoff.remaining()
                if left is None or left <= 0:
                    raise TimeoutError("append transaction: deadline passed before a retry") from e
                timeout = left


def txn_response_decoder() -> tuple[Callable[[bytes], Any] | None, str]:
    """The declared checks on etcd3aio's internals: the ``TxnResponse`` decoder, or None and why."""
    try:
        from etcd3aio._protobuf import TxnResponse  # noqa: PLC0415 -- the internal, checked here only
    except ImportError as e:
        return None, f"etcd3aio._protobuf has no TxnResponse ({e})"
    if not (isinstance(TxnResponse, type) and issubclass(TxnResponse, Message)):
        return None, "etcd3aio._protobuf.TxnResponse is not a protobuf message class"
    name = TxnResponse.DESCRIPTOR.full_name
    if name != TXN_RESPONSE:
        return None, f"etcd3aio._protobuf.TxnResponse is {name}, not {TXN_RESPONSE}"
    decode: Callable[[bytes], Any] = TxnResponse.FromString
    return decode, ""


def choose(channel: grpc.aio.Channel, kv: KVService, *, prefer_bytes: bool) -> TxnSender:
    """The transaction path for a new connection (see the module docstring); logged."""
    if not prefer_bytes:
        log.info("etcd append transactions through etcd3aio's txn", reason="bytes path turned off")
        return PublicTxn(kv)
    decode, why = txn_response_decoder()
    if decode is None:
        log.warning("etcd append transactions through etcd3aio's txn (slower)", reason=why)
        return PublicTxn(kv)
    log.info("etcd append transactions sent as encoded bytes")
    return BytesTxn(channel, decode)
