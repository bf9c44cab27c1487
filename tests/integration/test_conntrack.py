"""`forget_flows` against the kernel's conntrack table, both families.

Lab: namespace ``a`` (where the entries live: an nftables output hook makes conntrack
track its traffic) joined by a veth to ``b``, which holds two IPv4 and two IPv6 addresses.
``a`` sends UDP datagrams to each (a new source port each: a new entry each). Deleting the
flows of one address must remove exactly that address's entries and keep the others, as
read back with pyroute2's own full dump (a parser independent of the one under test).
IPv6 takes one full dump, matched without pyroute2's parse (~0.5 ms per entry): the
kernel's filtered dump cannot be used for it, its IPv6 filter match is inverted
(`felix_like.conntrack`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import pytest

from felix_like.netlink import run_in_netns
from felix_like.policy.manager import forget_flows

pytestmark = pytest.mark.integration

B_ADDRS = ["10.55.0.2", "10.55.0.3", "fd00::2", "fd00::3"]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def pair(netns: Callable[[str], str]) -> tuple[str, str]:
    a, b = netns("cta"), netns("ctb")
    sh("ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
    sh("ip", "-n", a, "addr", "add", "10.55.0.1/24", "dev", "v0")
    sh("ip", "-n", a, "addr", "add", "fd00::1/64", "dev", "v0", "nodad")
    for addr in B_ADDRS:
        plen = "64" if ":" in addr else "24"
        sh("ip", "-n", b, "addr", "add", f"{addr}/{plen}", "dev", "v1",
           *(["nodad"] if ":" in addr else []))
    sh("ip", "-n", a, "link", "set", "v0", "up")
    sh("ip", "-n", b, "link", "set", "v1", "up")
    sh("ip", "netns", "exec", a, "nft", "add table inet t; add chain inet t o "
       "{ type filter hook output priority 0; }; add rule inet t o ct state new counter")
    return a, b


def datagrams(to: str, count: int, first_port: int = 20000) -> None:
    """``count`` UDP datagrams to ``to``, from ports ``first_port`` on (a source port of
    its own: an entry of its own). Runs in the caller's namespace."""
    fam = socket.AF_INET6 if ":" in to else socket.AF_INET
    for port in range(first_port, first_port + count):
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
            s.sendto(b"x", (to, 9))


def send(ns: str, per_address: int) -> None:
    """``per_address`` datagrams from ``ns`` to each of b's addresses."""
    run_in_netns(ns, lambda: [datagrams(addr, per_address) for addr in B_ADDRS])


def destinations(ns: str) -> Counter[str]:
    """How many entries go to each destination, by pyroute2's full dump."""
    from pyroute2 import Conntrack

    def run() -> Counter[str]:
        got: Counter[str] = Counter()
        for fam in (socket.AF_INET, socket.AF_INET6):
            ct = Conntrack(nfgen_family=fam)
            try:
                for e in ct.dump_entries():
                    got[str(e.tuple_orig.daddr)] += 1
            finally:
                ct.close()
        return got
    return run_in_netns(ns, run)


def test_flows_of_one_address_go_and_the_others_stay(pair: tuple[str, str]) -> None:
    a, _ = pair
    send(a, 20)
    assert destinations(a) == Counter({addr: 20 for addr in B_ADDRS})
    assert forget_flows(a, ["fd00::2/128"]) == 20
    assert destinations(a) == Counter({"10.55.0.2": 20, "10.55.0.3": 20, "fd00::3": 20})
    assert forget_flows(a, ["10.55.0.3/32"]) == 20
    assert destinations(a) == Counter({"10.55.0.2": 20, "fd00::3": 20})
    # Entries whose address is at the other end match too (a's own address: all of them),
    # and networks wider than one address, of both families.
    assert forget_flows(a, ["fd00::1/128"]) == 20
    assert forget_flows(a, ["10.55.0.0/30"]) == 20
    assert destinations(a) == Counter()
    assert forget_flows(a, ["fd00::2/128", "10.55.0.2/32"]) == 0  # nothing left: no error


def test_ipv6_flows_of_a_busy_node_go_in_one_cheap_dump(pair: tuple[str, str]) -> None:
    """5,000 entries, 20 of them the address's: all 20 go and the rest stay. Printed for
    information: how long it took, and pyroute2's parse of the same dump (which the IPv6
    case used)."""
    a, b = pair
    sh("ip", "-n", b, "addr", "add", "fd00::9/64", "dev", "v1", "nodad")

    def many() -> None:
        datagrams("fd00::9", 5000 - 20)
        datagrams("fd00::3", 20)
    run_in_netns(a, many)
    t0 = time.perf_counter()
    assert destinations(a) == Counter({"fd00::9": 4980, "fd00::3": 20})
    print(f"pyroute2's parse of the same dump: {1000 * (time.perf_counter() - t0):.0f} ms")
    t0 = time.perf_counter()
    assert forget_flows(a, ["fd00::3/128"]) == 20
    print(f"forget_flows of one IPv6 address among 5,000 entries: "
          f"{1000 * (time.perf_counter() - t0):.0f} ms")
    assert destinations(a) == Counter({"fd00::9": 4980})
