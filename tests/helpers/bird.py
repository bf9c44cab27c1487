"""BIRD 2 as a top-of-rack router inside a test namespace (config shape from PLATFORM.md).

The one test router of the suite: the integration and fault tests, the benchmarks and the
e2e lab (`helpers.fabric`) all drive BIRD through `Bird`. It owns its workdir (config,
control socket, pid file, log) and the ``bird`` process it starts; `stop()` kills it, and
the namespace's owner (a fixture) deletes the namespace. The namespace is the caller's.

What a `Bird` announces, besides what its BGP peers send it:

- ``statics``: blackholes announced to every peer and installed in the ToR's kernel;
- ``probes``: blackhole ``probeN`` statics, disabled at start (``birdc enable probe0``);
- ``bogus``: blackholes announced only to peers marked ``bogus`` and never installed here.
  They lose against real routes (preference 50); ``secondary`` lets BIRD still send them
  to the neighbour whose own route wins.

Sessions are eBGP, or iBGP to route-reflector clients (``rr_client``: AS per rack, the
ToR reflects between its nodes). ``merge paths on`` puts ECMP routes into the kernel.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from helpers.procs import tcp_connections

#: ``ip route`` types printed before the prefix (``blackhole 10.244.0.0/26 proto 80``).
ROUTE_TYPES = {"unicast", "blackhole", "unreachable", "prohibit", "throw", "local",
               "broadcast", "anycast", "multicast", "nat"}


@dataclass(frozen=True)
class BirdPeer:
    name: str  # the BGP protocol's name in BIRD
    ip: str
    asn: int
    source: str  # the router's own address on the link
    password: str | None = None  # TCP-MD5
    ttl_security: bool = False  # GTSM
    rr_client: bool = False  # an iBGP route-reflector client (cluster ID: the router ID)
    bogus: bool = False  # this neighbour also gets the router's ``bogus`` statics


@dataclass
class Bird:
    ns: str
    workdir: Path
    router_id: str
    asn: int
    peers: list[BirdPeer] = field(default_factory=list)
    statics: list[str] = field(default_factory=list)
    bogus: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    hold: int = 9
    keepalive: int = 3
    # True: ``graceful restart on`` (BIRD could also restart gracefully itself); False:
    # ``aware``, BIRD's default. Either way BIRD keeps a restarting peer's routes.
    graceful_restart: bool = True
    # BIRD's ``check link``: on (its default for direct sessions) a link down at the ToR
    # ends the session at once; off, a short flap keeps it (a ToR with BFD or short flaps).
    check_link: bool = True
    name: str = "bird"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        return str(self.workdir / "bird.ctl")

    @property
    def conf(self) -> Path:
        return self.workdir / "bird.conf"

    def config(self) -> str:
        lines = [
            f"router id {self.router_id};",
            "ipv4 table master4 { sorted on; };",  # `secondary` needs a sorted table
            "protocol device { scan time 10; }",
            'protocol kernel { ipv4 { import none; export where proto != "bogus"; }; '
            "merge paths on; }",
        ]
        if self.statics:
            routes = " ".join(f"route {prefix} blackhole;" for prefix in self.statics)
            lines.append(f"protocol static fabstatic {{ ipv4; {routes} }}")
        if self.bogus:
            routes = " ".join(f"route {prefix} blackhole;" for prefix in self.bogus)
            lines.append(f"protocol static bogus {{ ipv4 {{ preference 50; }}; {routes} }}")
        for i, probe in enumerate(self.probes):
            lines.append(f"protocol static probe{i} {{ disabled; ipv4; route {probe} blackhole; }}")
        gr = "on" if self.graceful_restart else "aware"
        for p in self.peers:
            extra = f' password "{p.password}";' if p.password else ""
            if p.ttl_security:
                extra += " ttl security on;"
            if p.rr_client:
                extra += f" rr client; rr cluster id {self.router_id};"
            if not self.check_link:
                extra += " check link off;"
            export = "all" if p.bogus else 'where proto != "bogus"'
            lines.append(
                f"protocol bgp {p.name} {{ local as {self.asn}; neighbor {p.ip} as {p.asn}; "
                f"source address {p.source}; direct; hold time {self.hold}; "
                f"keepalive time {self.keepalive}; connect retry time 1; "
                f"error wait time 1, 5; graceful restart {gr};{extra} "
                f"ipv4 {{ import all; export {export}; next hop self; gateway direct; "
                "secondary on; }; }")
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        """Render the config and have BIRD parse it (``bird -p``): a bad one fails here."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config())
        r = subprocess.run(["bird", "-p", "-c", str(self.conf)], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"BIRD rejects {self.conf}: {r.stderr.strip()}")

    def start(self) -> None:
        self.write_config()
        with open(self.workdir / "bird.log", "ab") as logf:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "bird", "-f", "-c", str(self.conf),
                 "-s", self.sock, "-P", str(self.workdir / "bird.pid")],
                stdout=subprocess.DEVNULL, stderr=logf)

    def reconfigure(self) -> None:
        """Apply the current fields to the running BIRD (``birdc configure``)."""
        self.write_config()
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise AssertionError(f"birdc configure: {out}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None

    def birdc(self, *cmd: str) -> str:
        return subprocess.run(["birdc", "-s", self.sock, *cmd], capture_output=True,
                              text=True, timeout=10).stdout

    def protocol(self, name: str) -> tuple[str, str, str]:
        """(state, since, info) of a protocol, e.g. ("up", "21:05:31.782", "Established")."""
        for line in self.birdc("show", "protocols", name).splitlines():
            parts = line.split()
            if parts and parts[0] == name:
                return parts[3], parts[4], " ".join(parts[5:])
        return "", "", ""

    def established(self, name: str) -> bool:
        return self.protocol(name)[2].startswith("Established")

    def session_id(self, name: str) -> frozenset[tuple[str, str]]:
        """The TCP connection of BGP protocol ``name`` (empty when down): it changes only
        when the session is reset (`helpers.procs.tcp_connections`), unlike the protocol's
        "since", which can read 1 ms apart for the same session."""
        peer = next(p for p in self.peers if p.name == name)
        return tcp_connections(self.ns, peer.ip)

    def routes(self, *args: str) -> dict[str, set[str]]:
        """prefix -> next hops in BIRD's table (``show route [ARGS]``; blackhole: "blackhole")."""
        out: dict[str, set[str]] = {}
        cur = None
        for line in self.birdc("show", "route", *args).splitlines():
            parts = line.split()
            if parts and "/" in parts[0] and parts[0][0].isdigit():
                cur = parts[0]
                out.setdefault(cur, set())
                if len(parts) > 1 and parts[1] == "blackhole":
                    out[cur].add("blackhole")
            if cur is not None and "via" in parts:
                out[cur].add(parts[parts.index("via") + 1])
        return out


def kernel_routes(ns: str, proto: str | None = None) -> dict[str, str]:
    """prefix -> the rest of its ``ip route`` line in a namespace's main table, ECMP next
    hops joined; a route's type stays in front (``blackhole proto 80 …``)."""
    cmd = ["ip", "-n", ns, "route", "show"]
    if proto:
        cmd += ["proto", proto]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    out: dict[str, str] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and cur is not None:
            out[cur] += " " + line.strip()
            continue
        head, _, rest = line.partition(" ")
        kind = ""
        if head in ROUTE_TYPES:
            kind = head
            head, _, rest = rest.partition(" ")
        if head == "default":
            head = "0.0.0.0/0"
        cur = head if "/" in head else f"{head}/32"
        out[cur] = f"{kind} {rest}" if kind else rest
    return out
