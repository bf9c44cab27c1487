"""The soak's invariants, read from etcd, the kernels, the agents and their logs.

Each ``check_*`` returns a list of violations (plain sentences naming the pod, node, key
or address); empty means the invariant holds. The caller (`soak.run`) runs the cheap ones
continuously and all of them at each settle point, retrying until they hold or the
convergence bound runs out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabricctl.lab import runner

from .lab import PREFIX, SoakLab
from .policy_eval import Pod as EvalPod
from .policy_eval import World
from .prober import TCP_PORT, UDP_PORT, Probe, Prober

POD_NETS = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd44::/48"))


@dataclass
class PodView:
    """What the soak (the runtime) knows of one pod."""

    key: str
    ns: str
    name: str
    node: str
    netns: str
    container: str
    ips: list[str]


@dataclass
class Deleted:
    key: str
    node: str
    container: str
    ips: list[str]


def sh(*cmd: str, timeout: float = 20) -> str:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    return p.stdout


def etcd_objects(lab: SoakLab) -> dict[str, Any] | None:
    assert lab.etcd is not None
    res = lab.etcd.call("dump", prefix=PREFIX, timeout=15)
    if not res.get("ok"):
        return None
    out: dict[str, Any] = {}
    for k, (v, _) in res["kvs"].items():
        try:
            out[k[len(PREFIX):]] = json.loads(v)
        except ValueError:
            out[k[len(PREFIX):]] = v
    return out


def weps(objs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in objs.items() if k.startswith("workloads/") and isinstance(v, dict)}


# -- addresses ---------------------------------------------------------------------------


def check_addresses(lab: SoakLab, objs: dict[str, Any], live: list[PodView]) -> list[str]:
    out = []
    held: Counter[str] = Counter()
    for w in weps(objs).values():
        for net in w.get("spec", {}).get("ipNetworks", []):
            held[net.split("/")[0]] += 1
    out += [f"etcd: {ip} is held by {n} WorkloadEndpoints" for ip, n in held.items() if n > 1]
    kernel: dict[str, list[str]] = {}
    for p in live:
        try:
            addrs = json.loads(sh("ip", "-n", p.netns, "-j", "addr", "show", "dev", "eth0")
                               or "[]")
        except ValueError:
            addrs = []
        got = sorted(a["local"] for i in addrs for a in i.get("addr_info", [])
                     if a.get("scope") == "global")
        if got != sorted(p.ips):
            out.append(f"kernel: pod {p.key} has {got} on eth0, its ADD answered {p.ips}")
        for ip in got:
            kernel.setdefault(ip, []).append(p.key)
    out += [f"kernel: {ip} is on pods {ks}" for ip, ks in kernel.items() if len(ks) > 1]
    return out


def check_ipam(lab: SoakLab) -> list[str]:
    p = subprocess.run(runner.in_netns(
        lab.st.mgmt_netns, str(runner.BIN_DIR / "fabricctl"), "--etcd-endpoints",
        lab.endpoints, "ipam", "check", "--grace", "0"), capture_output=True, text=True,
        timeout=60)
    if p.returncode != 0:
        return [f"fabricctl ipam check --grace 0: exit {p.returncode}: "
                f"{(p.stdout + p.stderr).strip()[-800:]}"]
    return []


def check_etcd_members(lab: SoakLab) -> list[str]:
    """The members hold the same data: each member's hash of its keyspace at one revision
    (`etcdctl endpoint hashkv`). Members that apply the same log differently answer reads
    differently, and no client of etcd can be right then."""
    eps = ",".join(m.endpoint for m in lab.members)

    def hashes(*rev: str) -> dict[str, tuple[int, int, int]]:
        # The JSON is stdout's one line; a member's failure follows it, on stderr.
        out = lab.etcdctl("endpoint", "hashkv", *rev, "-w", "json", endpoints=eps)
        return {r["Endpoint"]: (int(r["HashKV"]["header"]["revision"]),
                                int(r["HashKV"]["compact_revision"]), int(r["HashKV"]["hash"]))
                for r in json.loads(out.splitlines()[0] if out else "[]")}

    try:
        got = hashes()  # each member at its own current revision
        revs = {rev for rev, _, _ in got.values()}
        if len(revs) > 1:
            # One member is behind: compare at its revision, if no member compacted it
            # (a hash needs a revision above the compaction's).
            rev = min(revs)
            if rev > max(compact for _, compact, _ in got.values()):
                got = hashes("--rev", str(rev))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        return [f"etcd: cannot compare the members' data ({type(e).__name__}: {e})"]
    if len(got) < len(lab.members):
        return [f"etcd: {len(got)} of {len(lab.members)} members answer hashkv"]
    if len({(rev, h) for rev, _, h in got.values()}) > 1:
        return [f"etcd: the members' data differ: (revision, hash) "
                f"{ {ep: (rev, h) for ep, (rev, _, h) in got.items()} }"]
    return []


# -- endpoints and leftovers -----------------------------------------------------------------


def check_endpoints(lab: SoakLab, objs: dict[str, Any], live: list[PodView],
                    deleted: list[Deleted]) -> list[str]:
    out = []
    by_cid = {w["spec"].get("containerID"): (k, w) for k, w in weps(objs).items()
              if isinstance(w.get("spec"), dict)}
    live_cids = {p.container for p in live}
    for p in live:
        hit = by_cid.get(p.container)
        if hit is None:
            out.append(f"etcd: live pod {p.key} on {p.node} has no WorkloadEndpoint")
            continue
        k, w = hit
        nets = sorted(n.split("/")[0] for n in w["spec"].get("ipNetworks", []))
        if nets != sorted(p.ips) or w["spec"].get("node") != p.node:
            out.append(f"etcd: {k} says {nets} on {w['spec'].get('node')}, "
                       f"pod {p.key} has {p.ips} on {p.node}")
    for cid, (k, _) in by_cid.items():
        if cid not in live_cids:
            out.append(f"etcd: WorkloadEndpoint {k} (container {cid}) of no live pod")
    handles = [k for k in objs if k.startswith("ipam/handles/")]
    for d in deleted[-200:]:
        if any(h.endswith(f".{d.container}.eth0") for h in handles):
            out.append(f"etcd: IPAM handle of deleted pod {d.key} ({d.container}) remains")
    return out


def _kernel_routes(ns: str, proto: str) -> list[str]:
    """Routes of protocol ``proto``, IPv4 then IPv6 (a /32 or /128 is shown bare)."""
    return [ln for fam in ("-4", "-6")
            for ln in sh("ip", "-n", ns, fam, "route", "show", "proto", proto).splitlines()
            if ln.strip()]


def check_node_state(lab: SoakLab, objs: dict[str, Any], live: list[PodView],
                     deleted: list[Deleted]) -> list[str]:
    """Per node: veths, local routes, nft/ipset elements belong to live pods only, and no
    conntrack entry has the address of a pod deleted from that node (its agent deletes
    them; other nodes' entries for it expire on their own); metrics and NodeStatus agree
    with the kernel."""
    out = []
    live_ips = {ip for p in live for ip in p.ips}
    for node in lab.nodes:
        ns = lab.ns(node)
        mine = [p for p in live if p.node == node]
        want_ifs = sorted(str(w["spec"].get("hostInterface")) for w in weps(objs).values()
                          if w["spec"].get("node") == node)
        links = json.loads(sh("ip", "-n", ns, "-j", "link", "show") or "[]")
        have_ifs = sorted(x["ifname"] for x in links if x["ifname"].startswith("fab"))
        if have_ifs != want_ifs:
            out.append(f"{node}: veths {sorted(set(have_ifs) - set(want_ifs))} of no "
                       f"endpoint, {sorted(set(want_ifs) - set(have_ifs))} missing")
        r80 = _kernel_routes(ns, "80")
        local = sorted(ln.split()[0] for ln in r80 if not ln.startswith("blackhole"))
        blackholes = [ln for ln in r80 if ln.startswith("blackhole")]
        want_local = sorted(f"{ip}" for p in mine for ip in p.ips)
        if sorted(r.removesuffix("/32").removesuffix("/128") for r in local) != want_local:
            out.append(f"{node}: local routes {local}, live pods {want_local}")
        r81 = _kernel_routes(ns, "81")
        # Elements of the policy sets: any pod address must be a live pod's.
        stale = _set_elements(ns) - live_ips
        if stale:
            out.append(f"{node}: policy set elements of no live pod: {sorted(stale)}")
        gone_here = {ip for d in deleted if d.node == node for ip in d.ips} - live_ips
        ct = _conntrack_pod_addresses(ns) & gone_here
        if ct:
            out.append(f"{node}: conntrack entries for addresses of pods deleted from it: "
                       f"{sorted(ct)}")
        # Metrics and NodeStatus against the kernel.
        code, text = runner.http_get_in(ns, f"http://{lab.mgmt_ip(node)}:9091/metrics", 2.0)
        if code != 200:
            out.append(f"{node}: /metrics answered {code}")
        else:
            m = _metrics(text)
            kern = {"local": len(local), "blackhole": len(blackholes), "bgp": len(r81)}
            for kind, n in kern.items():
                got = m.get(f'l3fabric_routes_programmed{{kind="{kind}"}}')
                if got is None or int(got) != n:
                    out.append(f"{node}: metric routes_programmed{{{kind}}}={got}, kernel {n}")
            if m.get("l3fabric_datastore_in_sync") != 1.0:
                out.append(f"{node}: metric datastore_in_sync="
                           f"{m.get('l3fabric_datastore_in_sync')}")
            if m.get("l3fabric_endpoints_without_interface", 0.0) != 0.0:
                out.append(f"{node}: endpoints_without_interface="
                           f"{m.get('l3fabric_endpoints_without_interface')}")
            st = (objs.get(f"status/nodes/{node}") or {}).get("status", {})
            prog = st.get("programmed", {})
            if not st.get("inSync"):
                out.append(f"{node}: NodeStatus inSync={st.get('inSync')}")
            for kind, n in kern.items():
                if prog.get(kind, 0) != n:
                    out.append(f"{node}: NodeStatus programmed.{kind}={prog.get(kind, 0)}, "
                               f"kernel {n}")
            if st.get("errors"):
                out.append(f"{node}: NodeStatus errors {st['errors']}")
            want_bh = sorted(st.get("blocks", []))
            have_bh = sorted(ln.split()[1] for ln in blackholes)
            if have_bh != want_bh:
                out.append(f"{node}: blackholes {have_bh}, NodeStatus blocks {want_bh}")
    return out


# A pod address of either family, not a prefix (``/len`` after it); IPv6 in any notation
# (conntrack's file writes every group in full).
_ADDR = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f]{1,4}(?::[0-9a-f]{0,4}){2,7})"
                   r"(?![\w.:/])")


def _pod_addresses(text: str) -> set[str]:
    out = set()
    for m in _ADDR.findall(text):
        try:
            a = ipaddress.ip_address(m)
        except ValueError:
            continue
        if any(a in net for net in POD_NETS):
            out.add(str(a))
    return out


def _set_elements(ns: str) -> set[str]:
    text = sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "l3fabric")
    # Only set elements (`elements = { … }`), not rule literals.
    found: set[str] = set()
    for m in re.finditer(r"elements = \{([^}]*)\}", text):
        found |= _pod_addresses(m.group(1))
    for name in sh("ip", "netns", "exec", ns, "ipset", "list", "-n").split():
        if name.startswith("fab"):
            members = sh("ip", "netns", "exec", ns, "ipset", "list", name)
            found |= _pod_addresses(members.split("Members:", 1)[-1])
    return found


def _conntrack_pod_addresses(ns: str) -> set[str]:
    return _pod_addresses(sh("ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack"))


def _metrics(text: str) -> dict[str, float]:
    out = {}
    for ln in text.splitlines():
        if ln.startswith("#") or " " not in ln:
            continue
        k, _, v = ln.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[k] = float(v)
    return out


# -- reachability ----------------------------------------------------------------------------


def world_of(objs: dict[str, Any]) -> World:
    namespaces = {k.split("/", 1)[1]: (v.get("metadata", {}).get("labels") or {})
                  for k, v in objs.items() if k.startswith("namespaces/")}
    netpols = [v for k, v in objs.items() if k.startswith("policies/")]
    gnps = [v for k, v in objs.items() if k.startswith("globalpolicies/")]
    return World(namespaces, netpols, gnps)


def expected_reach(objs: dict[str, Any], live: list[PodView]) -> dict[Probe, bool]:
    world = world_of(objs)
    labels = {w["spec"].get("containerID"): dict(w["spec"].get("labels") or {})
              for w in weps(objs).values()}
    pods = {p.key: EvalPod(p.key, p.ns, labels.get(p.container, {})) for p in live}
    out = {}
    for s in live:
        for d in live:
            if s.key == d.key:
                continue
            for proto, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
                for ip in d.ips:
                    out[Probe(s.key, s.netns, d.key, ip, proto)] = world.allows(
                        pods[s.key], pods[d.key], proto, port)
    return out


def check_reach(prober: Prober, expected: dict[Probe, bool],
                only: list[Probe] | None = None) -> dict[Probe, bool]:
    """The probes whose outcome differs from ``expected`` (with what was seen)."""
    probes = only if only is not None else list(expected)
    seen = prober.run(probes)
    return {p: ok for p, ok in seen.items() if ok != expected[p]}


# -- logs and memory -----------------------------------------------------------------------------


@dataclass
class LogScanner:
    offsets: dict[str, int] = field(default_factory=dict)

    def scan(self, root: Path) -> list[str]:
        """Tracebacks and panics written since the last scan, in any log under ``root``."""
        out = []
        for f in sorted(root.rglob("*.log")):
            if f.name == "etcdsvc.log":
                continue
            try:
                with open(f, "rb") as fh:
                    fh.seek(self.offsets.get(str(f), 0))
                    data = fh.read()
                    self.offsets[str(f)] = fh.tell()
            except OSError:
                continue
            text = data.decode(errors="replace")
            for m in re.finditer(r"Traceback \(most recent call last\)|^panic: ", text,
                                 re.MULTILINE):
                tail = text[m.start():m.start() + 1500].splitlines()
                last = next((ln for ln in tail[1:] if ln and not ln.startswith(" ")), "")
                out.append(f"{f.relative_to(root)}: traceback: {last.strip()[:300]}")
        return out


def rss_kib(pid: int) -> int | None:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    except OSError:
        return None
    return None
