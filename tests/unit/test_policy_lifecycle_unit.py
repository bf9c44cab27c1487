"""Policy state changing under a running agent, without a kernel: what the incremental
calculation and the manager do with deletions and reused addresses.

The agent's mirror holds ``None`` for every key it does not consume (IPAM handles, ...):
deletions of policies and pods must be seen whatever else the mirror holds. A local
endpoint that goes away takes its connection-tracking entries with it (the manager asks
for them to be deleted); a relabelled one keeps them.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers.policy_docs import DB_FROM_FRONTEND, DEFAULT_DENY_INGRESS
from test_policy_calc import HOST, NODE, docs, wep

from datastore import model
from felix_like.policy.incremental import IncrementalCalculation
from felix_like.policy.interp import TCP, allowed
from felix_like.policy.manager import PolicyManager
from felix_like.policy.ruleset import Ruleset, calculate, inputs_from_state
from felix_like.state import ClusterState

DB = wep("default", "db", "10.244.1.10", {"role": "db"})
FRONTEND = wep("default", "frontend", "10.244.1.11", {"role": "frontend"})
OTHER = wep("default", "other", "10.244.1.12", {})
HANDLE = "/l3fabric/v1/ipam/handles/l3net.c-db.eth0"  # decodes to None in the agent


def _state(*objs: Any) -> dict[str, Any]:
    st: dict[str, Any] = {HANDLE: None, "/l3fabric/v1/status/nodes/n1": None}
    for o in objs:
        st[model.key_for(o)] = o
    return st


def test_a_deleted_policy_stops_applying_while_the_mirror_holds_unconsumed_keys() -> None:
    inc = IncrementalCalculation(NODE)
    deny = docs(DEFAULT_DENY_INGRESS)[0]
    st = _state(DB, OTHER, deny)
    assert not allowed(inc.update(dict(st), [HOST]), "10.244.1.12", "10.244.1.10", TCP, 80)
    del st[model.key_for(deny)]
    rs = inc.update(dict(st), [HOST])
    assert allowed(rs, "10.244.1.12", "10.244.1.10", TCP, 80), "the deny policy was deleted"
    assert rs == calculate(inputs_from_state(st, NODE, [HOST]))


def test_a_deleted_pod_leaves_the_selector_sets_while_the_mirror_holds_unconsumed_keys(
        ) -> None:
    """Else a new pod given the deleted pod's address inherits what the old one was
    allowed to reach."""
    inc = IncrementalCalculation(NODE)
    policy = docs(DB_FROM_FRONTEND)[0]
    st = _state(DB, FRONTEND, policy)
    assert allowed(inc.update(dict(st), [HOST]), "10.244.1.11", "10.244.1.10", TCP, 6379)
    del st[model.key_for(FRONTEND)]
    inc.update(dict(st), [HOST])
    newcomer = wep("default", "newcomer", "10.244.1.11", {"role": "guest"})
    st[model.key_for(newcomer)] = newcomer
    st["/l3fabric/v1/ipam/handles/l3net.c-newcomer.eth0"] = None
    rs = inc.update(dict(st), [HOST])
    assert not allowed(rs, "10.244.1.11", "10.244.1.10", TCP, 6379), \
        "the new pod on the old address is not a frontend"
    assert rs == calculate(inputs_from_state(st, NODE, [HOST]))


class _Backend:
    def apply(self, rs: Ruleset) -> int:
        return 1

    def forget(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


def _manager() -> tuple[PolicyManager, list[set[str]]]:
    """A manager with no kernel, and the address sets it asks to forget the flows of."""
    forgotten: list[set[str]] = []

    def forget(netns: str | None, nets: Any) -> int:
        forgotten.append(set(nets))
        return 0

    return PolicyManager("nftables", "node-ns", NODE, host_addresses=[HOST], impl=_Backend(),
                         forget=forget), forgotten


def test_the_flows_of_an_endpoint_that_went_away_are_forgotten() -> None:
    m, forgotten = _manager()
    st = _state(DB, FRONTEND)
    m.set_state(dict(st))
    m.apply()
    st[model.key_for(DB)] = wep("default", "db", "10.244.1.10", {"role": "cache"})
    m.set_state(dict(st))
    m.apply()
    assert forgotten == [], "a relabelled pod keeps its connections"
    del st[model.key_for(FRONTEND)]
    m.set_state(dict(st))
    m.apply()
    assert forgotten == [{"10.244.1.11/32"}]
    # The same address for a new pod in the same batch as the old one's removal.
    newcomer = wep("default", "newcomer", "10.244.1.10", {})
    del st[model.key_for(DB)]
    st[model.key_for(newcomer)] = newcomer
    m.set_state(dict(st))
    m.apply()
    assert forgotten[1:] == [{"10.244.1.10/32"}]


def test_the_flows_of_a_remote_endpoints_released_address_are_forgotten() -> None:
    """A local client's flow to a remote pod passed this node's egress check only: it
    must not reach the next pod given that address."""
    m, forgotten = _manager()
    remote = wep("default", "remote", "10.244.2.10", {"role": "db"}, node="n2")
    st = _state(FRONTEND, remote)
    m.set_state(dict(st))
    m.apply()
    st[model.key_for(remote)] = wep("default", "remote", "10.244.2.10", {"role": "x"},
                                    node="n2")
    m.set_state(dict(st))
    m.apply()
    assert forgotten == [], "a relabelled pod keeps its connections"
    del st[model.key_for(remote)]
    m.set_state(dict(st))
    m.apply()
    assert forgotten == [{"10.244.2.10/32"}]


def test_the_periodic_resync_converges_the_kernel_and_keeps_the_calculation() -> None:
    """`resync` (every minute) makes the next apply a full converge of the kernel from
    the same ruleset; `recalculate` (after a fresh etcd snapshot) recalculates it from
    the whole state. Both end at the full calculation's ruleset."""
    m, _ = _manager()
    forgets: list[int] = []
    m.backend.forget = lambda: forgets.append(1)  # type: ignore[method-assign]
    st = ClusterState.of(_state(DB, FRONTEND))
    m.set_state(st)
    m.apply()
    kept = m.ruleset
    assert kept is not None and kept.elements
    m.resync()
    m.apply()
    assert forgets == [1] and m.ruleset is not None
    # Not recalculated: the sets are the very objects of the last calculation.
    assert all(m.ruleset.elements[n] is e for n, e in kept.elements.items())
    m.recalculate()
    m.apply()
    assert m.ruleset == calculate(inputs_from_state(dict(st.policy_items()), NODE, [HOST]))
    assert any(m.ruleset.elements[n] is not e for n, e in kept.elements.items())


