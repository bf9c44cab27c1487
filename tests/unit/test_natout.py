"""Outgoing NAT per pool: the plan drawn from pools and settings, its renderings, and the
applier against fake runners (what it sends, and that it sends nothing twice)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from datastore import keys, model
from felix_like.policy.nat_backend import NatManager
from felix_like.policy.natout import (
    ipset_script,
    iptables_nat,
    nat_plan,
    nft_commands,
    plan_of_state,
)
from felix_like.state import ClusterState

API = "l3fabric.io/v1"


def pool(name: str, cidr: str, **spec: Any) -> model.IPPool:
    return model.IPPool.from_dict({"apiVersion": API, "kind": "IPPool",
                                   "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


def felix(**spec: Any) -> model.FelixConfiguration:
    return model.FelixConfiguration.from_dict({"apiVersion": API, "kind": "FelixConfiguration",
                                               "metadata": {"name": "default"}, "spec": spec})


def test_nat_outgoing_is_off_by_default_and_round_trips() -> None:
    p = pool("a", "10.244.0.0/16")
    assert p.spec.nat_outgoing is False
    assert "natOutgoing" not in p.to_dict()["spec"]
    on = pool("a", "10.244.0.0/16", natOutgoing=True)
    assert on.to_dict()["spec"]["natOutgoing"] is True
    assert model.IPPool.from_dict(on.to_dict()) == on


def test_plan_masquerades_nat_pools_and_exempts_every_pool_and_the_node() -> None:
    plan = nat_plan([pool("a", "10.244.0.0/16", natOutgoing=True),
                     pool("b", "10.245.0.0/16", disabled=True),
                     pool("c", "fd44::/48", natOutgoing=True, blockSize=122)],
                    felix(nonMasqueradeCIDRs=["192.168.0.0/16", "10.0.0.0/8"]).spec,
                    ["10.98.1.2", "fd98:1::2", "192.168.3.4"])
    assert plan.v4.masquerade == ("10.244.0.0/16",)
    assert plan.v4.pools == ("10.244.0.0/15",)  # adjacent pools merged
    # Overlaps merged: the node's addresses are inside the non-masquerade CIDRs.
    assert plan.v4.exempt == ("10.0.0.0/8", "192.168.0.0/16")
    assert plan.v6.masquerade == ("fd44::/48",)
    assert plan.v6.exempt == ("fd98:1::2/128",)


def test_no_nat_pool_means_no_table() -> None:
    plan = nat_plan([pool("a", "10.244.0.0/16")], model.FelixConfigurationSpec(), [])
    assert not plan.active
    cmds = nft_commands(plan)
    assert [next(iter(c)) for c in cmds] == ["add", "delete"]


def test_nft_rule_matches_pool_sources_and_not_pool_or_exempt_destinations() -> None:
    plan = nat_plan([pool("a", "10.244.0.0/16", natOutgoing=True)],
                    model.FelixConfigurationSpec(), ["10.98.1.2"])
    cmds = nft_commands(plan)
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert len(rules) == 1  # IPv4 only: no IPv6 pool asks for NAT
    expr = rules[0]["expr"]
    assert expr[0]["match"]["op"] == "==" and expr[0]["match"]["left"]["payload"]["field"] \
        == "saddr"
    assert [e["match"]["op"] for e in expr[1:3]] == ["!=", "!="]
    assert expr[-1] == {"masquerade": None}
    chain = next(c["add"]["chain"] for c in cmds if "chain" in c.get("add", {}))
    assert chain["type"] == "nat" and chain["hook"] == "postrouting"


def test_iptables_rendering_uses_ipsets_and_hooks_once() -> None:
    plan = nat_plan([pool("a", "0.0.0.0/0", natOutgoing=True, blockSize=26)],
                    model.FelixConfigurationSpec(), [])
    script = ipset_script(plan)
    # hash:net refuses /0: its two halves go in.
    assert "add fabnat-masq-tmp4 0.0.0.0/1 -exist" in script
    assert "add fabnat-masq-tmp4 128.0.0.0/1 -exist" in script
    assert "swap fabnat-masq-tmp4 fabnat-masq4" in script
    text = iptables_nat(plan.v4, hooked=False)
    assert "-j MASQUERADE" in text and "-I POSTROUTING 1 -j fab-nat-post" in text
    assert "-I POSTROUTING" not in iptables_nat(plan.v4, hooked=True)
    assert "MASQUERADE" not in iptables_nat(plan.v6, hooked=True)


def test_plan_follows_the_cluster_state() -> None:
    st = ClusterState()
    st.put(keys.ippool("a"), pool("a", "10.244.0.0/16", natOutgoing=True))
    assert plan_of_state(st, []).v4.masquerade == ("10.244.0.0/16",)
    st.put(keys.felix_config(), felix(nonMasqueradeCIDRs=["172.16.0.0/12"]))
    assert plan_of_state(st, []).v4.exempt == ("172.16.0.0/12",)
    st.put(keys.ippool("a"), pool("a", "10.244.0.0/16"))
    assert not plan_of_state(st, []).active


class FakeIptables:
    """Keeps the nat table's text per family and the ipset names, as the tools would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.nat = {4: "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
                    6: "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"}
        self.sets: set[str] = set()

    def __call__(self, cmd: Sequence[str], stdin: str) -> str:
        self.calls.append((cmd[0], stdin))
        v = 6 if cmd[0].startswith("ip6") else 4
        if cmd[0].endswith("-save"):
            return self.nat[v]
        if cmd[0].endswith("-restore"):
            lines = self.nat[v].splitlines()[:-1]
            for ln in stdin.splitlines()[1:-1]:
                if ln.startswith("-D "):
                    lines.remove("-A " + ln[3:])
                elif ln.startswith("-I "):
                    lines.append("-A " + " ".join(ln.split()[1:2] + ln.split()[3:]))
                elif ln.startswith(":") and ln not in lines:
                    lines.append(ln)
                elif ln.startswith("-X "):
                    lines = [x for x in lines if not x.startswith(":" + ln[3:] + " ")]
            self.nat[v] = "\n".join([*lines, "COMMIT"]) + "\n"
            return ""
        if cmd[:2] == ["ipset", "list"]:
            return "\n".join(sorted(self.sets))
        for ln in stdin.splitlines():
            word, name = ln.split()[:2]
            if word == "create":
                self.sets.add(name)
            elif word == "destroy":
                self.sets.discard(name)
        return ""


