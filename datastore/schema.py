"""The datastore's schema version: ``/l3fabric/v1/schema/version``.

Why: an agent binary is replaced node by node, so for a while old and new agents share
one etcd. When a future release changes what keys mean, it raises `SCHEMA_VERSION` and
writes the higher number; an agent built for an older schema must then stop with a
clear message instead of misreading the data (and, worse, writing it back).

Owned here: the one key, its value format and the comparison. The value is a JSON
object ``{"version": 1}``; a bare ``1`` (what ``etcdctl put .../schema/version 1`` writes)
is accepted too, so the key stays human-writable like every other l3fabric key.

Rules:

* absent -> created with ``SCHEMA_VERSION`` in one transaction that requires it to be
  absent (``create_revision == 0``); losing that race to another agent is fine, the
  winner's value is then read and checked like any other;
* equal -> nothing to do;
* newer than this code -> `SchemaTooNewError` (the caller refuses to start);
* older, or not a version at all -> `SchemaError`. With only schema 1 existing, an older
  number can only have been written by hand; a future release migrates and bumps it.

Callers: the agent at start (before the first snapshot) and ``fabricctl apply``. Reads
and writes go through `datastore.client.Datastore`, so `datastore.fake.FakeDatastore`
serves for unit tests.
"""

from __future__ import annotations

import json
import logging

from datastore import keys
from datastore.client import ConflictError, Datastore

log = logging.getLogger(__name__)

#: The schema this code reads and writes. Raise it (and add a migration) when the
#: meaning of existing keys changes incompatibly.
SCHEMA_VERSION = 1


class SchemaError(Exception):
    """The schema version key holds something this code cannot accept."""


class SchemaTooNewError(SchemaError):
    """The datastore was written by a newer l3fabric than this one."""

    def __init__(self, found: int, supported: int = SCHEMA_VERSION) -> None:
        super().__init__(
            f"the datastore has schema version {found} ({keys.full(keys.SCHEMA_VERSION)}), "
            f"but this l3fabric understands schema versions up to {supported}: upgrade "
            f"fabric-agent/fabricctl on this host before pointing it at this datastore")
        self.found = found
        self.supported = supported


def encode_version(version: int = SCHEMA_VERSION) -> bytes:
    return json.dumps({"version": version}, separators=(",", ":")).encode()


def decode_version(value: bytes) -> int:
    """The version in a stored value; `SchemaError` names the key and what is wrong."""
    where = keys.full(keys.SCHEMA_VERSION)
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SchemaError(f"{where}: {value[:40]!r} is not JSON; expected "
                          f'{{"version": N}}') from None
    if isinstance(obj, dict):
        obj = obj.get("version")
    if isinstance(obj, bool) or not isinstance(obj, int) or obj < 1:
        raise SchemaError(f"{where}: expected a positive integer version, found {obj!r}")
    return obj


async def read_schema_version(ds: Datastore) -> int | None:
    """The stored schema version, or None when the key is absent (a fresh datastore)."""
    kv = await ds.get(keys.full(keys.SCHEMA_VERSION))
    return None if kv is None else decode_version(kv.value)


def check_version(found: int, supported: int = SCHEMA_VERSION) -> None:
    if found > supported:
        raise SchemaTooNewError(found, supported)
    if found < supported:
        raise SchemaError(
            f"{keys.full(keys.SCHEMA_VERSION)}: schema version {found} is older than "
            f"{supported} and no migration from it exists; was it written by hand?")


async def ensure_schema(ds: Datastore) -> None:
    """Create the schema version key when absent; raise when it names another schema.

    Raises `SchemaTooNewError` for a newer datastore, `SchemaError` for an unusable value,
    and the datastore's own errors (`UnavailableError`, ...) when etcd cannot be asked.
    """
    key = keys.full(keys.SCHEMA_VERSION)
    found = await read_schema_version(ds)
    if found is None:
        try:
            await ds.create(key, encode_version())
            log.info("datastore schema version set to %d", SCHEMA_VERSION)
            return
        except ConflictError:
            # Race: another agent (or fabricctl) created it between our get and create.
            found = await read_schema_version(ds)
            if found is None:  # created and deleted again meanwhile; do not loop
                raise SchemaError(f"{key}: appeared and vanished while being created; "
                                  f"retry") from None
    check_version(found)
