"""CAS helpers and cas_retry against the FakeDatastore: races resolve, budgets are bounded."""

from __future__ import annotations

import json

import pytest

from datastore.cas import (
    Backoff,
    cas_retry,
    create_if_absent,
    delete_if_revision,
    update_if_revision,
)
from datastore.client import ConflictError, UnavailableError
from datastore.fake import FakeDatastore


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, d: float) -> None:
        self.delays.append(d)


async def test_create_update_delete_compare_revisions() -> None:
    ds = FakeDatastore()
    assert await create_if_absent(ds, "/k", b"1") is True
    assert await create_if_absent(ds, "/k", b"2") is False
    kv = await ds.get("/k")
    assert kv is not None and kv.value == b"1"
    rev = await update_if_revision(ds, "/k", b"3", kv.mod_revision)
    with pytest.raises(ConflictError):
        await update_if_revision(ds, "/k", b"4", kv.mod_revision)
    with pytest.raises(ConflictError):
        await delete_if_revision(ds, "/k", kv.mod_revision)
    await delete_if_revision(ds, "/k", rev)
    assert await ds.get("/k") is None
    with pytest.raises(ConflictError):
        await delete_if_revision(ds, "/k", rev)  # already gone
    with pytest.raises(ConflictError):
        await update_if_revision(ds, "/k", b"5", rev)  # gone: mod is 0


async def test_cas_retry_recomputes_after_a_lost_race() -> None:
    ds = FakeDatastore()
    await ds.put("/counter", b"0")
    runs = 0

    async def increment() -> int:
        nonlocal runs
        runs += 1
        kv = await ds.get("/counter")
        assert kv is not None
        n = int(kv.value)
        if runs == 1:  # a rival writes between our read and our write
            await ds.put("/counter", str(n + 100).encode())
        await update_if_revision(ds, "/counter", str(n + 1).encode(), kv.mod_revision)
        return n + 1

    sleeps = Sleeps()
    assert await cas_retry(increment, sleep=sleeps, rand=lambda: 0.5) == 101
    assert runs == 2 and sleeps.delays == [Backoff().initial]
    kv = await ds.get("/counter")
    assert kv is not None and kv.value == b"101"


async def test_cas_retry_gives_up_with_a_clear_error() -> None:
    async def always_conflicts() -> None:
        raise ConflictError("/k changed since revision 7")

    sleeps = Sleeps()
    with pytest.raises(ConflictError, match="gave up after 4 conflicting attempts: /k chang"):
        await cas_retry(always_conflicts, attempts=4, sleep=sleeps, rand=lambda: 0.5)
    assert sleeps.delays == [0.005, 0.01, 0.02]


async def test_cas_retry_unavailable_budget() -> None:
    ds = FakeDatastore()
    ds.fail_next(2)

    async def create() -> bool:
        return await create_if_absent(ds, "/k", json.dumps({}).encode())

    sleeps = Sleeps()
    with pytest.raises(UnavailableError):
        await cas_retry(create, sleep=sleeps)  # no unavailable retries by default
    assert await cas_retry(create, unavailable_retries=3, sleep=sleeps) is True
    assert len(sleeps.delays) == 1


def test_backoff_is_bounded_and_jittered() -> None:
    b = Backoff(initial=0.1, maximum=1.0, jitter=0.5)
    assert b.delay(0, lambda: 0.0) == pytest.approx(0.05)
    assert b.delay(0, lambda: 0.999999) == pytest.approx(0.15, rel=1e-4)
    assert b.delay(50, lambda: 0.5) == pytest.approx(1.0)
