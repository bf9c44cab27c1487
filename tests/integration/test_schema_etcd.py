"""The schema version key on a real etcd: concurrent creators agree, a newer one is refused,
and a hand-written ``etcdctl put`` value is read."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from datastore import keys
from datastore.client import Datastore, EtcdConfig
from datastore.embedded import EmbeddedEtcd
from datastore.schema import (
    SCHEMA_VERSION,
    SchemaTooNewError,
    ensure_schema,
    read_schema_version,
)


def connect(etcd: EmbeddedEtcd) -> Datastore:
    return Datastore(EtcdConfig.from_strings(etcd.endpoint))


async def test_concurrent_agents_create_one_version(etcd: EmbeddedEtcd) -> None:
    clients = [connect(etcd) for _ in range(8)]
    try:
        await asyncio.gather(*(ensure_schema(c) for c in clients))
        kv = await clients[0].get(keys.full(keys.SCHEMA_VERSION))
        assert kv is not None and kv.version == 1  # created once, never overwritten
        assert await read_schema_version(clients[0]) == SCHEMA_VERSION
    finally:
        for c in clients:
            await c.close()


async def test_etcdctl_written_newer_version_is_refused(etcd: EmbeddedEtcd) -> None:
    subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "put",
                    keys.full(keys.SCHEMA_VERSION), str(SCHEMA_VERSION + 1)],
                   check=True, capture_output=True, env=dict(os.environ, ETCDCTL_API="3"))
    async with connect(etcd) as ds:
        with pytest.raises(SchemaTooNewError, match="upgrade"):
            await ensure_schema(ds)
        assert await read_schema_version(ds) == SCHEMA_VERSION + 1
