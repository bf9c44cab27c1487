"""An agent restart behind an FRR top-of-rack router keeps every learned route.

Lab (`helpers.tor_rack`): FRR 8.4 (Debian's ``frr``) as the ToR, configured with what
``fabricctl tor-config --format frr`` prints, unedited; two nodes running the real agent,
each with one dual-stack pod; graceful restart on and off. n1's agent is killed with
``kill -9`` and started again while the pods ping each other every 10 ms over IPv4 and
IPv6.

Expected: no ping lost in either family; the BGP session is the same TCP connection
(its 4-tuple in ``ss``) before and after; n1 keeps every route it learned, in both
families. Then n2 is removed while n1's agent is down again: its routes leave n1 when
the agent is back. FRR with enhanced route refresh ignores a refresh request until it has sent
its End-of-RIB, which it sends only to graceful-restart peers: a restarted agent that
waited for a refresh would get no answer, take that as "no routes" and remove them all.
The relay's replay of each peer's adj-RIB-in rebuilds the table without asking.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from helpers.exabgp import wait_for
from helpers.faults import Pinger
from helpers.frr import Frr, frr_missing
from helpers.procs import tcp_connections
from helpers.tor_rack import add_dual_stack_pod, bgp_routes, dual_stack_rack

from datastore.embedded import EmbeddedEtcd

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(frr_missing() is not None, reason=str(frr_missing()))]

PING_SECONDS = 8


def learned(ns: str) -> dict[str, str]:
    return bgp_routes(ns, "-4") | bgp_routes(ns, "-6")


@pytest.mark.parametrize("graceful_restart", [False, True], ids=["gr-off", "gr-on"])
def test_agent_kill9_behind_frr_keeps_routes_session_and_pings(
        netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path,
        graceful_restart: bool) -> None:
    rack = dual_stack_rack(netns, etcd, tmp_path, gracefulRestart={
        "enabled": graceful_restart, "restartTime": 120})
    n1, n2 = rack.nodes
    frr = Frr(rack.tor_ns, tmp_path)
    try:
        frr.start(rack.tor_config("frr"))
        for n in rack.nodes:
            n.spawn(etcd)
        for n in rack.nodes:
            wait_for(n.ready, 40, f"agent {n.name} ready", 0.1, n.log_tail)
        a_ns, b_ns = netns("pa"), netns("pb")
        a4, a6 = add_dual_stack_pod(n1, a_ns, "a")
        b4, b6 = add_dual_stack_pod(n2, b_ns, "b")

        def n1_has_n2s_blocks() -> bool:
            return (any(p.startswith("10.244.") for p in bgp_routes(n1.ns, "-4"))
                    and any(p.startswith("fd44:") for p in bgp_routes(n1.ns, "-6"))
                    and subprocess.run(["ip", "netns", "exec", a_ns, "ping", "-n", "-c", "1",
                                        "-W", "1", b6], capture_output=True).returncode == 0)

        wait_for(n1_has_n2s_blocks, 40, "n1 to learn n2's blocks from FRR (both families)",
                 0.2, lambda: frr.vtysh("show bgp summary") + n1.log_tail())
        before, sessions = learned(n1.ns), tcp_connections(n1.ns, "10.98.1.1")
        assert sessions, "no BGP connection in n1"

        pings = [Pinger(a_ns, b4, PING_SECONDS), Pinger(a_ns, b6, PING_SECONDS),
                 Pinger(b_ns, a4, PING_SECONDS), Pinger(b_ns, a6, PING_SECONDS)]
        time.sleep(1)
        log_from = n1.log.stat().st_size  # the restarted agent appends to the same log
        n1.kill(signal.SIGKILL)
        t_kill, wall_kill = time.monotonic(), time.time()
        n1.start(etcd)
        ready = time.monotonic() - t_kill
        results = [p.result() for p in pings]
        # The import table of the restarted agent is complete (the point at which an agent
        # waiting for the refresh FRR ignores would sweep every learned route).
        wait_for(lambda: "bgp import table in sync" in log_since(n1.log, log_from), 10,
                 "the restarted agent's import table in sync", 0.1, n1.log_tail)
        after = learned(n1.ns)
        synced = next(ln for ln in log_since(n1.log, log_from).splitlines()
                      if "import table in sync" in ln)
        at = datetime.strptime(synced[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        print(f"FRR ToR, graceful restart {'on' if graceful_restart else 'off'}: agent ready "
              f"{ready:.2f}s after kill -9, import table complete {at - wall_kill:.2f}s after "
              f"it ({synced[24:]}); pings {[r[:2] for r in results]}; learned routes kept: "
              f"{sorted(after.values())}")
        for sent, got, summary in results:
            assert sent == got, f"pings lost across the agent restart: {summary}"
        assert after == before, (before, after, n1.log_tail())
        assert tcp_connections(n1.ns, "10.98.1.1") == sessions, "the session was reset"
        assert {p for p in after if p.startswith("fd44:")}, "no IPv6 route kept"

        # What goes away while the agent is down still goes: n2 is removed (its agent
        # drains: FRR withdraws its blocks from n1) while n1's agent is dead.
        log_from = n1.log.stat().st_size
        n1.kill(signal.SIGKILL)
        n2.cleanup()
        wait_for(lambda: not frr_routes(frr) & before.keys(), 10,
                 "FRR to withdraw n2's blocks", 0.1,
                 lambda: frr.vtysh("show bgp ipv4 unicast", "show bgp ipv6 unicast"))
        n1.start(etcd)
        wait_for(lambda: "bgp import table in sync" in log_since(n1.log, log_from), 10,
                 "the restarted agent's import table in sync", 0.1, n1.log_tail)
        wait_for(lambda: not learned(n1.ns), 5, "n2's routes gone from n1", 0.1,
                 lambda: str(learned(n1.ns)) + n1.log_tail())
    finally:
        for n in rack.nodes:
            n.cleanup()
        frr.stop()


def frr_routes(frr: Frr) -> set[str]:
    """The prefixes in FRR's BGP tables, both families."""
    return {p for afi in ("ipv4", "ipv6")
            for p in frr.vtysh_json(f"show bgp {afi} unicast json").get("routes", {})}


def log_since(log: Path, offset: int) -> str:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
