"""The node's own records in etcd: its Node registration, and its NodeStatus written when it
changes and kept alive by its lease.

Owns the one key ``status/<node>`` of the agent's node and the lease it is written under,
and the creation of ``nodes/<node>`` when the operator has not written it.
``updated`` in the document is the time of the last change, not of the last keep-alive:
every node watching ``status/`` would otherwise see each node's rewrite every interval.
A dead agent's lease expires after ``ttl`` seconds and its NodeStatus with it; a restart
within the TTL keeps it. Failure mode: etcd unreachable — the write is logged and tried
again at the next change or interval; an expired lease brings a new lease and a rewrite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from datastore import keys, model
from datastore.client import ConflictError, Datastore, DatastoreError, NotFoundError

log = logging.getLogger(__name__)


async def register_node(ds: Datastore, node: str, node_ip: str | None, node_ip6: str | None,
                        detect_ip: Callable[[], Awaitable[str | None]]) -> None:
    """Create ``nodes/<node>`` if absent, with ``node_ip`` or else the address ``detect_ip``
    finds; an existing Node is left as the operator wrote it."""
    key = keys.node(node)
    if await ds.get(key) is not None:
        return
    ip = node_ip or await detect_ip()
    if ip is None:
        raise RuntimeError(
            f"node {node} is not registered and no address was found: pass --node-ip")
    bgp = {"ipv4Address": ip}
    if node_ip6:
        bgp["ipv6Address"] = node_ip6
    document = model.parse_document({
        "apiVersion": model.API_VERSION, "kind": "Node",
        "metadata": {"name": node},
        "spec": {"bgp": bgp},
    })
    with contextlib.suppress(ConflictError):  # someone registered it meanwhile
        await ds.create(key, model.encode(document))
        log.info("registered node %s with address %s", node, " and ".join(bgp.values()))


async def keep_node_status(ds: Datastore, key: str, build: Callable[[], dict[str, Any]],
                           dirty: asyncio.Event, *, ttl: int, interval: float) -> None:
    """Write ``build()`` under ``key`` whenever its ``status`` (``updated`` aside) differs
    from what was last written under the current lease, checking each ``interval`` and at
    once when ``dirty`` is set (at most five writes a second); refresh the lease each
    time. Never returns."""
    lease: int | None = None
    written: Any = None  # the status last written under ``lease`` (without ``updated``)
    while True:
        try:
            if lease is not None:
                try:
                    await ds.refresh_lease(lease)
                except NotFoundError:
                    lease = written = None
            if lease is None:
                lease = await ds.grant_lease(ttl)
            obj = build()
            current = {k: v for k, v in obj["status"].items() if k != "updated"}
            if current != written:
                value = json.dumps(obj, separators=(",", ":")).encode()
                await ds.put(key, value, lease=lease)
                written = current
        except DatastoreError as e:
            log.warning("node status not written: %s", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dirty.wait(), interval)
        dirty.clear()
        await asyncio.sleep(0.2)  # at most five writes a second
