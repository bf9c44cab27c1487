"""BIRD 2 as a top-of-rack router inside a test namespace (config shape from PLATFORM.md)."""

from __future__ import annotations

import contextlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BirdPeer:
    name: str
    ip: str
    asn: int
    source: str
    password: str | None = None
    ttl_security: bool = False


@dataclass
class Bird:
    netns: str
    workdir: Path
    router_id: str
    asn: int
    peers: list[BirdPeer] = field(default_factory=list)
    statics: list[str] = field(default_factory=list)  # prefixes announced as blackholes
    hold: int = 9
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        return str(self.workdir / "bird.ctl")

    def config(self) -> str:
        lines = [
            f"router id {self.router_id};",
            "protocol device { scan time 10; }",
            "protocol kernel { ipv4 { import none; export all; }; merge paths on; }",
        ]
        if self.statics:
            routes = " ".join(f"route {p} blackhole;" for p in self.statics)
            lines.append(f"protocol static fabstatic {{ ipv4; {routes} }}")
        lines.append(
            f"template bgp node {{ local as {self.asn}; hold time {self.hold}; "
            "keepalive time 3; connect retry time 1; error wait time 1, 5; "
            "graceful restart on; "
            "ipv4 { import all; export all; next hop self; }; }")
        for p in self.peers:
            extra = f' password "{p.password}";' if p.password else ""
            if p.ttl_security:
                extra += " ttl security on;"
            lines.append(f"protocol bgp {p.name} from node {{ neighbor {p.ip} as {p.asn}; "
                         f"source address {p.source};{extra} }}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "bird.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "bird", "-f", "-c", str(conf), "-s", self.sock,
             "-P", str(self.workdir / "bird.pid")],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "bird.log", "ab"))  # noqa: SIM115

    def reconfigure(self) -> None:
        (self.workdir / "bird.conf").write_text(self.config())
        self.birdc("configure")

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

    def routes(self) -> dict[str, set[str]]:
        """prefix -> next hops (``blackhole`` for static blackholes) in BIRD's table."""
        out: dict[str, set[str]] = {}
        cur = None
        for line in self.birdc("show", "route", "all").splitlines():
            m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s+(\w+)", line)
            if m:
                cur = m.group(1)
                out.setdefault(cur, set())
                if m.group(2) == "blackhole":
                    out[cur].add("blackhole")
                continue
            m = re.match(r"^\s+via (\S+)", line)
            if m and cur is not None:
                out[cur].add(m.group(1))
        return out


def kernel_routes(netns: str, proto: str | None = None) -> dict[str, str]:
    """prefix -> the rest of the ``ip route`` line, in a namespace."""
    cmd = ["ip", "-n", netns, "route", "show"]
    if proto:
        cmd += ["proto", proto]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    out: dict[str, str] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and cur is not None:
            out[cur] += " " + line.strip()
            continue
        head, _, rest = line.partition(" ")
        cur = head if "/" in head else f"{head}/32"
        out[cur] = rest
    return out

