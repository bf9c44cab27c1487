"""IPAM's own values: what the allocator needs from configuration, what it hands back, its errors.

Owns: plain frozen values independent of the resource model in ``datastore.model`` (the
adapter ``ipam.inputs`` builds them from etcd), the JSON of a handle record
(``ipam/handles/<handle>``) and the typed errors callers branch on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any

import netaddr

NodeSelector = Callable[[Mapping[str, str]], bool]


def select_all(labels: Mapping[str, str]) -> bool:
    return True


@lru_cache(maxsize=65536)
def span(address_or_cidr: str) -> tuple[int, int, int]:
    """(version, first, last) of an address or CIDR, as numbers. Cached: a claim asks
    `PoolSpec.contains` about every block in the cluster, and borrowing orders every block
    by its first address; parsing one costs microseconds."""
    net = netaddr.IPNetwork(address_or_cidr)
    return int(net.version), int(net.first), int(net.last)


@dataclass(frozen=True)
class PoolSpec:
    name: str
    cidr: str
    block_size: int
    node_selector: NodeSelector = select_all
    disabled: bool = False
    selector_text: str = ""

    @property
    def network(self) -> netaddr.IPNetwork:
        return netaddr.IPNetwork(self.cidr)

    @property
    def version(self) -> int:
        return span(self.cidr)[0]

    def contains(self, address_or_cidr: str) -> bool:
        version, first, last = span(address_or_cidr)
        v, f, la = span(self.cidr)
        return version == v and first >= f and last <= la

    def describe(self) -> str:
        return f"{self.name} ({self.cidr})"


@dataclass(frozen=True)
class IpamConfig:
    strict_affinity: bool = False
    max_blocks_per_host: int = 0  # 0 = unlimited
    release_cooldown: float = 0.0  # seconds a released address rests before reuse


@dataclass(frozen=True)
class IpamInputs:
    """Everything configured that an allocation decision depends on."""

    pools: tuple[PoolSpec, ...] = ()
    config: IpamConfig = IpamConfig()
    reservations: tuple[str, ...] = ()  # CIDRs never handed out
    node_labels: Mapping[str, str] = field(default_factory=dict)
    # Addresses WorkloadEndpoints use (the agent's cluster state, a live view of its index:
    # read by membership only): never handed out, even when their block says free
    # (`fabricctl ipam release` of a running pod's address).
    in_use: AbstractSet[str] = frozenset()
    # Free addresses by block cidr, for every block the provider knows (the agent's cluster
    # state, a live view): where borrowing looks first, instead of reading every block of
    # the cluster. None: not known (the allocator reads every block).
    room: Mapping[str, int] | None = field(default=None, compare=False)
    # The cidrs of blocks no node has (an orphan, adopted before a block is borrowed from),
    # from the same provider. None: not known (the claim reads every block to find them).
    orphans: AbstractSet[str] | None = field(default=None, compare=False)
    _pool_cache: dict[str, PoolSpec | None] = field(default_factory=dict, compare=False,
                                                    repr=False, hash=False)

    def reserved_set(self) -> netaddr.IPSet:
        return netaddr.IPSet(self.reservations)

    def is_reserved(self, address: str) -> bool:
        ip = netaddr.IPAddress(address)
        return any(ip in netaddr.IPNetwork(r) for r in self.reservations)

    def pool_of(self, cidr: str) -> PoolSpec | None:
        """The pool that contains ``cidr`` (an address or a block)."""
        if cidr in self._pool_cache:
            return self._pool_cache[cidr]
        found = next((p for p in self.pools if p.contains(cidr)), None)
        if len(self._pool_cache) > 65536:
            self._pool_cache.clear()
        self._pool_cache[cidr] = found
        return found

    def usable_pools(self, version: int) -> list[PoolSpec]:
        """Enabled pools of one IP version whose nodeSelector selects this node, by name."""
        return sorted((p for p in self.pools if p.version == version and not p.disabled
                       and p.node_selector(self.node_labels)), key=lambda p: p.name)


@dataclass(frozen=True)
class Assignment:
    address: str
    prefix_len: int  # of the block the address came from
    block: str
    borrowed: bool
    seq: int
    handle: str = ""

    @property
    def version(self) -> int:
        return int(netaddr.IPAddress(self.address).version)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "prefixLen": self.prefix_len, "block": self.block,
                "borrowed": self.borrowed, "seq": self.seq, "handle": self.handle}


# -- handle records -----------------------------------------------------------------------

@dataclass(frozen=True)
class HandleEntry:
    block: str
    ordinal: int
    seq: int
    address: str

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "ordinal": self.ordinal, "seq": self.seq,
                "address": self.address}


@dataclass(frozen=True)
class HandleRecord:
    """``ipam/handles/<handle>``: exactly which (block, ordinal, seq) hold the handle's IPs."""

    handle: str
    entries: tuple[HandleEntry, ...]

    def to_json(self) -> bytes:
        # On every allocation: the same bytes as json.dumps(separators=(",", ":")) of the
        # object form, built directly (a third of the time).
        q = encode_basestring_ascii
        rows = ",".join([f'{{"block":{q(e.block)},"ordinal":{int(e.ordinal)},'
                         f'"seq":{int(e.seq)},"address":{q(e.address)}}}'
                         for e in self.entries])
        return f'{{"handle":{q(self.handle)},"allocations":[{rows}]}}'.encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> HandleRecord:
        try:
            d = json.loads(raw)
            entries = tuple(HandleEntry(str(e["block"]), int(e["ordinal"]), int(e["seq"]),
                                        str(e["address"])) for e in d["allocations"])
            return cls(str(d["handle"]), entries)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"bad handle record: {e!r}") from e

    def blocks(self) -> list[str]:
        return sorted({e.block for e in self.entries})

    def without(self, block: str, ordinal: int) -> HandleRecord:
        return HandleRecord(self.handle, tuple(e for e in self.entries
                                               if (e.block, e.ordinal) != (block, ordinal)))


# -- errors ---------------------------------------------------------------------------------

class IpamError(Exception):
    """Base of every IPAM failure a caller may see."""


class PoolExhaustedError(IpamError):
    pass


class AddressInUseError(IpamError):
    pass


class AddressNotInPoolError(IpamError):
    pass


class AddressReservedError(IpamError):
    pass


class PoolInUseError(IpamError):
    """Deleting a pool that still has allocated addresses."""


class IpamUnavailableError(IpamError):
    """etcd did not answer within the allocator's retry budget."""


class IpamConflictError(IpamError):
    """Too many concurrent writers changed the same block; the retry budget ran out."""


def pools_text(pools: Sequence[PoolSpec]) -> str:
    return ", ".join(p.describe() for p in pools) or "none"
