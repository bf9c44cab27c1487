"""Staged policies in the ruleset: evaluated where their enforced twins would be, on every
new connection of the endpoints they select, and only counted (pure).

Owned here: the two staged chains of a local endpoint and direction. The endpoint's head
chain (``fo-``/``fi-<iface>``) jumps to ``so-``/``si-<iface>`` first and clears the
enforced marks after it, so nothing decided in the staged pipeline reaches the enforced
one; the staged chains set only the staged marks (``MARK_STAGED_*``) and hold no drop::

    s{o,i}-<iface>:   per staged GNP selecting it, ascending order:
                          jump h…; staged-allow or staged-deny -> return;
                          staged-pass -> goto s{o,i}n-<iface>
                      goto s{o,i}n-<iface>
    s{o,i}n-<iface>:  (only when a staged NetworkPolicy isolates it in this direction)
                      per NetworkPolicy isolating it, enforced and staged, by name:
                          jump p…/q…; allowed or staged-allowed -> return
                      count "would deny" (the namespace's staged default deny)

So a staged NetworkPolicy is previewed in place: with the namespace's enforced policies,
as Kubernetes adds them up. Staged GNPs are previewed among the staged GNPs in order,
before the namespaced tier; enforced GNPs are not consulted (their chains drop for real),
so a staged GNP's counts say what it would do were it the first GNP to match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from datastore import model
from felix_like.policy.program import (
    COUNT,
    MARK_ALLOW,
    MARK_STAGED_ALLOW,
    MARK_STAGED_DENY,
    MARK_STAGED_PASS,
    RETURN,
    Counted,
    Marked,
    Rule,
    Verdict,
    with_flow_logs,
)

ChainOf = Callable[[model.GlobalNetworkPolicy], str]


class ShadowNetworkPolicy(model.StagedNetworkPolicy):
    """An enforced NetworkPolicy as the staged pipeline evaluates it: its rules with the
    staged allow and no counter (its own chain counts it once, in the enforced pipeline)."""


_SHADOWS: dict[int, tuple[model.NetworkPolicy, ShadowNetworkPolicy]] = {}


def shadow(p: model.NetworkPolicy) -> ShadowNetworkPolicy:
    """The shadow of ``p``, one object per policy object (so its chain is rendered once)."""
    hit = _SHADOWS.get(id(p))
    if hit is None or hit[0] is not p:
        if len(_SHADOWS) > 20000:
            _SHADOWS.clear()
        hit = (p, ShadowNetworkPolicy(p.metadata, p.spec))
        _SHADOWS[id(p)] = hit  # holds ``p``: its id cannot be reused meanwhile
    return hit[1]


def split_staged(gnps: Iterable[model.GlobalNetworkPolicy],
                 ) -> tuple[list[model.GlobalNetworkPolicy], list[model.GlobalNetworkPolicy]]:
    """(enforced, staged), each in the given order."""
    enforced: list[model.GlobalNetworkPolicy] = []
    staged: list[model.GlobalNetworkPolicy] = []
    for g in gnps:
        (staged if isinstance(g, model.StagedGlobalNetworkPolicy) else enforced).append(g)
    return enforced, staged


def staged_head(iface: str, direction: str) -> str:
    return f"s{direction[0]}-{iface}"


def staged_chains(iface: str, namespace: str, direction: str, typ: str,
                  staged_gnps: Iterable[model.GlobalNetworkPolicy],
                  nps: Iterable[model.NetworkPolicy],
                  gnp_chain: Callable[[model.GlobalNetworkPolicy, str], str],
                  np_chain: Callable[[model.NetworkPolicy, str], str],
                  ) -> dict[str, tuple[Rule, ...]]:
    """The staged chains of one endpoint and direction (``direction`` in/out, ``typ``
    Ingress/Egress), or none when no staged policy applies to it there. ``nps``: every
    NetworkPolicy selecting the endpoint, enforced and staged, in name order."""
    gnps = [g for g in staged_gnps if typ in g.spec.effective_types]
    isolating = [p for p in nps if typ in p.effective_policy_types]
    if not gnps and not any(isinstance(p, model.StagedNetworkPolicy) for p in isolating):
        return {}
    head, tail = staged_head(iface, direction), f"s{direction[0]}n-{iface}"
    rules: list[Rule] = []
    for g in gnps:
        rules.append(Rule((), Verdict("jump", gnp_chain(g, direction)),
                          f"sgnp/{g.metadata.name}"))
        rules.append(Rule((Marked(MARK_STAGED_ALLOW),), RETURN))
        rules.append(Rule((Marked(MARK_STAGED_DENY),), RETURN))
        rules.append(Rule((Marked(MARK_STAGED_PASS),), Verdict("goto", tail)))
    rules.append(Rule((), Verdict("goto", tail)))
    trules: list[Rule] = []
    if any(isinstance(p, model.StagedNetworkPolicy) for p in isolating):
        for p in isolating:
            staged = isinstance(p, model.StagedNetworkPolicy)
            ref = f"{'snp' if staged else 'np'}/{namespace}/{p.metadata.name}"
            chain = np_chain(p if staged else shadow(p), direction)
            trules.append(Rule((), Verdict("jump", chain), ref))
            trules.append(Rule((Marked(MARK_ALLOW),), RETURN))
            trules.append(Rule((Marked(MARK_STAGED_ALLOW),), RETURN))
        trules.append(Rule((), COUNT, f"staged: {typ.lower()} no policy would allow it",
                           Counted("staged-default-deny", namespace, "", f"{typ.lower()}",
                                   None, "would-deny")))
    return {head: tuple(rules), tail: tuple(with_flow_logs(trules))}
