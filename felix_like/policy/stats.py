"""Policy counters as Prometheus metrics, and the table ``fabricctl policy stats`` prints.

Owned here: the series ``l3fabric_policy_packets_total`` and ``l3fabric_policy_bytes_total``
(labels ``policy``, ``namespace`` — or ``global`` —, ``rule``, ``direction``, ``action``;
no per-pod label, so a node has one series per policy rule it renders plus one per
namespace default deny and direction) and their decoding from a scrape.

The values are read at scrape time from the kernel's own counters (nft named counters,
iptables rule counters: see the backends' ``read_counters``); nothing is kept between
scrapes and the ruleset is never rewritten to read them. A scrape that cannot read them
logs the error and exposes no policy series (the rest of the page stays).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from felix_like.policy.program import Counted

log = logging.getLogger(__name__)

PACKETS, BYTES = "l3fabric_policy_packets", "l3fabric_policy_bytes"
LABELS = ("policy", "namespace", "rule", "direction", "action")

CounterReader = Callable[[], Mapping[Counted, tuple[int, int]]]


def counter_reader(backend: object) -> CounterReader:
    """The backend's ``read_counters``; a backend without counters reads as none."""
    read = getattr(backend, "read_counters", None)
    return read if callable(read) else dict


class PolicyCounterCollector:
    """A custom collector: calls ``read`` (the backend's ``read_counters``, or nothing
    while the agent has no policy manager yet) at each scrape."""

    def __init__(self, read: CounterReader) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []  # so registering does not read the kernel

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            PACKETS, "packets counted by a policy rule or a namespace's default deny "
            "(staged policies: action would-*)", labels=LABELS)
        octets = CounterMetricFamily(
            BYTES, "bytes counted by a policy rule or a namespace's default deny",
            labels=LABELS)
        try:
            counts = self._read()
        except Exception as e:  # a scrape must not fail for this
            log.warning("policy counters: cannot read them: %s", e)
            counts = {}
        for counted, (p, b) in sorted(counts.items(), key=lambda kv: kv[0].text):
            values = [counted.labels()[k] for k in LABELS]
            packets.add_metric(values, p)
            octets.add_metric(values, b)
        yield packets
        yield octets


@dataclass(frozen=True)
class StatRow:
    """One line of ``fabricctl policy stats``."""

    node: str
    policy: str
    namespace: str
    rule: str
    direction: str
    action: str
    packets: int
    bytes: int

    def to_dict(self) -> dict[str, str | int]:
        return {"node": self.node, "policy": self.policy, "namespace": self.namespace,
                "rule": self.rule, "direction": self.direction, "action": self.action,
                "packets": self.packets, "bytes": self.bytes}


def rows_from_metrics(node: str, text: str) -> list[StatRow]:
    """The policy rows of one agent's ``/metrics`` page."""
    found: dict[tuple[str, ...], list[int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (PACKETS, BYTES):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            key = tuple(sample.labels.get(k, "") for k in LABELS)
            slot = found.setdefault(key, [0, 0])
            slot[0 if family.name == PACKETS else 1] = int(sample.value)
    return [StatRow(node, policy, ns, rule, direction, action, v[0], v[1])
            for (policy, ns, rule, direction, action), v in found.items()]


SORTS = ("packets", "bytes", "policy")


def sort_rows(rows: Iterable[StatRow], by: str) -> list[StatRow]:
    """Busiest first for ``packets``/``bytes``; by policy, namespace, direction and rule
    for ``policy``."""
    def rule_key(r: StatRow) -> tuple[int, str]:
        return (int(r.rule), "") if r.rule.isdigit() else (1 << 30, r.rule)

    by_policy = sorted(rows, key=lambda r: (r.policy, r.namespace, r.direction,
                                            rule_key(r), r.node))
    if by == "policy":
        return by_policy
    if by == "bytes":
        return sorted(by_policy, key=lambda r: -r.bytes)
    return sorted(by_policy, key=lambda r: -r.packets)
