"""Shared pytest fixtures: real etcd servers started per test; the CI guard.

Outside CI a test whose prerequisite is missing (an etcd binary, root for network namespaces,
the shared corpus, the IPVS VM, upstream ldirectord) is skipped with the reason. Under CI
(``$CI`` set to anything but "", "0", "false", "no") **every** skip is turned into a failure
that quotes the skip's reason (:func:`pytest_runtest_makereport`): a green CI run means every
collected test ran. An empty ``parametrize`` list (a corpus that was not found at import time)
fails collection (``empty_parameter_set_mark`` in pyproject.toml), so it cannot hide either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

from tests.support.etcd import EtcdCluster, find_etcd, find_etcdctl

ETCD_FIXTURES = frozenset({"etcd", "etcd3", "etcd_bin"})


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _require(binary: str | None, what: str, package: str) -> str:
    if binary is not None:
        return binary
    message = f"{what} binary not found (apt-get install {package})"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)


def require_etcd() -> str:
    """Path of the etcd binary; skips the test (or fails it under CI) if absent."""
    return _require(find_etcd(), "etcd", "etcd-server")


def require_etcdctl() -> str:
    """Path of the etcdctl binary; skips the test (or fails it under CI) if absent."""
    return _require(find_etcdctl(), "etcdctl", "etcd-client")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Under CI a skipped test is a failed one (see the module docstring)."""
    report: pytest.TestReport = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
    return report


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """structlog's configuration is process-wide: a test that configures it (a daemon's or the
    CLI's ``main`` run in-process) must not change how later tests' code logs."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag every test using a real-etcd fixture with the ``etcd`` marker (for ``-m "not etcd"``)."""
    for item in items:
        if ETCD_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.etcd)


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    """A fresh single-member etcd cluster for this test (data is thrown away afterwards)."""
    binary = require_etcd()
    with EtcdCluster(size=1, etcd_binary=binary) as cluster:
        yield cluster


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster for this test (data is thrown away afterwards)."""
    binary = require_etcd()
    with EtcdCluster(size=3, etcd_binary=binary) as cluster:
        yield cluster


@pytest.fixture
def etcd_bin() -> str:
    """Path of the etcd server binary (skipped, or failed under CI, if absent)."""
    return require_etcd()


@pytest.fixture
def etcdctl_bin() -> str:
    """Path of the etcdctl binary (skipped, or failed under CI, if absent)."""
    return require_etcdctl()
