"""A live agent's ``/metrics``: it passes ``promtool check metrics`` (Prometheus' own
linter, Debian's ``prometheus``), carries the process metrics and the build, counts a bad
value in etcd and shows it invalid only while it is, and drops a BGP peer's series when the
peer is deleted."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.exabgp import wait_for
from helpers.fabric import API, Fabric, lan

from datastore.embedded import EmbeddedEtcd
from datastore.version import l3fabric_version

PEER = "10.0.0.9"  # a Node with no agent: n1's mesh neighbour, never up


def value(text: str, series: str) -> float | None:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


@pytest.fixture
def fabric(netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[Fabric]:
    fab = Fabric(netns, etcd, tmp_path)
    try:
        lan(fab, 1)
        fab.pool("p", "10.244.0.0/16")
        fab.put("nodes/n9", {"apiVersion": API, "kind": "Node", "metadata": {"name": "n9"},
                             "spec": {"bgp": {"ipv4Address": f"{PEER}/24"}}})
        fab.start_agents()
        yield fab
    finally:
        fab.close()


def test_live_metrics_pass_promtool_and_follow_config_errors_and_peers(
        fabric: Fabric) -> None:
    n1 = fabric.nodes["n1"]
    fabric.add_pod("n1", "a")  # a CNI request and an apply on record

    def scrape() -> str:
        code, text = n1.http("/metrics")
        assert code == 200
        return text

    def scrape_until(pred: Callable[[str], bool], what: str) -> str:
        got: str = wait_for(lambda: (t := scrape()) and pred(t) and t, 20, what, 0.2,
                            n1.log_tail)
        return got

    peer_up = f'l3fabric_bgp_peer_up{{peer="{PEER}"}}'
    text = scrape_until(lambda t: peer_up in t, f"{peer_up} exported")
    assert value(text, peer_up) == 0
    assert (value(text, "process_resident_memory_bytes") or 0) > 0
    assert value(text, "process_cpu_seconds_total") is not None
    assert value(text, f'l3fabric_build_info{{version="{l3fabric_version()}"}}') == 1
    assert value(text, "l3fabric_exabgp_restarts_total") == 0
    assert value(text, f'l3fabric_bgp_prefixes_dropped_total{{peer="{PEER}"}}') == 0
    first = text

    # A bad value: counted, and invalid right now; fixed: still counted, no longer invalid.
    fabric.pool("bad", "10.245.0.0/16", block_size=33)
    text = scrape_until(lambda t: value(t, "l3fabric_config_values_invalid") == 1,
                        "the bad pool shown invalid")
    assert (value(text, "l3fabric_config_errors_total") or 0) >= 1
    fabric.pool("bad", "10.245.0.0/16", block_size=26)
    text = scrape_until(lambda t: value(t, "l3fabric_config_values_invalid") == 0,
                        "the fixed pool no longer invalid")
    assert (value(text, "l3fabric_config_errors_total") or 0) >= 1

    # The peer's Node is deleted: n1 no longer peers with it, and none of its series is left.
    fabric.delete("nodes/n9")
    text = scrape_until(lambda t: PEER not in t, f"every series of {PEER} gone")
    assert "l3fabric_bgp_prefixes_advertised" in text

    # Prometheus' own linter, on the first scrape (a peer, a CNI request, a histogram) and
    # on the last.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; make setup installs "
                    "it): the exposition was not linted")
    for exposition in (first, text):
        r = subprocess.run([promtool, "check", "metrics"], input=exposition,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
