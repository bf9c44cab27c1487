"""Set-up helpers shared by the IPAM tests and ``bench/ipam``: write pools, nodes, config.

Not used by the agent. Values are the framed objects ``datastore.model`` validates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from datastore import keys
from datastore.client import Datastore
from datastore.model import API_VERSION


def framed(kind: str, name: str, spec: Mapping[str, Any] | None = None,
           labels: Mapping[str, str] | None = None) -> bytes:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta}
    if spec is not None:
        obj["spec"] = dict(spec)
    return json.dumps(obj).encode()


async def put_pool(ds: Datastore, name: str, cidr: str, block_size: int | None = None, *,
                   disabled: bool = False, node_selector: str = "") -> None:
    spec: dict[str, Any] = {"cidr": cidr}
    if block_size is not None:
        spec["blockSize"] = block_size
    if disabled:
        spec["disabled"] = True
    if node_selector:
        spec["nodeSelector"] = node_selector
    await ds.put(keys.ippool(name), framed("IPPool", name, spec))


async def put_nodes(ds: Datastore, names: Iterable[str],
                    labels: Mapping[str, str] | None = None) -> None:
    for n in names:
        await ds.put(keys.node(n), framed("Node", n, None, labels))


async def put_ipam_config(ds: Datastore, *, strict_affinity: bool = False,
                          max_blocks_per_host: int = 0, release_cooldown: int = 0) -> None:
    spec = {"strictAffinity": strict_affinity, "maxBlocksPerHost": max_blocks_per_host,
            "releaseCooldownSeconds": release_cooldown}
    await ds.put(keys.full(keys.IPAM_CONFIG), framed("IPAMConfig", "default", spec))


async def put_reservation(ds: Datastore, name: str, cidrs: Iterable[str]) -> None:
    await ds.put(keys.ipam_reservation(name),
                 framed("IPReservation", name, {"reservedCIDRs": list(cidrs)}))
