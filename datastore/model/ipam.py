"""IPAM configuration kinds: IPPool, IPAMConfig (one, ``default``) and IPReservation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from datastore.calico_selector import Selector
from datastore.labelselector import (
    ValidationError,
)
from datastore.model.fields import (
    SELECT_ALL,
    IPNetwork,
    _bool,
    _network,
    _Obj,
    _ranged,
    _selector,
)
from datastore.model.resource import SpecResource

log = logging.getLogger(__name__)


# (family, smallest block prefix, largest block prefix, default block size)
_BLOCK_SIZES: dict[int, tuple[int, int, int]] = {4: (20, 32, 26), 6: (116, 128, 122)}


@dataclass(frozen=True)
class IPPoolSpec:
    cidr: IPNetwork
    block_size: int
    node_selector: Selector = SELECT_ALL
    disabled: bool = False
    # Masquerade what the pool's pods send outside every pool (felix_like.policy.natout).
    nat_outgoing: bool = False

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPPoolSpec:
        o = _Obj(obj, path, ("cidr", "blockSize", "nodeSelector", "disabled", "natOutgoing"))
        cidr = o.req("cidr", _network)
        lo, hi, default = _BLOCK_SIZES[cidr.version]
        block_size = o.get("blockSize", _ranged(lo, hi), default)
        if cidr.prefixlen > block_size:
            raise ValidationError(
                None,
                o.at("blockSize"),
                f"{block_size} is larger than the pool {cidr} (prefix length must be at most "
                "the block size)",
            )
        return cls(
            cidr=cidr,
            block_size=block_size,
            node_selector=o.get("nodeSelector", _selector, SELECT_ALL),
            disabled=o.get("disabled", _bool, False),
            nat_outgoing=o.get("natOutgoing", _bool, False),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cidr": str(self.cidr),
            "blockSize": self.block_size,
            "nodeSelector": str(self.node_selector),
            "disabled": self.disabled,
        }
        if self.nat_outgoing:
            out["natOutgoing"] = True
        return out


@dataclass(frozen=True)
class IPPool(SpecResource[IPPoolSpec]):
    """A range pods get addresses from, carved into blocks of ``block_size`` per node."""

    kind: ClassVar[str] = "IPPool"
    spec_type = IPPoolSpec


@dataclass(frozen=True)
class IPAMConfigSpec:
    strict_affinity: bool = False
    max_blocks_per_host: int = 0  # 0 = unlimited
    release_cooldown_seconds: int = 0

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPAMConfigSpec:
        o = _Obj(obj, path, ("strictAffinity", "maxBlocksPerHost", "releaseCooldownSeconds"))
        return cls(
            strict_affinity=o.get("strictAffinity", _bool, False),
            max_blocks_per_host=o.get("maxBlocksPerHost", _ranged(0, 1 << 31), 0),
            release_cooldown_seconds=o.get("releaseCooldownSeconds", _ranged(0, 1 << 31), 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "strictAffinity": self.strict_affinity,
            "maxBlocksPerHost": self.max_blocks_per_host,
            "releaseCooldownSeconds": self.release_cooldown_seconds,
        }


@dataclass(frozen=True)
class IPAMConfig(SpecResource[IPAMConfigSpec]):
    """Cluster-wide IPAM settings; one object named ``default`` at ``ipam/config``."""

    kind: ClassVar[str] = "IPAMConfig"
    spec_type = IPAMConfigSpec
    body_required: ClassVar[bool] = False
    spec: IPAMConfigSpec = IPAMConfigSpec()

    def _check(self) -> None:
        if self.metadata.name != "default":
            raise ValidationError(None, "metadata.name", "the IPAMConfig must be named 'default'")


@dataclass(frozen=True)
class IPReservationSpec:
    reserved_cidrs: tuple[IPNetwork, ...]

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPReservationSpec:
        o = _Obj(obj, path, ("reservedCIDRs",))
        if not o.has("reservedCIDRs"):
            raise ValidationError(None, o.at("reservedCIDRs"), "required")
        return cls(o.list("reservedCIDRs", lambda v, p: _network(v, p, bare_ip=True)))

    def to_dict(self) -> dict[str, Any]:
        return {"reservedCIDRs": [str(n) for n in self.reserved_cidrs]}


@dataclass(frozen=True)
class IPReservation(SpecResource[IPReservationSpec]):
    """Addresses IPAM never hands out (bare addresses are stored as /32 or /128)."""

    kind: ClassVar[str] = "IPReservation"
    spec_type = IPReservationSpec
