"""One gRPC channel to etcd and etcd3aio's services on it; deadlines and error translation.

The store owns its channel (built by etcd3aio's :class:`ConnectionManager`, with the options of
a :class:`ChannelTuning`) and creates etcd3aio's KV, Lease and Watch services on it, so it can
tune the channel per use (the election's connection fails over faster than the log's) and send
the append transaction on it (:mod:`lvs_events.etcd.bypass`) without reaching into etcd3aio's
client object.

Every call through a :class:`Connection` carries a deadline (``timeout``, or the caller's
``within``); every etcd3aio or gRPC error leaves this package as a :class:`StoreError`
(:func:`translate`), :class:`StoreUnavailable` when retrying may help.

Access (:class:`EtcdAccess`): TLS with the CA that signed etcd's certificates and, optionally, a
client certificate (etcd's ``--client-cert-auth``: with auth enabled, the certificate's CN is
the etcd user); and/or an etcd user with a password, whose token every call carries (the
append's bytes path too) and which is renewed every :data:`TOKEN_REFRESH` seconds, below
etcd's ``--auth-token-ttl`` (300 s by default). The password never appears in a repr or a log.

Rotation: the TLS files (CA, client certificate and key) are looked at every
:data:`CERT_CHECK` seconds. When they changed and the new pair is usable (both parse, the key is
the certificate's), the connection opens a new channel with them and swaps it in; calls and
watches already on the old channel keep it for :data:`OLD_CHANNEL_GRACE` timeouts, then it
closes (a watch broken so is read again by its owner, as after any reconnect). Files caught
half-written (the key replaced, not yet the certificate) are left alone until they change again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from etcd3aio import EtcdError
from etcd3aio.auth import AuthService
from etcd3aio.connections import ConnectionManager
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.maintenance import MaintenanceService
from etcd3aio.watch import WatchService

from lvs_events.errors import LvsEventsError, StoreError, StoreUnavailable
from lvs_events.etcd import bypass
from lvs_events.etcd.txn import Txn
from lvs_events.retry import RetryPolicy

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds, every etcd call
CERT_CHECK = 30.0  # seconds between looks at the TLS files for a rotation
OLD_CHANNEL_GRACE = 2  # timeouts a replaced channel stays open for the calls on it
TOKEN_REFRESH = 60.0  # seconds between authentications; etcd's --auth-token-ttl must exceed it
_TOKEN_RETRY = RetryPolicy(initial=1.0, cap=10.0)
ENV_ETCD_CA = "LVS_EVENTS_ETCD_CA"
ENV_ETCD_CERT = "LVS_EVENTS_ETCD_CERT"
ENV_ETCD_KEY = "LVS_EVENTS_ETCD_KEY"
ENV_ETCD_USER = "LVS_EVENTS_ETCD_USER"
ENV_ETCD_PASSWORD = "LVS_EVENTS_ETCD_PASSWORD"


class EtcdAccessError(LvsEventsError):
    """etcd access settings that cannot be used (files missing, a certificate without its key)."""


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """How to reach etcd: plaintext (the default), TLS (``ca``), a client certificate (``cert``
    and ``key``, with ``ca``), an etcd user (``user`` and ``password``). ``server_name``: the
    name etcd's certificates are checked against when it differs from the endpoints' hosts
    (several members behind one name)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise EtcdAccessError("etcd client certificate: give both --etcd-cert and --etcd-key")
        if self.cert is not None and self.ca is None:
            raise EtcdAccessError("etcd client certificate: --etcd-ca is needed too (TLS)")
        if bool(self.user) != bool(self.password):
            raise EtcdAccessError(
                f"etcd user: give both a user (--etcd-user) and its password "
                f"(--etcd-password-file or ${ENV_ETCD_PASSWORD})"
            )

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def describe(self) -> str:
        """For the log: what is used, never the password."""
        parts = ["tls" if self.tls else "plaintext"]
        if self.cert is not None:
            parts.append(f"client certificate {self.cert}")
        if self.user:
            parts.append(f"user {self.user}")
        return ", ".join(parts)

    def _read(self) -> tuple[bytes, bytes | None, bytes | None]:
        """The CA, certificate and key files' bytes, read now (:class:`EtcdAccessError` naming
        one that is unreadable)."""
        assert self.ca is not None
        try:
            ca = self.ca.read_bytes()
            cert = self.cert.read_bytes() if self.cert is not None else None
            key = self.key.read_bytes() if self.key is not None else None
        except OSError as e:
            raise EtcdAccessError(f"etcd TLS file {e.filename}: {e.strerror}") from e
        return ca, cert, key

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files, read now (:class:`EtcdAccessError` if one is unreadable)."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def files(self) -> tuple[Path, ...]:
        return tuple(f for f in (self.ca, self.cert, self.key) if f is not None)

    def checked_credentials(self) -> grpc.ChannelCredentials:
        """:meth:`credentials`, after checking that the files parse and the key is the
        certificate's (gRPC would only fail at the next handshake). :class:`EtcdAccessError`
        naming the file otherwise."""
        ca, cert, key = self._read()
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as e:
            raise EtcdAccessError(f"etcd CA {self.ca}: not a PEM certificate") from e
        if cert is not None and key is not None:
            try:
                public = x509.load_pem_x509_certificate(cert).public_key()
            except ValueError as e:
                raise EtcdAccessError(f"etcd client certificate {self.cert}: not a PEM certificate") from e
            try:
                private = serialization.load_pem_private_key(key, password=None)
            except (ValueError, TypeError) as e:
                raise EtcdAccessError(f"etcd client key {self.key}: not an unencrypted PEM key") from e
            raw = serialization.PublicFormat.SubjectPublicKeyInfo
            pem = serialization.Encoding.PEM
            if private.public_key().public_bytes(pem, raw) != public.public_bytes(pem, raw):
                raise EtcdAccessError(f"etcd client key {self.key} is not the key of {self.cert}")
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def files_stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells a rewritten file (inode, size, modification time); None: unreadable."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


