"""The one adapter from etcd's configuration keys to IPAM's plain inputs (`ipam.model`).

Owns: reading ``config/ippools/*``, ``ipam/config``, ``ipam/reservations/*`` and
``nodes/<node>`` and turning them into `PoolSpec`, `IpamConfig`, reservation CIDRs and node
labels. Values are the framed objects of DESIGN §3 (``{"apiVersion", "kind", "metadata":
{"name", "labels"}, "spec": {...}}``); a bare ``spec`` object is accepted too, since people
write these keys with ``etcdctl put``.

Failure mode: a value that does not parse is skipped with one log line naming the key (the
datastore's validation layer reports it to the user); it never stops allocation from the
other pools. The allocator reads these through `CachedInputs`, which re-reads at most every
``ttl`` seconds, so configuration changes reach allocation within ``ttl``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import netaddr

from datastore import keys
from datastore.client import Datastore
from datastore.selector import SelectorError, parse_selector
from ipam.model import IpamConfig, IpamInputs, NodeSelector, PoolSpec, select_all

log = logging.getLogger(__name__)


def _framed(raw: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) of a framed object, or ({}, obj) for a bare spec."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "spec" in obj or "kind" in obj:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            raise ValueError("metadata and spec must be objects")
        return meta, spec
    return {}, obj


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def selector_fn(text: str) -> NodeSelector:
    if not text.strip():
        return select_all
    sel = parse_selector(text)
    return sel.matches


def pool_from_json(name: str, raw: bytes | str) -> PoolSpec:
    """A `PoolSpec` from an IPPool value; ValueError naming the field that is wrong."""
    meta, spec = _framed(raw)
    cidr = spec.get("cidr")
    if not isinstance(cidr, str):
        raise ValueError("spec.cidr is missing")
    try:
        net = netaddr.IPNetwork(cidr)
    except (netaddr.AddrFormatError, ValueError) as e:
        raise ValueError(f"spec.cidr {cidr!r} is not a CIDR") from e
    if net.cidr != net:
        raise ValueError(f"spec.cidr {cidr} has host bits set (use {net.cidr})")
    default_size = 26 if net.version == 4 else 122
    block_size = spec.get("blockSize", default_size)
    width = 32 if net.version == 4 else 128
    if not isinstance(block_size, int) or not net.prefixlen <= block_size <= width:
        raise ValueError(f"spec.blockSize {block_size!r} must be between "
                         f"{net.prefixlen} and {width}")
    text = spec.get("nodeSelector") or ""
    if not isinstance(text, str):
        raise ValueError("spec.nodeSelector must be a string")
    try:
        fn = selector_fn(text)
    except SelectorError as e:
        raise ValueError(f"spec.nodeSelector: {e}") from e
    return PoolSpec(name=str(meta.get("name") or name), cidr=str(net), block_size=block_size,
                    node_selector=fn, disabled=bool(spec.get("disabled", False)),
                    selector_text=text)


def config_from_json(raw: bytes | str) -> IpamConfig:
    _, spec = _framed(raw)
    return IpamConfig(strict_affinity=bool(spec.get("strictAffinity", False)),
                      max_blocks_per_host=int(spec.get("maxBlocksPerHost", 0) or 0),
                      release_cooldown=float(spec.get("releaseCooldownSeconds", 0) or 0))


def reservation_cidrs(raw: bytes | str) -> list[str]:
    _, spec = _framed(raw)
    cidrs = spec.get("reservedCIDRs", spec.get("cidrs", []))
    if not isinstance(cidrs, list):
        raise ValueError("spec.reservedCIDRs must be a list")
    return [str(netaddr.IPNetwork(str(c)).cidr) for c in cidrs]


def node_labels(raw: bytes | str) -> dict[str, str]:
    meta, spec = _framed(raw)
    return {**_labels(spec.get("labels")), **_labels(meta.get("labels"))}


async def load_pools(ds: Datastore) -> list[PoolSpec]:
    kvs, _ = await ds.list(keys.full(keys.IPPOOLS))
    pools: list[PoolSpec] = []
    for kv in kvs:
        name = kv.key.rsplit("/", 1)[-1]
        try:
            pools.append(pool_from_json(name, kv.value))
        except ValueError as e:
            log.warning("ipam: ignoring invalid IPPool %s: %s", kv.key, e)
    return sorted(pools, key=lambda p: p.name)


async def load_config(ds: Datastore) -> IpamConfig:
    kv = await ds.get(keys.full(keys.IPAM_CONFIG))
    if kv is None:
        return IpamConfig()
    try:
        return config_from_json(kv.value)
    except (ValueError, TypeError) as e:
        log.warning("ipam: ignoring invalid IPAMConfig %s: %s", kv.key, e)
        return IpamConfig()


async def load_reservations(ds: Datastore) -> list[str]:
    kvs, _ = await ds.list(keys.full(keys.IPAM_RESERVATIONS))
    out: list[str] = []
    for kv in kvs:
        try:
            out.extend(reservation_cidrs(kv.value))
        except (ValueError, TypeError, netaddr.AddrFormatError) as e:
            log.warning("ipam: ignoring invalid IPReservation %s: %s", kv.key, e)
    return out


async def load_node_labels(ds: Datastore, node: str) -> dict[str, str]:
    kv = await ds.get(keys.node(node))
    if kv is None:
        return {}
    try:
        return node_labels(kv.value)
    except ValueError as e:
        log.warning("ipam: ignoring labels of invalid Node %s: %s", kv.key, e)
        return {}


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
