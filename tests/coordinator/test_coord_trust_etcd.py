"""The coordinator's etcd hop: deadlines that reach the etcd transaction (a frozen etcd), etcd
over TLS with client certificates, and etcd users with RBAC limited to the cluster's prefix (the
etcdctl commands of docs/security.md, run here against a real etcd)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from lvs_events.coordinator.server import CoordinatorSettings, serve_coordinator
from lvs_events.errors import StoreError
from lvs_events.etcd.connection import ETCD_ERRORS, Connection, EtcdAccess, EtcdAccessError, access_from
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc
from lvs_events.security import pki
from lvs_events.security.principal import Role
from lvs_events.security.tls import TlsFiles, channel_credentials
from tests.conftest import require_etcd
from tests.coordinator.conftest import StartCoordinator
from tests.coordinator.helpers import CLUSTER, health_event, read_log
from tests.support.etcd import EtcdCluster, EtcdTls

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init(
        d,
        [
            pki.Identity("lb1", Role.DIRECTOR),
            pki.Identity("root", Role.OPERATOR),  # etcd's administrator (CN=root)
            pki.Identity("alice", Role.OPERATOR),
        ],
    )
    return d


def pair(d: Path, name: str) -> tuple[Path, Path]:
    return pki.cert_path(d, name), pki.key_path(d, name)


def etcd_tls(d: Path, *, client: str = "root", client_cert_auth: bool = True) -> EtcdTls:
    cert, key = pair(d, "lb1")
    ccert, ckey = pair(d, client)
    return EtcdTls(cert, key, d / pki.CA_CERT, ccert, ckey, client_cert_auth=client_cert_auth)


@pytest.fixture
def tls_etcd(pki_dir: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(1, etcd_binary=require_etcd(), tls=etcd_tls(pki_dir)) as cluster:
        yield cluster


def lb1_access(d: Path, **more: str) -> EtcdAccess:
    cert, key = pair(d, "lb1")
    return EtcdAccess(ca=d / pki.CA_CERT, cert=cert, key=key, **more)  # type: ignore[arg-type]


async def publish(
    address: str, creds: grpc.ChannelCredentials | None, n: int = 1, node: str = "lvs-a"
) -> list[cpb.PublishAck]:
    async with (
        grpc.aio.secure_channel(address, creds) if creds else grpc.aio.insecure_channel(address)
    ) as ch:
        stub = cpb_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
        events = [health_event(real=f"192.0.2.{30 + i}:80", node=node) for i in range(n)]
        call = stub.Publish(iter([cpb.PublishRequest(events=events)]), timeout=10)
        return [a for ack in [ack async for ack in call] for a in ack.acks]


# --- deadlines -----------------------------------------------------------------------------


async def _open_stream(stub: Any, deadline: float) -> tuple[Any, asyncio.Queue[Any]]:
    """A Publish stream fed from a queue (None ends it)."""
    q: asyncio.Queue[Any] = asyncio.Queue()

    async def requests() -> AsyncIterator[cpb.PublishRequest]:
        while (ev := await q.get()) is not None:
            yield cpb.PublishRequest(events=[ev])

    return stub.Publish(requests(), timeout=deadline), q


async def _acks(call: Any) -> list[cpb.PublishAck] | grpc.StatusCode:
    try:
        return [a for ack in [ack async for ack in call] for a in ack.acks]
    except grpc.aio.AioRpcError as e:
        return e.code()


async def test_events_whose_deadline_passes_while_etcd_is_frozen_are_never_appended_later(
    etcd: EtcdCluster, start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    """Both of the appender's transaction slots hang on a frozen etcd (events of a patient
    caller); a hasty caller's events queue behind them, its deadline passes, its call fails.
    After SIGCONT the patient caller's events land; the hasty one's never do."""
    async with start_coordinator() as c, grpc.aio.insecure_channel(c.address) as ch:
        stub = cpb_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
        warm = await _acks(stub.Publish(iter([cpb.PublishRequest(events=[health_event("warm")])])))
        assert [a.error_code for a in warm] == [""]  # type: ignore[union-attr]
        etcd[0].pause()
        try:
            patient, pq = await _open_stream(stub, 30.0)
            patient_acks = asyncio.create_task(_acks(patient))
            for i in range(2):  # one transaction each: the appender's two slots
                await pq.put(health_event(f"patient{i}", real=f"192.0.2.{50 + i}:80"))
                await asyncio.sleep(0.3)
            await pq.put(None)
            hasty, hq = await _open_stream(stub, 1.0)
            for i in range(3):
                await hq.put(health_event(f"hasty{i}", real=f"192.0.2.{60 + i}:80"))
            await hq.put(None)
            assert await _acks(hasty) == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            etcd[0].resume()
        acks = await patient_acks
        assert not isinstance(acks, grpc.StatusCode), acks
        assert [a.error_code for a in acks] == ["", ""]
        await asyncio.sleep(1.0)  # the appender has taken (and dropped) the hasty events by now
        assert [e.event_id for e in await read_log(store)] == ["warm", "patient0", "patient1"]


async def test_an_append_in_flight_at_the_deadline_is_answered_unknown_and_a_retry_is_idempotent(
    etcd: EtcdCluster, start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    async with start_coordinator() as c, grpc.aio.insecure_channel(c.address) as ch:
        stub = cpb_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
        ev = health_event("x1")
        first = await _acks(stub.Publish(iter([cpb.PublishRequest(events=[health_event("w")])])))
        assert [a.error_code for a in first] == [""]  # type: ignore[union-attr]
        etcd[0].pause()
        try:
            acks = await _acks(stub.Publish(iter([cpb.PublishRequest(events=[ev])]), timeout=1.5))
        finally:
            etcd[0].resume()
        # the transaction went out before the deadline: etcd may still apply it, and the
        # coordinator says so, in time for the caller to read it
        assert not isinstance(acks, grpc.StatusCode), acks
        assert [a.error_code for a in acks] == ["DEADLINE_EXCEEDED"]
        assert "outcome is unknown" in acks[0].error
        again = await _acks(stub.Publish(iter([cpb.PublishRequest(events=[ev])]), timeout=10))
        assert not isinstance(again, grpc.StatusCode)
        assert [a.error_code for a in again] == [""]
    assert [e.event_id for e in await read_log(store)] == ["w", "x1"]


async def test_the_appender_never_sends_an_event_whose_deadline_passed(
    etcd: EtcdCluster, store: EtcdEventStore
) -> None:
    from lvs_events.coordinator.appender import Appender
    from lvs_events.errors import DeadlinePassed

    appender = Appender(store)
    runner = asyncio.create_task(appender.run())
    try:
        loop = asyncio.get_running_loop()
        ev = health_event("expired")
        fut = await appender.submit(ev, ev.ByteSize(), deadline=loop.time() - 0.001)
        with pytest.raises(DeadlinePassed) as err:
            await fut
        assert not err.value.sent
        ok = health_event("in-time")
        assert (await appender.append(ok, ok.ByteSize())).revision == 1
    finally:
        runner.cancel()
        await asyncio.wait([runner])
    assert [e.event_id for e in await read_log(store)] == ["in-time"]


# --- etcd over TLS -------------------------------------------------------------------------


async def test_etcd_over_tls_with_a_client_certificate(tls_etcd: EtcdCluster, pki_dir: Path) -> None:
    settings = CoordinatorSettings(
        etcd_endpoints=tls_etcd.endpoints, cluster=CLUSTER, grace=5.0, etcd_access=lb1_access(pki_dir)
    )
    async with serve_coordinator(settings) as c:
        acks = await publish(c.address, None, n=3)
        assert [a.error_code for a in acks] == ["", "", ""]
        async with grpc.aio.insecure_channel(c.address) as ch:
            elect = lpb_grpc.LeaderElectionStub(ch)  # type: ignore[no-untyped-call]
            won = await elect.Campaign(lpb.CampaignRequest(node="lb1", ttl_seconds=5), timeout=5)
            assert won.acquired
    async with EtcdEventStore(tls_etcd.endpoints, CLUSTER, access=lb1_access(pki_dir)) as s:
        assert [e.WhichOneof("payload") for e in await read_log(s)] == [
            "real_server_health", "real_server_health", "real_server_health", "leadership"
        ]  # fmt: skip


async def test_etcd_refuses_a_client_without_a_certificate(tls_etcd: EtcdCluster, pki_dir: Path) -> None:
    async with EtcdEventStore(tls_etcd.endpoints, CLUSTER, access=EtcdAccess(ca=pki_dir / pki.CA_CERT)) as s:
        with pytest.raises(StoreError):
            await s.ping()


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_a_rotated_etcd_client_certificate_is_used_without_a_restart(
    tls_etcd: EtcdCluster, pki_dir: Path, tmp_path: Path
) -> None:
    """The files are looked at every 0.1 s here: a half-written rotation (the key only) is
    left alone and the connection keeps working; a complete one opens a new channel with the
    new pair (one of a CA etcd does not trust: refused from then on, proving it is used); the
    next good pair works again."""
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"

    def install(directory: Path, name: str, *, key_only: bool = False) -> None:
        c, k = pair(directory, name)
        key.write_bytes(k.read_bytes())
        if not key_only:
            cert.write_bytes(c.read_bytes())

    stranger = tmp_path / "other-ca"
    pki.init(stranger, [pki.Identity("lb1", Role.DIRECTOR)])
    install(pki_dir, "lb1")
    conn = Connection(
        tls_etcd.endpoints,
        name="test",
        timeout=2.0,
        rpc_max_attempts=1,
        access=EtcdAccess(ca=pki_dir / pki.CA_CERT, cert=cert, key=key),
        cert_check=0.1,
    )
    await conn.connect()
    try:
        await conn.kv.put(b"/rotation/a", b"1", timeout=2)
        install(stranger, "lb1", key_only=True)  # mid-rotation: the key does not match the cert
        await asyncio.sleep(0.5)
        assert conn.rotations == 0
        await conn.kv.put(b"/rotation/b", b"2", timeout=2)  # the old channel, still good
        install(stranger, "lb1")
        await _until(lambda: conn.rotations == 1, "the new pair picked up")
        with pytest.raises(ETCD_ERRORS):  # etcd does not trust that CA: the new pair is in use
            await conn.kv.put(b"/rotation/c", b"3", timeout=2)
        install(pki_dir, "alice")
        await _until(lambda: conn.rotations == 2, "the good pair picked up")
        await conn.kv.put(b"/rotation/d", b"4", timeout=2)
    finally:
        await conn.close()


async def test_mtls_on_both_hops(tls_etcd: EtcdCluster, pki_dir: Path, tmp_path: Path) -> None:
    """Client -> coordinator and coordinator -> etcd, each over mutual TLS."""
    lb1 = TlsFiles(pki_dir / pki.CA_CERT, *pair(pki_dir, "lb1"))
    settings = CoordinatorSettings(
        etcd_endpoints=tls_etcd.endpoints,
        cluster=CLUSTER,
        grace=5.0,
        tls=lb1,
        etcd_access=lb1_access(pki_dir),
    )
    async with serve_coordinator(settings) as c:
        acks = await publish(c.address, channel_credentials(lb1), n=2, node="lb1")
    assert [a.error_code for a in acks] == ["", ""]
    async with EtcdEventStore(tls_etcd.endpoints, CLUSTER, access=lb1_access(pki_dir)) as s:
        assert {(e.actor, e.origin) for e in await read_log(s)} == {("lb1", "lb1")}


# --- etcd users and RBAC -------------------------------------------------------------------


def etcdctl(binary: str, cluster: EtcdCluster, d: Path, *args: str, user: str = "") -> str:
    cert, key = pair(d, "root")
    argv = [
        binary,
        f"--endpoints={cluster.client_urls[0]}",
        f"--cacert={d / pki.CA_CERT}",
        f"--cert={cert}",
        f"--key={key}",
        "--dial-timeout=5s",
        "--command-timeout=10s",
    ]
    if user:
        argv.append(f"--user={user}")
    out = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def enable_rbac(binary: str, cluster: EtcdCluster, d: Path) -> None:
    """docs/security.md, "etcd: TLS and RBAC": a role limited to the cluster's prefix, a
    certificate user (CN) per director and a password user, then auth on."""
    role = f"lvs-events-{CLUSTER}"
    etcdctl(binary, cluster, d, "user", "add", f"root:{PASSWORD}-root")
    etcdctl(binary, cluster, d, "user", "grant-role", "root", "root")
    etcdctl(binary, cluster, d, "role", "add", role)
    prefix = f"/lvs-events/{CLUSTER}/"
    etcdctl(binary, cluster, d, "role", "grant-permission", role, "readwrite", prefix, "--prefix=true")
    etcdctl(binary, cluster, d, "user", "add", "lb1", "--no-password")
    etcdctl(binary, cluster, d, "user", "grant-role", "lb1", role)
    etcdctl(binary, cluster, d, "user", "add", f"coord:{PASSWORD}")
    etcdctl(binary, cluster, d, "user", "grant-role", "coord", role)
    etcdctl(binary, cluster, d, "auth", "enable")


async def test_etcd_rbac_limits_a_certificate_user_to_the_clusters_prefix(
    tls_etcd: EtcdCluster, pki_dir: Path, etcdctl_bin: str
) -> None:
    enable_rbac(etcdctl_bin, tls_etcd, pki_dir)
    settings = CoordinatorSettings(
        etcd_endpoints=tls_etcd.endpoints,
        cluster=CLUSTER,
        grace=5.0,
        etcd_history=0,  # compaction is root's once auth is on
        etcd_access=lb1_access(pki_dir),
    )
    async with serve_coordinator(settings) as c:
        assert [a.error_code for a in await publish(c.address, None, n=2)] == ["", ""]
    # lb1's certificate (CN=lb1) may not read outside the prefix
    async with EtcdEventStore(tls_etcd.endpoints, "other", access=lb1_access(pki_dir)) as s:
        with pytest.raises(StoreError, match="permission denied"):
            await s.bounds()
    assert "/lvs-events/test/head" in etcdctl(
        etcdctl_bin, tls_etcd, pki_dir, "get", "/lvs-events/test/head", user=f"root:{PASSWORD}-root"
    )


@pytest.mark.parametrize("bytes_txn", [True, False], ids=["bytes-txn", "etcd3aio-txn"])
async def test_an_etcd_user_with_a_password_appends_on_both_transaction_paths(
    pki_dir: Path, etcdctl_bin: str, bytes_txn: bool
) -> None:
    # TLS without client certificates: the token is the only credential
    tls = etcd_tls(pki_dir, client_cert_auth=False)
    with EtcdCluster(1, etcd_binary=require_etcd(), tls=tls) as cluster:
        enable_rbac(etcdctl_bin, cluster, pki_dir)
        access = EtcdAccess(ca=pki_dir / pki.CA_CERT, user="coord", password=PASSWORD)
        async with EtcdEventStore(cluster.endpoints, CLUSTER, access=access, bytes_txn=bytes_txn) as s:
            assert s.connection.txn_path == ("bytes" if bytes_txn else "etcd3aio-txn")
            out = await s.append([health_event("a"), health_event("b", real="192.0.2.99:80")])
            assert [a.revision for a in out] == [1, 2]
            assert [e.event_id for e in await read_log(s)] == ["a", "b"]
        anonymous = EtcdAccess(ca=pki_dir / pki.CA_CERT)
        async with EtcdEventStore(cluster.endpoints, CLUSTER, access=anonymous) as s:
            with pytest.raises(StoreError):
                await s.append([health_event("c")])
        wrong = EtcdAccess(ca=pki_dir / pki.CA_CERT, user="coord", password="wrong")
        with pytest.raises(StoreError, match="authenticate as coord") as err:
            async with EtcdEventStore(cluster.endpoints, CLUSTER, access=wrong):
                pass
        assert "wrong" not in str(err.value)


def test_the_password_comes_from_a_file_or_the_environment_never_a_flag(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    a = access_from(user="coord", password_file=str(f), environ={})
    assert (a.user, a.password) == ("coord", PASSWORD)
    assert PASSWORD not in repr(a)
    assert PASSWORD not in a.describe()
    b = access_from(environ={"LVS_EVENTS_ETCD_USER": "coord", "LVS_EVENTS_ETCD_PASSWORD": PASSWORD})
    assert (b.user, b.password) == ("coord", PASSWORD)
    with pytest.raises(EtcdAccessError, match="password"):
        access_from(user="coord", environ={})
    with pytest.raises(EtcdAccessError, match="--etcd-key"):
        access_from(ca="ca.pem", cert="c.pem", environ={})
    with pytest.raises(EtcdAccessError, match=r"missing|No such file"):
        access_from(user="coord", password_file=str(tmp_path / "absent"), environ={})


def test_the_coordinator_has_no_password_flag() -> None:
    from lvs_events.coordinator.main import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--etcd-password", PASSWORD])
    args = parse_args(["--etcd-user", "coord", "--etcd-password-file", "/dev/null"])
    assert args.etcd_user == "coord"


async def test_a_log_reader_follows_across_a_rotation_of_the_etcd_client_certificate(
    tls_etcd: EtcdCluster, pki_dir: Path, tmp_path: Path
) -> None:
    """The watch on the replaced channel ends when that channel closes (after its grace); the
    reader reads again on the new one and misses nothing."""
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    for src, dst in zip(pair(pki_dir, "lb1"), (cert, key), strict=True):
        dst.write_bytes(src.read_bytes())
    access = EtcdAccess(ca=pki_dir / pki.CA_CERT, cert=cert, key=key)
    async with EtcdEventStore(tls_etcd.endpoints, "rot", access=access) as writer:
        # the files looked at every 0.1 s, not 30; the old channel's grace is 2 x 0.5 s
        reader = EtcdEventStore(tls_etcd.endpoints, "rot", access=access, timeout=0.5, cert_check=0.1)
        async with reader:
            got: list[int] = []

            async def follow() -> None:
                async for item in reader.read(1, follow=True):
                    got.append(item.event.revision)

            task = asyncio.create_task(follow())
            try:
                await writer.append([health_event("r1", cluster="rot")])
                await _until(lambda: got == [1], "the first event")
                for src, dst in zip(pair(pki_dir, "alice"), (cert, key), strict=True):
                    dst.write_bytes(src.read_bytes())
                await _until(lambda: reader.connection.rotations == 1, "the rotation")
                await asyncio.sleep(1.5)  # past the old channel's grace (2 x 0.5 s): it closed
                await writer.append([health_event("r2", cluster="rot")])
                if task.done():
                    raise AssertionError(f"the reader ended: {task.exception()!r}")
                await _until(lambda: got == [1, 2], "the event after the rotation")
                assert not task.done()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