PLAINTEXT = EtcdAccess()


def access_from(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    server_name: str = "",
    environ: Mapping[str, str] | None = None,
) -> EtcdAccess:
    """:class:`EtcdAccess` from flags, else the environment (``LVS_EVENTS_ETCD_*``, which the
    systemd unit fills from ``/etc/default/lvs-events``). The password comes from a file (first
    line) or ``$LVS_EVENTS_ETCD_PASSWORD``, never from a command line."""
    env = os.environ if environ is None else environ

    def pick(flag: str | None, var: str) -> str:
        return flag or env.get(var, "")

    password = ""
    if password_file:
        try:
            lines = Path(password_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise EtcdAccessError(f"etcd password file {password_file}: {e.strerror}") from e
        password = lines[0] if lines else ""
    else:
        password = env.get(ENV_ETCD_PASSWORD, "")
    return EtcdAccess(
        ca=_path(pick(ca, ENV_ETCD_CA)),
        cert=_path(pick(cert, ENV_ETCD_CERT)),
        key=_path(pick(key, ENV_ETCD_KEY)),
        user=pick(user, ENV_ETCD_USER),
        password=password,
        server_name=server_name,
    )
# what a call to etcd may raise; callers catch these and :func:`translate` them
ETCD_ERRORS: tuple[type[BaseException], ...] = (EtcdError, grpc.aio.AioRpcError, TimeoutError)
# ... and a connection that is not open: what a retry loop over etcd calls catches
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*ETCD_ERRORS, StoreUnavailable)


def _path(value: str) -> Path | None:
    return Path(value) if value else None


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


