"""IPAM's inputs: one provider per process, its last good values its own.

The agent's provider is its ClusterState (see test_cluster_state); a process without one
reads etcd through an `EtcdInputs` it makes and passes explicitly.
"""

from __future__ import annotations

import json

from datastore import keys, model
from datastore.fake import FakeDatastore
from ipam.allocator import IpamClient
from ipam.inputs import LOAD_REQUESTS, EtcdInputs


def pool_doc(name: str, cidr: str) -> bytes:
    return json.dumps({"apiVersion": model.API_VERSION, "kind": "IPPool",
                       "metadata": {"name": name},
                       "spec": {"cidr": cidr, "blockSize": 26}}).encode()


async def test_a_pool_overwritten_with_garbage_stays_usable_for_the_provider_that_read_it(
        ) -> None:
    ds = FakeDatastore()
    t = [0.0]
    first = EtcdInputs(ds, "n1", reread_after=2.0, now=lambda: t[0])
    await ds.put(keys.ippool("a"), pool_doc("a", "10.244.0.0/16"))
    assert [p.cidr for p in (await first()).pools] == ["10.244.0.0/16"]
    await ds.put(keys.ippool("a"), b"garbage")
    assert [p.cidr for p in (await first()).pools] == ["10.244.0.0/16"], "read again early"
    t[0] = 2.0
    assert [p.cidr for p in (await first()).pools] == ["10.244.0.0/16"]
    assert first.requests == 2 * LOAD_REQUESTS
    # Another provider on the same etcd never saw a good value: nothing is shared.
    assert (await EtcdInputs(ds, "n1")()).pools == ()


async def test_the_allocator_and_status_read_one_provider() -> None:
    ds = FakeDatastore()
    await ds.put(keys.ippool("a"), pool_doc("a", "10.244.0.0/16"))
    client = IpamClient(ds, "n1")
    assert (await client.inputs()).pool_of("10.244.0.9") is not None
    await ds.delete(keys.ippool("a"))
    assert (await client.inputs()).pool_of("10.244.0.9") is not None, "within reread_after"
    assert (await client.current_inputs()).pools == (), "STATUS answers for now"
    given = EtcdInputs(ds, "n1")
    assert IpamClient(ds, "n1", inputs=given).inputs is given
