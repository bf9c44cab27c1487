"""Outgoing NAT per pool (``IPPool.spec.natOutgoing``): what is masqueraded, pure.

What a user gets: a packet from a pod of a pool with ``natOutgoing: true`` to a
destination outside every pool (disabled ones too), outside the FelixConfiguration's
``nonMasqueradeCIDRs`` and not one of the node's own addresses leaves the node with the
node's address as its source (the kernel's masquerade picks the outgoing interface's).
Pod to pod, across nodes and pools, is never rewritten. Off by default, unlike Calico: a
fabric that advertises its pod routes to the underlay lets the outside reach pods at
their own addresses, so the rewrite is only for the pools whose routes stop at the
fabric (docs/index.md, "Outgoing NAT").

Owned here: `NatPlan`, the three address lists per family, drawn from the cluster state
(`nat_plan`), and their renderings for nftables (`nft_commands`, one transaction that
replaces table ``inet l3fabric-nat``) and for iptables (`ipset_script`, `iptables_nat`:
ipsets ``fabnat-*`` and chain ``fab-nat-post`` in table ``nat``, hooked first in
``POSTROUTING``). The ipsets are not ``fab-`` named: the policy backend owns those and
destroys the ones it did not make. The applier is `felix_like.policy.nat_backend`.

Anonymous sets in nftables, not named ones: libnftables re-reads every named interval set
before each element command, and the policy table changes elements on every pod add.
Overlapping prefixes are merged first (an nft interval set refuses overlaps).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datastore import model
from felix_like.policy.program import ipset_members

log = logging.getLogger(__name__)

NAT_TABLE = "l3fabric-nat"
NAT_CHAIN = "fab-nat-post"
NAT_SET_PREFIX = "fabnat-"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _merged(nets: Iterable[Net], version: int) -> tuple[str, ...]:
    same = [n for n in nets if n.version == version]
    return tuple(str(n) for n in ipaddress.collapse_addresses(same))  # type: ignore[type-var]


@dataclass(frozen=True)
class FamilyPlan:
    """For one IP version: sources to masquerade, and the destinations never to."""

    version: int
    masquerade: tuple[str, ...]  # natOutgoing pools
    pools: tuple[str, ...]  # every pool
    exempt: tuple[str, ...]  # nonMasqueradeCIDRs and the node's own addresses

    @property
    def active(self) -> bool:
        return bool(self.masquerade)


@dataclass(frozen=True)
class NatPlan:
    v4: FamilyPlan
    v6: FamilyPlan

    @property
    def families(self) -> tuple[FamilyPlan, FamilyPlan]:
        return (self.v4, self.v6)

    @property
    def active(self) -> bool:
        return self.v4.active or self.v6.active


def nat_plan(pools: Iterable[model.IPPool], config: model.FelixConfigurationSpec,
             host_addresses: Iterable[str]) -> NatPlan:
    """The plan for these pools, settings and node addresses (bare IPs)."""
    pool_list = list(pools)
    masq = [p.spec.cidr for p in pool_list if p.spec.nat_outgoing]
    every = [p.spec.cidr for p in pool_list]
    exempt: list[Net] = list(config.non_masquerade_cidrs)
    for a in host_addresses:
        exempt.append(ipaddress.ip_network(a.split("/")[0]))

    def family(v: int) -> FamilyPlan:
        return FamilyPlan(v, _merged(masq, v), _merged(every, v), _merged(exempt, v))

    return NatPlan(family(4), family(6))


def empty_plan() -> NatPlan:
    """Nothing masqueraded (what `cleanup` programs)."""
    return NatPlan(FamilyPlan(4, (), (), ()), FamilyPlan(6, (), (), ()))


def plan_of_state(state: Any, host_addresses: Iterable[str]) -> NatPlan:
    """`nat_plan` of a `felix_like.state.ClusterState`, or of a mapping key -> value."""
    if isinstance(state, Mapping):
        values = list(state.values())
        pools = [v for v in values if isinstance(v, model.IPPool)]
        configs = [v for v in values if isinstance(v, model.FelixConfiguration)
                   and v.metadata.name == "default"]
        config = configs[0].spec if configs else model.FelixConfigurationSpec()
        return nat_plan(pools, config, host_addresses)
    return nat_plan(state.pools.values(), state.felix_config(), host_addresses)


# --- nftables ----------------------------------------------------------------------------------

_T = {"family": "inet", "table": NAT_TABLE}


def _nft_prefix(net: str) -> Any:
    addr, _, plen = net.partition("/")
    return {"prefix": {"addr": addr, "len": int(plen)}}


def _nft_in(field: str, version: int, nets: tuple[str, ...], op: str) -> dict[str, Any]:
    proto = "ip" if version == 4 else "ip6"
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}},
                      "right": {"set": [_nft_prefix(n) for n in nets]}}}


def nft_rule(fp: FamilyPlan) -> list[dict[str, Any]]:
    """``ip saddr {masq} ip daddr != {pools} ip daddr != {exempt} masquerade``."""
    expr = [_nft_in("saddr", fp.version, fp.masquerade, "==")]
    for nets in (fp.pools, fp.exempt):
        if nets:
            expr.append(_nft_in("daddr", fp.version, nets, "!="))
    expr.append({"masquerade": None})
    return expr


def nft_commands(plan: NatPlan) -> list[dict[str, Any]]:
    """One transaction: the table goes (``add`` first, so a missing one is no error) and,
    when a pool asks for NAT, comes back with its one chain."""
    table = {"family": "inet", "name": NAT_TABLE}
    cmds: list[dict[str, Any]] = [{"add": {"table": table}}, {"delete": {"table": table}}]
    if not plan.active:
        return cmds
    cmds.append({"add": {"table": table}})
    cmds.append({"add": {"chain": {**_T, "name": "postrouting", "type": "nat",
                                   "hook": "postrouting", "prio": 100, "policy": "accept"}}})
    for fp in plan.families:
        if fp.active:
            cmds.append({"add": {"rule": {**_T, "chain": "postrouting", "expr": nft_rule(fp),
                                          "comment": f"natOutgoing IPv{fp.version}"}}})
    return cmds


# --- iptables + ipset --------------------------------------------------------------------------


def ipset_name(what: str, version: int) -> str:
    return f"{NAT_SET_PREFIX}{what}{version}"


def ipset_script(plan: NatPlan) -> str:
    """``ipset restore`` input that makes every set hold the plan's members; each set is
    filled under a temporary name and swapped in, so a rule never sees it half full."""
    lines: list[str] = []
    for fp in plan.families:
        fam = "inet" if fp.version == 4 else "inet6"
        for what, nets in (("masq", fp.masquerade), ("pools", fp.pools),
                           ("exempt", fp.exempt)):
            name, tmp = ipset_name(what, fp.version), ipset_name(what + "-tmp", fp.version)
            for n in (name, tmp):
                lines.append(f"create {n} hash:net family {fam} -exist")
            lines.append(f"flush {tmp}")
            lines.extend(f"add {tmp} {m} -exist" for m in ipset_members(nets))
            lines.append(f"swap {tmp} {name}")
            lines.append(f"destroy {tmp}")
    return "\n".join(lines) + "\n"


def iptables_nat(fp: FamilyPlan, hooked: bool) -> str:
    """``iptables-restore --noflush`` input for one family: our chain's one rule (none
    when no pool of the family asks for NAT), hooked first in POSTROUTING."""
    lines = ["*nat", f":{NAT_CHAIN} - [0:0]"]
    if fp.active:
        v = fp.version
        lines.append(f"-A {NAT_CHAIN} -m set --match-set {ipset_name('masq', v)} src "
                     f"-m set ! --match-set {ipset_name('pools', v)} dst "
                     f"-m set ! --match-set {ipset_name('exempt', v)} dst "
                     '-m comment --comment "natOutgoing" -j MASQUERADE')
    if not hooked:
        lines.append(f"-I POSTROUTING 1 -j {NAT_CHAIN}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
