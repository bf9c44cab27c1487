"""Shared pytest fixtures: a private etcd per test and throw-away network namespaces.

Every fixture removes what it made, also when the test fails. Tests marked
``integration`` or ``e2e`` need root; without it they are skipped with a reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from helpers import shims

from datastore.embedded import EmbeddedEtcd
from felix_like.netlink import delete_netns

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/tests/unit/" in path:
            item.add_marker(pytest.mark.unit)
        elif "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/tests/e2e/" in path:
            item.add_marker(pytest.mark.e2e)
        if not IS_ROOT and ("/tests/integration/" in path or "/tests/e2e/" in path):
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, etcd)"))


@pytest.fixture(scope="session", autouse=True)
def _remove_tmp_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session's tmp_path directories go when it ends, passed or failed (pytest keeps
    the last three sessions'; assertion messages carry the log tails a failure needs).
    Only this session's own directory: another session running at the same time keeps
    its own (pytest's ``tmp_path_retention_policy = "none"`` removed those too)."""
    yield
    shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def cni_shims() -> Iterator[None]:
    """The CNI shims the tests exec are the ones ``fabricctl install-cni`` writes
    (`helpers.shims`: installed on first use); they go when the session ends."""
    try:
        yield
    finally:
        shims.remove()


def _etcd_member() -> Iterator[EmbeddedEtcd]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make setup` (Debian package etcd-server)")
    member = EmbeddedEtcd.temporary()
    member.start()
    try:
        yield member
    finally:
        member.stop()


@pytest.fixture
def etcd() -> Iterator[EmbeddedEtcd]:
    """A fresh single-member etcd on a free loopback port; its data dir is removed after."""
    yield from _etcd_member()


@pytest.fixture(scope="module")
def module_etcd() -> Iterator[EmbeddedEtcd]:
    """One etcd for a test module (its tests clean up after themselves or wipe
    /l3fabric/ first): saves a start per test."""
    yield from _etcd_member()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """A factory of uniquely named network namespaces (``fabt-<tag>-<hex>``).

    Each namespace gets ``lo`` up and nothing else: no route leads out of it. All of
    them are deleted at teardown, with any process still inside killed first.
    """
    made: list[str] = []

    def make(tag: str = "ns") -> str:
        name = f"fabt-{tag}-{uuid.uuid4().hex[:6]}"
        _run("ip", "netns", "add", name)
        made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            delete_netns(name)
