"""The node's NodeStatus in etcd: written when it changes, kept alive by its lease.

Owns the one key ``status/<node>`` of the agent's node and the lease it is written under.
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
from collections.abc import Callable
from typing import Any

from datastore.client import Datastore, DatastoreError, NotFoundError

log = logging.getLogger(__name__)


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
