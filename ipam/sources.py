"""The one adapter from etcd's configuration keys to IPAM's plain inputs (`ipam.model`).

Owns: reading ``config/ippools/*``, ``ipam/config``, ``ipam/reservations/*`` and
``nodes/<node>`` and turning them into `PoolSpec`, `IpamConfig`, reservation CIDRs and node
labels. Values are decoded and validated by ``datastore.model.decode`` (the framed
objects of DESIGN §3).

Failure mode: a value that does not validate is skipped with one log line naming the key
(the agent's config-error reporting tells the user); it never stops allocation from the
other pools. If a valid value of that key was read before through the same `Datastore`,
that last good value is used instead (DESIGN §3: a bad value written by hand is never
applied): a pool overwritten with garbage stays usable. The allocator reads these
through `CachedInputs`, which re-reads at most every ``ttl`` seconds, so configuration
changes reach allocation within ``ttl``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from datastore import keys, model
from ipam.model import IpamConfig, IpamInputs, NodeSelector, PoolSpec, select_all

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


# The last valid resource read per key, per Datastore (so tests with several etcds in one
# process do not share it). Keys that disappear are not listed, so deletions still apply.
_LAST_GOOD: weakref.WeakKeyDictionary[Datastore, dict[str, model.Resource]] = (
    weakref.WeakKeyDictionary())


def _decode(key: str, value: bytes, kind: type[R], ds: Datastore | None = None) -> R | None:
    """The resource at ``key`` if it is valid and of ``kind``; else one log line and the
    last good value read through ``ds`` (None if there was none)."""
    kept = _LAST_GOOD.setdefault(ds, {}) if ds is not None else {}
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


async def load_pools(ds: Datastore) -> list[PoolSpec]:
    kvs, _ = await ds.list(keys.full(keys.IPPOOLS))
    pools = [pool_spec(r) for kv in kvs
             if (r := _decode(kv.key, kv.value, model.IPPool, ds)) is not None]
    return sorted(pools, key=lambda p: p.name)


async def load_config(ds: Datastore) -> IpamConfig:
    kv = await ds.get(keys.full(keys.IPAM_CONFIG))
    res = None if kv is None else _decode(kv.key, kv.value, model.IPAMConfig, ds)
    if res is None:
        return IpamConfig()
    return IpamConfig(strict_affinity=res.spec.strict_affinity,
                      max_blocks_per_host=res.spec.max_blocks_per_host,
                      release_cooldown=float(res.spec.release_cooldown_seconds))


async def load_reservations(ds: Datastore) -> list[str]:
    kvs, _ = await ds.list(keys.full(keys.IPAM_RESERVATIONS))
    out: list[str] = []
    for kv in kvs:
        res = _decode(kv.key, kv.value, model.IPReservation, ds)
        if res is not None:
            out.extend(str(c) for c in res.spec.reserved_cidrs)
    return out


async def load_node_labels(ds: Datastore, node: str) -> dict[str, str]:
    kv = await ds.get(keys.node(node))
    res = None if kv is None else _decode(kv.key, kv.value, model.Node, ds)
    return {} if res is None else dict(res.metadata.labels)


# Number of etcd requests `load_inputs` makes (they run concurrently).
LOAD_REQUESTS = 4


async def load_inputs(ds: Datastore, node: str) -> IpamInputs:
    pools, config, reservations, labels = await asyncio.gather(
        load_pools(ds), load_config(ds), load_reservations(ds), load_node_labels(ds, node))
    return IpamInputs(pools=tuple(pools), config=config, reservations=tuple(reservations),
                      node_labels=labels)


InputsProvider = Callable[[], Awaitable[IpamInputs]]


@dataclass
class CachedInputs:
    """`load_inputs` re-read at most every ``ttl`` seconds; ``requests`` counts etcd requests.

    The agent may instead pass the allocator a provider fed by its syncer (always fresh,
    zero requests); this cache is the stand-alone default.
    """

    ds: Datastore
    node: str
    ttl: float = 2.0
    now: Callable[[], float] = time.monotonic
    requests: int = 0
    _value: IpamInputs | None = None
    _at: float = 0.0

    async def __call__(self) -> IpamInputs:
        t = self.now()
        if self._value is None or t - self._at >= self.ttl:
            self._value = await load_inputs(self.ds, self.node)
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