def test_addresses_to_forget_are_forgotten_at_the_next_apply_that_succeeds() -> None:
    """`forget_addresses`: a local endpoint this manager never saw programmed (deleted
    while the agent restarted) still has its flows deleted, once."""
    m, forgotten = _manager()
    m.forget_addresses({"10.244.1.99/32"})
    m.set_state(dict(_state(DB, FRONTEND)))
    m.apply()
    assert forgotten == [{"10.244.1.99/32"}]
    m.apply()
    assert forgotten == [{"10.244.1.99/32"}]


class _FailingBackend(_Backend):
    """Fails its applies once told to (a stop signal killing iptables-restore)."""

    failing = False

    def apply(self, rs: Ruleset) -> int:
        if self.failing:
            raise RuntimeError("ip6tables-restore failed (-15)")
        return 1


def test_the_flows_of_a_pod_deleted_before_a_failed_apply_go_when_the_agent_stops() -> None:
    """The agent stops right after a DEL whose policy apply failed: the flows of the
    deleted pod are deleted then (`forget_pending_flows`), not left to a next process
    that never knows the pod was there (soak, seed 1322276477: SYN_SENT entries of the
    pod's two addresses through two settles)."""
    forgotten: list[set[str]] = []

    def forget(netns: str | None, nets: Any) -> int:
        forgotten.append(set(nets))
        return len(forgotten[-1])

    backend = _FailingBackend()
    m = PolicyManager("nftables", "node-ns", NODE, host_addresses=[HOST], impl=backend,
                      forget=forget)
    st = _state(DB, FRONTEND)
    m.set_state(dict(st))
    m.apply()
    backend.failing = True
    del st[model.key_for(FRONTEND)]
    m.set_state(dict(st))
    with pytest.raises(RuntimeError):
        m.apply()
    assert forgotten == []
    assert m.forget_pending_flows() == 1
    assert forgotten == [{"10.244.1.11/32"}]
    assert m.forget_pending_flows(state_complete=False) == 0, "once"


def test_an_incomplete_state_at_the_stop_forgets_only_the_addresses_named() -> None:
    """With the snapshot incomplete at the stop, an endpoint missing from the state is
    not taken for deleted: only the addresses the DELs named lose their flows."""
    m, forgotten = _manager()
    st = _state(DB, FRONTEND)
    m.set_state(dict(st))
    m.apply()
    m.set_state({})  # nothing known: as incomplete as it gets
    m.forget_addresses({"10.244.1.99/32"})
    m.forget_pending_flows(state_complete=False)
    assert forgotten == [{"10.244.1.99/32"}]
