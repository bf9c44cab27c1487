"""A malformed value met with no last good value held: the syncer walks etcd's history.

What a restarted agent sees: the value in force is the newest earlier version that
decodes; the error is still reported. With the history compacted, or a key created
malformed (or deleted and re-created malformed), nothing is in force, as before.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from datastore.fake import FakeDatastore
from datastore.syncer import HISTORY_STEPS, ConfigError, InSync, Syncer, Update

K = "/l3fabric/v1/config/ippools/p1"
BAD = b"{not json"


def decode(key: str, raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def good(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


async def restarted(ds: FakeDatastore) -> tuple[Syncer[dict[str, Any]], list[Any]]:
    """A fresh syncer (an agent just started) and its first snapshot."""
    syncer: Syncer[dict[str, Any]] = Syncer(ds, "/l3fabric/v1/", decode)
    return syncer, await syncer.resync()


async def test_last_good_value_found_several_versions_back(
        caplog: pytest.LogCaptureFixture) -> None:
    ds = FakeDatastore()
    await ds.put(K, good(1))
    last_good = await ds.put(K, good(2))
    await ds.put(K, b"[1]")  # decodes as JSON but is invalid
    bad = await ds.put(K, BAD)
    with caplog.at_level(logging.WARNING):
        syncer, evs = await restarted(ds)
    assert evs[0] == Update(K, {"n": 2}, last_good)
    assert isinstance(evs[1], ConfigError) and evs[1].revision == bad
    assert isinstance(evs[2], InSync)
    assert syncer.current[K] == {"n": 2}
    assert K in syncer.errors
    assert f"revision {bad}" in caplog.text
    # A later valid write replaces it as usual and clears the error.
    fixed = await ds.put(K, good(3))
    _, evs = await restarted(ds)
    assert evs[0] == Update(K, {"n": 3}, fixed)


async def test_compacted_history_leaves_nothing_in_force(
        caplog: pytest.LogCaptureFixture) -> None:
    ds = FakeDatastore()
    await ds.put(K, good(1))
    bad = await ds.put(K, BAD)
    await ds.compact(bad)
    with caplog.at_level(logging.WARNING):
        syncer, evs = await restarted(ds)
    assert [type(e) for e in evs] == [ConfigError, InSync]
    assert K not in syncer.current and K in syncer.errors
    assert "no earlier valid value exists" in caplog.text


async def test_a_key_created_malformed_has_no_last_good_value(
        caplog: pytest.LogCaptureFixture) -> None:
    ds = FakeDatastore()
    await ds.put(K, BAD)
    await ds.put(K, b"[2]")
    with caplog.at_level(logging.WARNING):
        syncer, evs = await restarted(ds)
    assert [type(e) for e in evs] == [ConfigError, InSync]
    assert K not in syncer.current
    assert "no earlier valid value exists" in caplog.text


async def test_a_deleted_then_recreated_key_does_not_inherit_its_old_value() -> None:
    ds = FakeDatastore()
    await ds.put(K, good(1))
    await ds.delete(K)
    await ds.put(K, BAD)
    syncer, evs = await restarted(ds)
    assert [type(e) for e in evs] == [ConfigError, InSync]
    assert K not in syncer.current


async def test_the_walk_is_bounded() -> None:
    ds = FakeDatastore()
    await ds.put(K, good(1))
    for _ in range(HISTORY_STEPS + 1):
        await ds.put(K, BAD)
    syncer, evs = await restarted(ds)
    assert [type(e) for e in evs] == [ConfigError, InSync]
    assert K not in syncer.current

