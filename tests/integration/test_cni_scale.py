"""200 pods added, then deleted, on one node, through the real shim, 8 calls in flight.

Every address unique; every /32 route present with its veth after the ADDs and gone
after the DELs; no veth left; ``ipam check`` finds nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path

from datastore import model as m
from datastore.embedded import EmbeddedEtcd
from ipam import check as ipam_check
from tests.helpers.cni import fab_links, fabric, ippool, our_routes

PODS = 200
PARALLEL = 8


async def test_200_pods_added_then_deleted(etcd: EmbeddedEtcd, netns: Callable[[str], str],
                                           tmp_path: Path) -> None:
    node = netns("node")
    pods = [netns("p") for _ in range(PODS)]
    async with fabric(etcd.endpoint, node, tmp_path,
                      pools=[ippool("default", "10.244.0.0/16", 26)]) as fab:
        # the agent registers its Node; ipam check wants the owner of the affinities
        me = m.Node.from_dict({"apiVersion": m.API_VERSION, "kind": "Node",
                               "metadata": {"name": node}, "spec": {}})
        await fab.ds.put(m.key_for(me), m.encode(me))
        sem = asyncio.Semaphore(PARALLEL)

        async def add(i: int) -> str:
            async with sem:
                r = (await fab.add(pods[i], f"scale-{i}",
                                   args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=s;"
                                        f"K8S_POD_NAME=pod-{i}")).ok()
            return str(r.json["ips"][0]["address"])

        addrs = await asyncio.gather(*(add(i) for i in range(PODS)))
        assert len(set(addrs)) == PODS
        assert all(ipaddress.ip_interface(a) in ipaddress.ip_network("10.244.0.0/16")
                   for a in addrs)
        routes = {r["dst"]: r["dev"] for r in our_routes(node)}
        assert set(routes) == {a.split("/")[0] for a in addrs}
        assert set(routes.values()) == set(fab_links(node)) and len(fab_links(node)) == PODS
        assert len(await fab.workloads()) == PODS and len(await fab.handles()) == PODS
        # the WorkloadEndpoints make the allocations legitimate: no leak reported
        assert [r.problem for r in await ipam_check.check(fab.ds, leak_grace=0)] == []

        async def delete(i: int) -> None:
            async with sem:
                (await fab.delete(pods[i], f"scale-{i}",
                                  args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=s;"
                                       f"K8S_POD_NAME=pod-{i}")).ok()

        await asyncio.gather(*(delete(i) for i in range(PODS)))
        assert our_routes(node) == [] and fab_links(node) == []
        assert await fab.workloads() == {} and await fab.handles() == []
        assert await fab.allocated() == []
        assert [r.problem for r in await ipam_check.check(fab.ds, leak_grace=0)] == []
