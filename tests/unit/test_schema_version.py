"""The schema version key on the in-memory etcd: created once, refused when newer."""

from __future__ import annotations

import json

import pytest

from datastore import keys
from datastore.client import KV, UnavailableError
from datastore.fake import FakeDatastore
from datastore.schema import (
    SCHEMA_VERSION,
    SchemaError,
    SchemaTooNewError,
    decode_version,
    ensure_schema,
    read_schema_version,
)

KEY = keys.full(keys.SCHEMA_VERSION)


async def test_fresh_datastore_gets_the_current_version() -> None:
    ds = FakeDatastore()
    assert await read_schema_version(ds) is None
    await ensure_schema(ds)
    kv = await ds.get(KEY)
    assert kv is not None
    assert json.loads(kv.value) == {"version": SCHEMA_VERSION}
    assert await read_schema_version(ds) == SCHEMA_VERSION


async def test_second_call_writes_nothing() -> None:
    ds = FakeDatastore()
    await ensure_schema(ds)
    rev = await ds.revision()
    await ensure_schema(ds)
    assert await ds.revision() == rev


@pytest.mark.parametrize("value", [b"1", b'{"version": 1}', b'{"version":1,"note":"x"}'])
async def test_hand_written_forms_are_accepted(value: bytes) -> None:
    ds = FakeDatastore()
    await ds.put(KEY, value)
    rev = await ds.revision()
    await ensure_schema(ds)
    assert await ds.revision() == rev  # left as written


async def test_newer_datastore_is_refused_with_a_clear_message() -> None:
    ds = FakeDatastore()
    await ds.put(KEY, json.dumps({"version": SCHEMA_VERSION + 1}).encode())
    with pytest.raises(SchemaTooNewError) as ei:
        await ensure_schema(ds)
    msg = str(ei.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in msg
    assert f"up to {SCHEMA_VERSION}" in msg
    assert "/l3fabric/v1/schema/version" in msg
    assert "upgrade" in msg
    assert ei.value.found == SCHEMA_VERSION + 1
    # The key is untouched: an old agent never "downgrades" the datastore.
    kv = await ds.get(KEY)
    assert kv is not None and json.loads(kv.value)["version"] == SCHEMA_VERSION + 1


@pytest.mark.parametrize("value", [b"", b"abc", b'"1"', b"0", b"-3", b"true", b"1.5",
                                   b'{"version": "1"}', b"{}", b"\xff\xfe"])
async def test_unusable_values_raise_schema_error(value: bytes) -> None:
    ds = FakeDatastore()
    await ds.put(KEY, value)
    with pytest.raises(SchemaError) as ei:
        await ensure_schema(ds)
    assert not isinstance(ei.value, SchemaTooNewError)
    assert "schema/version" in str(ei.value)


def test_decode_version_forms() -> None:
    assert decode_version(b"7") == 7
    assert decode_version(b'{"version": 2}') == 2


class _RacingDatastore(FakeDatastore):
    """Another agent creates the key between our get and our create."""

    def __init__(self, their_version: int) -> None:
        super().__init__()
        self.their_version = their_version
        self.raced = False

    async def get(self, key: str) -> KV | None:
        kv = await super().get(key)
        if key == KEY and not self.raced:
            self.raced = True
            await self.put(KEY, json.dumps({"version": self.their_version}).encode())
        return kv


async def test_losing_the_create_race_to_an_equal_version_is_fine() -> None:
    ds = _RacingDatastore(SCHEMA_VERSION)
    await ensure_schema(ds)
    assert ds.raced
    assert await read_schema_version(ds) == SCHEMA_VERSION


async def test_losing_the_create_race_to_a_newer_version_refuses() -> None:
    ds = _RacingDatastore(SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNewError):
        await ensure_schema(ds)


async def test_unreachable_etcd_is_the_datastore_error() -> None:
    ds = FakeDatastore()
    ds.set_available(False)
    with pytest.raises(UnavailableError):
        await ensure_schema(ds)