def test_iptables_applier_programs_once_and_removes_everything() -> None:
    fake = FakeIptables()
    nat = NatManager("iptables", None, run=fake)
    plan = nat_plan([pool("a", "10.244.0.0/16", natOutgoing=True)],
                    model.FelixConfigurationSpec(), ["10.98.1.2"])
    assert nat.apply(plan) is True
    assert "-A POSTROUTING -j fab-nat-post" in fake.nat[4]
    assert "fabnat-masq4" in fake.sets
    n = len(fake.calls)
    assert nat.apply(plan) is False and len(fake.calls) == n  # nothing sent twice
    nat.apply(nat_plan([pool("a", "10.244.0.0/16")], model.FelixConfigurationSpec(), []))
    assert "fab-nat-post" not in fake.nat[4] and "fab-nat-post" not in fake.nat[6]
    assert not fake.sets


@pytest.mark.parametrize("rc", [0, 1])
def test_nft_applier_sends_one_transaction_and_keeps_its_record_on_failure(rc: int) -> None:
    sent: list[dict[str, Any]] = []

    def nft(batch: dict[str, Any]) -> tuple[int, Any, str]:
        sent.append(batch)
        return rc, None, "refused" if rc else ""

    nat = NatManager("nftables", None, nft=nft)
    plan = nat_plan([pool("a", "10.244.0.0/16", natOutgoing=True)],
                    model.FelixConfigurationSpec(), [])
    if rc:
        with pytest.raises(RuntimeError, match="refused"):
            nat.apply(plan)
        assert nat.programmed is None
    else:
        assert nat.apply(plan) and not nat.apply(plan)
        assert len(sent) == 1
        nat.forget()
        assert nat.apply(plan) and len(sent) == 2