@contextlib.contextmanager
def closed_channel_unavailable(what: str) -> Iterator[None]:
    """A stream whose channel was closed under it (a replaced channel after its grace, see the
    module): grpc.aio raises ``asyncio.CancelledError`` in the task reading it, which is not
    that task being cancelled. Turned into :class:`StoreUnavailable`, so the stream's owner
    reads again on the current channel; the task's own cancellation passes through."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise StoreUnavailable(f"etcd {what}: the channel closed under the stream") from None


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
        # Subchannels of this channel only: gRPC shares them process-wide by address, and a
        # shared one keeps the reconnect backoff earned by another channel (an etcd restarted on
        # an address that failed before would be unreachable for up to the backoff's maximum).
        options.append(("grpc.use_local_subchannel_pool", 1))
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
        access: EtcdAccess = PLAINTEXT,
        cert_check: float = CERT_CHECK,
    ) -> None:
        """``rpc_max_attempts``: etcd3aio's own retry of UNAVAILABLE per call (1: none).
        ``appends``: this connection sends append transactions (:meth:`append_txn`); then
        ``bytes_txn``: as encoded bytes when etcd3aio allows it. ``access``: TLS and auth.
        ``cert_check``: seconds between looks at the TLS files (0: never; see the module)."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.name = name
        self.timeout = timeout
        self._rpc_max_attempts = rpc_max_attempts
        self._tuning = tuning
        self._appends = appends
        self._bytes_txn = bytes_txn
        self.access = access
        self._maintenance: MaintenanceService | None = None
        self._auth: AuthService | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._kv: KVService | None = None
        self._lease: LeaseService | None = None
        self._watch: WatchService | None = None
        self._txn: bypass.TxnSender | None = None
        self._connecting = asyncio.Lock()
        self._cert_check = cert_check if access.tls else 0.0
        self._rotator: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()  # replaced channels closing after their grace
        self.rotations = 0  # channels replaced because the TLS files changed

    async def connect(self) -> None:
        if self._channel is not None:
            return
        async with self._connecting:
            if self._channel is not None:
                return
            access = self.access
            stamp = files_stamp(access.files())
            await self._open(access.credentials() if access.tls else None)
            if self._cert_check > 0:
                self._rotator = asyncio.create_task(self._rotate(stamp), name=f"etcd-tls-{self.name}")

    async def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        """A channel with ``credentials`` (None: plaintext) and the services on it, swapped in
        for the current ones (if any), authenticated first when the access has a user."""
        target, options = self._tuning.options(self.endpoints)
        access = self.access
        if credentials is not None:
            if access.server_name:
                options = [*options, ("grpc.ssl_target_name_override", access.server_name)]
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        attempts = self._rpc_max_attempts
        kv = KVService(channel, max_attempts=attempts)
        services = (
            kv,
            LeaseService(channel, max_attempts=attempts),
            WatchService(channel, max_attempts=attempts),
            MaintenanceService(channel, max_attempts=attempts),
        )
        txn = bypass.choose(channel, kv, prefer_bytes=self._bytes_txn) if self._appends else None
        auth = AuthService(channel, max_attempts=attempts) if access.user else None
        if auth is not None:
            try:
                self._set_token(await self._token(auth), services, txn)
            except BaseException:
                await channel.close(None)
                raise
        old = self._channel
        self._kv, self._lease, self._watch, self._maintenance = services
        self._txn, self._auth, self._channel = txn, auth, channel
        if auth is not None and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh(), name=f"etcd-token-{self.name}")
        log.debug(
            "etcd connection open",
            connection=self.name,
            target=target,
            txn_path=self.txn_path,
            access=access.describe(),
        )
        if old is not None:
            task = asyncio.create_task(self._retire(old), name=f"etcd-retire-{self.name}")
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _retire(self, channel: grpc.aio.Channel) -> None:
        try:
            await asyncio.sleep(OLD_CHANNEL_GRACE * self.timeout)
        finally:  # also when the connection closes first
            await channel.close(None)

    async def _rotate(self, seen: tuple[tuple[int, int, int] | None, ...]) -> None:
        """Pick up rotated TLS files (see the module docstring)."""
        while True:
            await asyncio.sleep(self._cert_check)
            now = files_stamp(self.access.files())
            if now == seen:
                continue
            seen = now
            try:  # file reads and certificate parsing: off the event loop
                credentials = await asyncio.to_thread(self.access.checked_credentials)
            except EtcdAccessError as e:
                log.warning("etcd TLS files changed but are not usable; keeping the connection", error=str(e))
                continue
            try:
                await self._open(credentials)
            except StoreError as e:  # the new channel could not authenticate: keep the old
                log.warning("etcd TLS files changed; the new connection failed", error=str(e))
                continue
            self.rotations += 1
            log.info("etcd TLS files changed: new connection", connection=self.name)

    async def _token(self, auth: AuthService) -> str:
        try:
            resp = await auth.authenticate(
                self.access.user, self.access.password, timeout=self.timeout, max_attempts=1
            )
        except ETCD_ERRORS as e:
            # etcd's message names the user at most; the password is never in it
            raise translate(e, f"authenticate as {self.access.user}") from e
        return str(resp.token)

    @staticmethod
    def _set_token(token: str, services: Sequence[Any], txn: bypass.TxnSender | None) -> None:
        for svc in services:
            svc.set_token(token)
        if txn is not None:
            txn.set_token(token)

    async def _authenticate(self) -> None:
        """A token for the user, set on every service of the connection."""
        assert self._auth is not None
        services = [svc for svc in (self._kv, self._lease, self._watch, self._maintenance) if svc is not None]
        self._set_token(await self._token(self._auth), services, self._txn)

    async def _refresh(self) -> None:
        """Renew the token before etcd expires it; a failure is retried with backoff (the
        previous token stays in use until etcd refuses it)."""
        backoff = _TOKEN_RETRY.start()
        delay = TOKEN_REFRESH
        while True:
            await asyncio.sleep(delay)
            try:
                await self._authenticate()
            except StoreError as e:
                log.warning("etcd token renewal failed; retrying", connection=self.name, error=str(e))
                delay = backoff.next_delay()
            else:
                backoff.reset()
                delay = TOKEN_REFRESH

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        refresher, self._refresher = self._refresher, None
        rotator, self._rotator = self._rotator, None
        for task in (refresher, rotator, *self._retired):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._kv = self._lease = self._watch = self._maintenance = None
        self._auth = None
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
    def maintenance(self) -> MaintenanceService:
        if self._maintenance is None:
            raise StoreUnavailable(f"etcd connection ({self.name}) is not open")
        return self._maintenance

    @property
    def txn_path(self) -> str:
        """How append transactions are sent: "bytes" or "etcd3aio-txn" ("": closed, or a
        connection that sends none)."""
        return self._txn.name if self._txn is not None else ""

    def append_txn(self, txn: Txn, within: float | None = None) -> Awaitable[Any]:
        """Send an append transaction (see :mod:`lvs_events.etcd.bypass`) with a deadline of
        ``within`` seconds (default: the connection's timeout); the ``TxnResponse``.
        Raises what etcd3aio and gRPC raise (:data:`ETCD_ERRORS`). The sender's own coroutine,
        not one more around it: this is every append's path."""
        if self._txn is None:
            raise StoreUnavailable(f"etcd connection ({self.name}) is not open for appends")
        return self._txn.send(txn, self.timeout if within is None else within)
