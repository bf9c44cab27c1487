"""An outside host behind the ToR of a `helpers.tor_rack` rack, a BIRD ToR, and a TCP
server that answers each connection with the source address it saw.

Everything lives in the caller's test namespaces (``netns`` factory): the outside host is
one more namespace on a link ``10.97.0.0/30`` + ``fd97::/64`` to the ToR (ToR ``.1``,
outside ``.2``), with routes back to the pod pools and the node links through the ToR and
no default route. Each node gets a route to the outside link through the ToR (its BGP
imports only pool prefixes). Servers bind no name and resolve nothing (PLATFORM.md).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.exabgp import wait_for
from helpers.tor_rack import Rack, sh

OUT4, OUT6 = "10.97.0.2", "fd97::2"

# Answers each TCP connection (IPv4 and IPv6) with the peer's address, then closes.
_SERVER = r"""
import socket, sys, threading
port = int(sys.argv[1])
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port)); s.listen(16)
    while True:
        c, peer = s.accept()
        c.sendall(peer[0].encode()); c.close()
threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
serve(socket.AF_INET, "0.0.0.0")
"""

_CLIENT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    s.settimeout(2)
    print(s.recv(100).decode())
except OSError as e:
    print("error:", e)
"""


def add_outside_host(rack: Rack, netns: Callable[[str], str]) -> str:
    """The outside namespace, wired behind the rack's ToR as the module docstring says."""
    out = netns("out")
    sh("ip", "-n", rack.tor_ns, "link", "add", "ext", "type", "veth", "peer", "name", "up0",
       "netns", out)
    for where, dev, host in ((rack.tor_ns, "ext", 1), (out, "up0", 2)):
        sh("ip", "-n", where, "addr", "add", f"10.97.0.{host}/30", "dev", dev)
        sh("ip", "-n", where, "addr", "add", f"fd97::{host}/64", "dev", dev, "nodad")
        sh("ip", "-n", where, "link", "set", dev, "up")
    for net in ("10.244.0.0/16", "10.98.0.0/16"):
        sh("ip", "-n", out, "route", "add", net, "via", "10.97.0.1")
    for net in ("fd44::/48", "fd98::/16"):
        sh("ip", "-6", "-n", out, "route", "add", net, "via", "fd97::1")
    for i, node in enumerate(rack.nodes, start=1):
        sh("ip", "-n", node.ns, "route", "add", "10.97.0.0/30", "via", f"10.98.{i}.1")
        sh("ip", "-6", "-n", node.ns, "route", "add", "fd97::/64", "via", f"fd98:{i}::1")
    return out


@contextmanager
def bird_tor(rack: Rack, workdir: Path) -> Iterator[Path]:
    """BIRD in the ToR namespace with what ``fabricctl tor-config`` prints; its socket."""
    conf = workdir / "bird.conf"
    conf.write_text(rack.tor_config("bird"))
    sock = workdir / "bird.ctl"
    bird = subprocess.Popen(["ip", "netns", "exec", rack.tor_ns, "bird", "-f", "-c", str(conf),
                             "-s", str(sock), "-P", str(workdir / "bird.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield sock
    finally:
        bird.kill()
        bird.wait(10)


def bgp_established(sock: Path, node: str) -> bool:
    """Whether BIRD's session to ``node`` (protocol ``l3f_<node>``, as ``tor-config``
    names it) is Established."""
    out = subprocess.run(["birdc", "-s", str(sock), "show", "protocols"],
                         capture_output=True, text=True).stdout
    return any(ln.split()[0] == f"l3f_{node}" and "Established" in ln
               for ln in out.splitlines() if ln.split())


@contextmanager
def peer_server(ns: str, port: int) -> Iterator[None]:
    """The answering server in ``ns`` on ``port`` (IPv4 and IPv6), until the block ends."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", _SERVER,
                          str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        p.kill()
        p.wait(10)


def seen_source(src_ns: str, dst: str, port: int) -> str:
    """Connect from ``src_ns`` to ``dst``: the source address the server saw, or
    ``error: ...``."""
    r = subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-I", "-S", "-c", _CLIENT,
                        dst, str(port)], capture_output=True, text=True, timeout=20)
    return r.stdout.strip()


def wait_seen(src_ns: str, dst: str, port: int, want: str, timeout: float = 20,
              detail: Callable[[], str] | None = None) -> str:
    """Connect again until the server sees ``want`` as the source."""
    last: list[str] = []

    def check() -> bool:
        last[:] = [seen_source(src_ns, dst, port)]
        return last[0] == want

    wait_for(check, timeout, f"{dst} to see {want} from {src_ns}", 0.2,
             lambda: f"last seen: {last}\n{detail() if detail else ''}")
    return last[0]
