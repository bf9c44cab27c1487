"""A short live run of a real ``fabric-agent`` whose ``/metrics`` is scraped every
`SCRAPE_INTERVAL` seconds: the series `bench.dashboard.render` draws the dashboard from.

``python -m bench.dashboard.record [-o bench/results/dashboard_series.json]`` (root, about
30 s). The agent runs as bench/cni/bench_cni.py ``--agent fabric-agent`` runs it (its own
embedded etcd, a node namespace with a stub uplink, nothing in the root namespace), and
the run does what an operator's dashboard would show: pods added through the real CNI
shim one by one, pings between two of them, a NetworkPolicy that allows it, then the same
policy changed to deny it, two pods deleted. There is no BGP peer (one node, no router):
the BGP panels show no data. Every namespace, process and file it made is removed after,
also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cni.bench_cni import (
    AGENT_BIN,
    _del_ns,
    _env,
    _exec,
    _fabric_agent,
    _node_uplink,
    _ns,
    agent_get,
)
from bench.common import RESULTS_DIR
from bench.scale.bench_scale import _doc
from cni.shim import pick_interpreter, write_executable
from datastore.client import Datastore, EtcdConfig
from datastore.embedded import EmbeddedEtcd

SCRAPE_INTERVAL = 0.5
PODS = 4
OUTPUT = RESULTS_DIR / "dashboard_series.json"


def _policy(ingress: list[dict[str, Any]]) -> tuple[str, bytes]:
    return _doc("NetworkPolicy", "dashboard-demo", {
        "podSelector": {}, "ingress": ingress, "policyTypes": ["Ingress"]},
        namespace="bench", api="networking.k8s.io/v1")


def _address(pod: str) -> str:
    out = subprocess.run(["ip", "-n", pod, "-j", "-4", "addr", "show", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["addr_info"][0]["local"])


async def _pings(src: str, dst: str, seconds: float) -> None:
    """One ICMP echo from pod ``src`` to ``dst`` every 0.2 s for ``seconds``, each from a
    ping of its own: a new ICMP id is a new connection to conntrack, and the policy
    counters count the connections a rule allowed or denied, not their later packets."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", src, "ping", "-q", "-n", "-c", "1", "-W", "0.2", dst,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()
        await asyncio.sleep(0.2)


async def _scrape(node: str, out: list[dict[str, Any]], stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        t = time.monotonic()
        status, text = await asyncio.to_thread(agent_get, node, "/metrics")
        if status == 200:
            out.append({"t": round(t - t0, 3), "instance": node, "text": text})
        await asyncio.sleep(max(0.0, SCRAPE_INTERVAL - (time.monotonic() - t)))


async def _run(tmp: Path, made: list[str]) -> list[dict[str, Any]]:
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        node = _ns("dash", made)
        pods = [_ns("pod", made) for _ in range(PODS)]
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        write_executable(bin_dir / "l3fabric", "plugin", pick_interpreter())
        sock = str(tmp / "agent.sock")
        conf = json.dumps({"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric",
                           "agentSocket": sock, "mtu": 1500,
                           "ipam": {"type": "l3fabric-ipam"}})
        _node_uplink(node, made)
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            await ds.put(*_doc("IPPool", "default", {"cidr": "10.244.0.0/16",
                                                     "blockSize": 26}))
            async with _fabric_agent(sock, node, etcd.unix_endpoint):
                scrapes: list[dict[str, Any]] = []
                stop = asyncio.Event()
                scraper = asyncio.create_task(_scrape(node, scrapes, stop))

                async def cni(cmd: str, i: int) -> None:
                    await _exec(str(bin_dir / "l3fabric"),
                                _env(cmd, f"dash{i}", pods[i], str(bin_dir)), conf, node)
                try:
                    await asyncio.sleep(3)
                    for i in range(PODS):
                        await cni("ADD", i)
                        await asyncio.sleep(1)
                    target = _address(pods[1])
                    await _pings(pods[0], target, 3)
                    await ds.put(*_policy([{}]))  # allow every ingress
                    await asyncio.sleep(1)
                    await _pings(pods[0], target, 5)
                    await ds.put(*_policy([]))  # the same policy, now denying it
                    await asyncio.sleep(1)
                    await _pings(pods[0], target, 5)
                    for i in (3, 2):
                        await cni("DEL", i)
                        await asyncio.sleep(1)
                    await asyncio.sleep(3)
                finally:
                    stop.set()
                    await scraper
                for i in (0, 1):
                    await cni("DEL", i)
    finally:
        etcd.stop()
    return scrapes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-o", "--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not AGENT_BIN.exists():
        print(f"bench.dashboard.record: needs root and {AGENT_BIN} (make setup)")
        return 1
    made: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="l3fabric-dashboard-"))
    try:
        scrapes = asyncio.run(_run(tmp, made))
    finally:
        for name in reversed(made):
            _del_ns(name)
        shutil.rmtree(tmp, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"scrape_interval": SCRAPE_INTERVAL,
                                       "scrapes": scrapes}) + "\n")
    print(f"wrote {args.output}: {len(scrapes)} scrapes over {scrapes[-1]['t']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
