"""Fixtures of the fault suite: every test here needs root (namespaces, etcd, BIRD, ExaBGP).

Tests under ``tests/faults/`` get the ``integration`` marker (each module also sets it) and
are skipped with a reason without root. Module-scoped resources (an etcd, namespaces) are
made here because the shared ``etcd``/``netns`` fixtures are per test; they are removed at
the end of the module, also after a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers.faults import Namespaces

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/faults/" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.integration)
        if not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, etcd)"))


@pytest.fixture(scope="module")
def module_ns() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.close()
