"""IPAM's inputs for a process without the agent's cluster state: read from etcd.

Owns: reading ``config/ippools/*``, ``ipam/config``, ``ipam/reservations/*`` and
``nodes/<node>`` and turning them into `PoolSpec`, `IpamConfig`, reservation CIDRs and node
labels (`pool_spec` is also how the agent's calculation turns its pools into IPAM's). Values
are decoded and validated by ``datastore.model.decode`` (the framed objects of
docs/architecture.md §4).

Which provider: the agent hands its allocator and its CNI handler one provider built on
its `felix_like.state.ClusterState` (always fresh, no etcd request). A process without
that state (fabricctl, the IPAM CLI, a bare handler in a benchmark) makes its own
`EtcdInputs` and passes it explicitly; there is no shared or module-level cache.

Failure mode: a value that does not validate is skipped with one log line naming the key
(the agent's config-error reporting tells the user); it never stops allocation from the
other pools. If an `EtcdInputs` read a valid value of that key before, that last good
value is used instead (a bad value written by hand is never applied): a pool overwritten
with garbage stays usable for as long as that provider lives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from datastore import keys, model
from ipam.values import IpamConfig, IpamInputs, NodeSelector, PoolSpec, select_all

log = logging.getLogger(__name__)


class Datastore(Protocol):
    """The reads this module makes of a `datastore.client.Datastore` (described, not
    imported: the agent's calculation imports `pool_spec`, and with it no etcd client)."""

    async def list(self, prefix: str) -> tuple[list[Any], int]: ...

    async def get(self, key: str) -> Any: ...

R = TypeVar("R", bound=model.Resource)


def pool_spec(res: model.IPPool) -> PoolSpec:
    """IPAM's view of a validated IPPool resource."""
    sel = res.spec.node_selector
    text = str(sel)
    fn: NodeSelector = select_all if text == "all()" else sel.matches
    return PoolSpec(name=res.metadata.name, cidr=str(res.spec.cidr),
                    block_size=res.spec.block_size, node_selector=fn,
                    disabled=res.spec.disabled, selector_text="" if text == "all()" else text)


# The last valid resource read per key, by one provider. Keys that disappear are not
# listed, so deletions still apply.
LastGood = dict[str, model.Resource]


def _decode(key: str, value: bytes, kind: type[R], kept: LastGood | None = None) -> R | None:
    """The resource at ``key`` if it is valid and of ``kind``; else one log line and its
    last good value in ``kept`` (None if there is none)."""
    kept = {} if kept is None else kept
    try:
        res = model.decode(key, value)
    except ValueError as e:
        log.warning("ipam: ignoring invalid value at %s: %s", key, e)
        res = None
    if res is not None and not isinstance(res, kind):
        log.warning("ipam: ignoring %s at %s: expected %s", type(res).__name__, key,
                    kind.__name__)
        res = None
    if res is not None:
        kept[key] = res
        return res
    old = kept.get(key)
    if isinstance(old, kind):
        log.warning("ipam: using the last good value of %s", key)
        return old
    return None


async def load_pools(ds: Datastore, kept: LastGood | None = None) -> list[PoolSpec]:
    kvs, _ = await ds.list(keys.full(keys.IPPOOLS))
    pools = [pool_spec(r) for kv in kvs
             if (r := _decode(kv.key, kv.value, model.IPPool, kept)) is not None]
    return sorted(pools, key=lambda p: p.name)


async def load_config(ds: Datastore, kept: LastGood | None = None) -> IpamConfig:
    kv = await ds.get(keys.full(keys.IPAM_CONFIG))
    res = None if kv is None else _decode(kv.key, kv.value, model.IPAMConfig, kept)
    if res is None:
        return IpamConfig()
    return IpamConfig(strict_affinity=res.spec.strict_affinity,
                      max_blocks_per_host=res.spec.max_blocks_per_host,
                      release_cooldown=float(res.spec.release_cooldown_seconds))


async def load_reservations(ds: Datastore, kept: LastGood | None = None) -> list[str]:
    kvs, _ = await ds.list(keys.full(keys.IPAM_RESERVATIONS))
    out: list[str] = []
    for kv in kvs:
        res = _decode(kv.key, kv.value, model.IPReservation, kept)
        if res is not None:
            out.extend(str(c) for c in res.spec.reserved_cidrs)
    return out


async def load_node_labels(ds: Datastore, node: str,
                           kept: LastGood | None = None) -> dict[str, str]:
    kv = await ds.get(keys.node(node))
    res = None if kv is None else _decode(kv.key, kv.value, model.Node, kept)
    return {} if res is None else dict(res.metadata.labels)


# Number of etcd requests `load_inputs` makes (they run concurrently).
LOAD_REQUESTS = 4


async def load_inputs(ds: Datastore, node: str, kept: LastGood | None = None) -> IpamInputs:
    pools, config, reservations, labels = await asyncio.gather(
        load_pools(ds, kept), load_config(ds, kept), load_reservations(ds, kept),
        load_node_labels(ds, node, kept))
    return IpamInputs(pools=tuple(pools), config=config, reservations=tuple(reservations),
                      node_labels=labels)


InputsProvider = Callable[[], Awaitable[IpamInputs]]


@dataclass
class EtcdInputs:
    """The provider of a process without the agent's cluster state: `load_inputs`, read
    again once ``reread_after`` seconds have passed since the last read (so a long-lived
    bare handler does not pay four etcd requests per ADD; configuration changes reach it
    within that time), with its own last good values. ``requests`` counts etcd requests.
    """

    ds: Datastore
    node: str
    reread_after: float = 2.0
    now: Callable[[], float] = time.monotonic
    requests: int = 0
    _value: IpamInputs | None = None
    _at: float = 0.0
    _kept: LastGood = field(default_factory=dict)

    async def __call__(self) -> IpamInputs:
        t = self.now()
        if self._value is None or t - self._at >= self.reread_after:
            self._value = await load_inputs(self.ds, self.node, self._kept)
            self._at = t
            self.requests += LOAD_REQUESTS
        return self._value

    def invalidate(self) -> None:
        self._value = None


def static_inputs(value: IpamInputs) -> InputsProvider:
    """A provider that always answers ``value`` (tests, and callers that own the config)."""

    async def provide() -> IpamInputs:
        return value

    return provide
