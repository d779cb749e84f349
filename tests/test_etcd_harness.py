"""The real-etcd test harness itself: members come up, serve, survive a crash, restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request

import pytest
from etcd3aio import Etcd3Client

from tests.support.etcd import EtcdCluster, EtcdMember, EtcdStartError, free_port, free_ports


def _etcdctl(binary: str, endpoints: list[str], *args: str) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    result = subprocess.run(
        [binary, f"--endpoints={','.join(endpoints)}", "--command-timeout=5s", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def _put(endpoints: list[str], key: str, value: str) -> None:
    async with Etcd3Client(endpoints) as client:
        assert client.kv is not None
        await client.kv.put(key, value, timeout=5)


async def _get(endpoints: list[str], key: str) -> bytes | None:
    async with Etcd3Client(endpoints) as client:
        assert client.kv is not None
        resp = await client.kv.get(key, timeout=5)
        return bytes(resp.kvs[0].value) if resp.kvs else None


def test_free_ports_are_distinct() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert 0 < free_port() < 65536


def test_single_member_answers_health(etcd: EtcdCluster) -> None:
    assert len(etcd) == 1
    (endpoint,) = etcd.endpoints
    assert endpoint.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{endpoint}/health", timeout=2) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["health"] == "true"
    assert etcd.healthy() == [True]
    assert etcd.leader() == 0
    assert etcd[0].log_path.exists()
    assert etcd[0].data_dir.is_dir()


def test_put_get_with_etcdctl(etcd: EtcdCluster, etcdctl_bin: str) -> None:
    assert _etcdctl(etcdctl_bin, etcd.endpoints, "put", "/harness/k", "v1").strip() == "OK"
    out = _etcdctl(etcdctl_bin, etcd.endpoints, "get", "--print-value-only", "/harness/k")
    assert out.strip() == "v1"


async def test_put_get_with_python_client(etcd: EtcdCluster) -> None:
    await _put(etcd.endpoints, "/harness/k", "v2")
    assert await _get(etcd.endpoints, "/harness/k") == b"v2"


async def test_data_survives_graceful_restart(etcd: EtcdCluster) -> None:
    await _put(etcd.endpoints, "/harness/persist", "yes")
    etcd.stop(0)
    assert not etcd[0].running
    assert etcd.healthy() == [False]
    etcd.start(0)
    assert await _get(etcd.endpoints, "/harness/persist") == b"yes"


def test_each_test_gets_fresh_data(etcd_bin: str, etcdctl_bin: str) -> None:
    """Two clusters started one after the other, as two tests' fixtures would be: what the first
    wrote is not in the second (own data directory, own ports), whatever the order tests run in."""
    with EtcdCluster(size=1, etcd_binary=etcd_bin) as first:
        _etcdctl(etcdctl_bin, first.endpoints, "put", "/harness/leftover", "x")
        got = _etcdctl(etcdctl_bin, first.endpoints, "get", "--print-value-only", "/harness/leftover")
        assert got.strip() == "x"
        first_dir = first[0].data_dir
    assert not first_dir.exists(), "the first cluster's data directory is removed"
    with EtcdCluster(size=1, etcd_binary=etcd_bin) as second:
        assert second[0].data_dir != first_dir
        assert _etcdctl(etcdctl_bin, second.endpoints, "get", "--prefix", "/harness/").strip() == ""


@pytest.mark.slow
async def test_three_members_survive_killing_the_leader(etcd3: EtcdCluster) -> None:
    assert len(etcd3.endpoints) == 3
    assert etcd3.healthy() == [True, True, True]
    await _put(etcd3.endpoints, "/harness/before", "1")

    victim = etcd3.leader()
    etcd3.kill(victim)
    assert not etcd3[victim].running
    survivors = etcd3.running_endpoints
    assert len(survivors) == 2

    # The two survivors elect a new leader and keep accepting writes. (A write sent
    # before the new election completes may hang until etcd's ~6 s request timeout.)
    assert etcd3.leader() != victim
    await _put(survivors, "/harness/during", "2")
    assert await _get(survivors, "/harness/during") == b"2"

    # The crashed member rejoins from its data dir and catches up.
    etcd3.start(victim)
    etcd3.wait_healthy()
    only_victim = [etcd3.endpoints[victim]]
    assert await _get(only_victim, "/harness/before") == b"1"
    assert await _get(only_victim, "/harness/during") == b"2"


def test_start_failure_reports_log_tail(etcd_bin: str) -> None:
    # A client port that is already taken: the member exits and the error carries its log tail.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        member = EtcdMember(
            "clash", client_port=busy.getsockname()[1], peer_port=free_port(), etcd_binary=etcd_bin
        )
        try:
            with pytest.raises(EtcdStartError, match="last lines of") as excinfo:
                member.start(timeout=10)
            assert excinfo.value.address_in_use
            assert not member.running
        finally:
            member.close()
    assert not member.tmp_dir.exists()
