"""docs/metrics.md lists exactly the metrics the agent exports (name, type, labels), and the
registry's catalogue is what a scrape carries: neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from felix_like.metrics import BgpSample, Metrics, PeerSample
from felix_like.policy.flowlog import FlowLogCollector
from felix_like.policy.stats import PolicyCounterCollector

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
NAME = re.compile(r"`([a-z0-9_:]+)`")


def documented() -> list[tuple[str, str, tuple[str, ...]]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and (name := NAME.fullmatch(cells[0])):
            labels = tuple(sorted(re.findall(r"`(\w+)`", cells[2])))
            rows.append((name.group(1), cells[1], labels))
    return rows


def agent_metrics() -> Metrics:
    """The registry as the agent builds it: its own metrics, the BGP speaker's sample and
    the policy counters' collector."""
    m = Metrics()
    m.sample_bgp(lambda: BgpSample(peers=(PeerSample("10.0.0.2", True, 3, 100, 0),)))
    m.registry.register(PolicyCounterCollector(dict))
    m.registry.register(FlowLogCollector(SimpleNamespace(logged=0, suppressed=0)))  # type: ignore[arg-type]
    return m


def test_the_doc_lists_every_exported_metric_once() -> None:
    doc = documented()
    assert len(doc) == len({name for name, _, _ in doc}), "a metric listed twice"
    catalogue = [(name, kind, tuple(sorted(labels)))
                 for name, kind, labels in agent_metrics().catalogue()]
    assert sorted(doc) == sorted(catalogue)


def test_the_catalogue_is_what_a_scrape_carries() -> None:
    m = agent_metrics()
    scraped = set()
    for fam in text_string_to_metric_families(m.render().decode()):
        # The parser names a counter's family without its ``_total``.
        scraped.add((fam.name + ("_total" if fam.type == "counter" else ""), fam.type))
    assert scraped == {(name, kind) for name, kind, _ in m.catalogue()}
