"""A client whose shared watch stream is wedged still watches again.

aetcd shares one watch stream per client and lets one watch creation be pending at a time;
after an etcd outage (all members killed and restarted) its stream was seen left with a
creation "pending" that never completed, and every later watch on that client waited
behind it, forever (aetcd bounds the wait for a creation's answer, not the wait for its
turn). In the chaos soak an agent then mirrored etcd only at its periodic resyncs: deleted
pods stayed in its policy sets, and a deleted policy stayed in force, for up to a minute
after such an outage.
"""

from __future__ import annotations

import asyncio

import aetcd
import pytest

from datastore.client import Datastore, EtcdConfig, UnavailableError
from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

P = "/l3fabric/v1/config/watchtest/"


async def test_a_watch_on_a_wedged_watch_stream_fails_then_the_next_one_works(
        etcd: EmbeddedEtcd) -> None:
    async with Datastore(EtcdConfig.from_strings(etcd.endpoint, timeout=1.0)) as ds:
        await ds.put(P + "k", b"0")
        await ds.revision()  # connected: the client's shared watch stream exists
        # The state the outage left: a creation marked pending whose answer never comes.
        ds._client._watcher._new_callback = aetcd.watcher.WatcherCallback(None)
        first = ds.watch(P, 1)
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(anext(first), 15)
        await first.aclose()
        again = ds.watch(P, 1)
        try:
            got = await asyncio.wait_for(anext(again), 15)
        finally:
            await again.aclose()
        assert got.kv.key == P + "k"
