"""``fabricctl diags``: one tarball with what a bug report about one node needs.

Run on the node (root, for the dataplane and ExaBGP's files). What goes in, under one
directory ``l3fabric-diags-<node>-<UTC time>/``:

=====================  ==========================================================================
``README.txt``         what was collected, from where, and when
``commands.txt``       every command run, its exit code and the start of its stderr
``version.txt``        l3fabric, Python, kernel, ExaBGP, nft, iptables
``agent/agent.log``    the agent's log: ``--log FILE`` (its last 8 MiB), else
                       ``journalctl -u fabric-agent`` when the journal has it
``agent/agent.conf``   /etc/l3fabric/agent.conf (``--agent-conf``)
``agent/readyz.txt``   ``/readyz``, ``/livez`` and ``/metrics`` of ``--metrics-addr``
``etcd/*.json``        the NodeStatus and Node of this node, its WorkloadEndpoints and block
                       affinities, every resource under ``config/``, the schema version
``dataplane/*.txt``    ``nft list ruleset``, ``iptables-save``, ``ip6tables-save``, ``ipset
                       list``, ``ip addr``/``link``/``rule``/``neigh``, ``ip route`` and
                       ``ip -6 route`` (all tables), forwarding sysctls
``bgp/*``              ExaBGP's configuration and the tail of its log (the agent's workdir:
                       ``<socket dir>/bgp-<node>/``), BGP TCP sessions (``ss``)
=====================  ==========================================================================

Secrets never enter the tarball: every text is passed through `Redactor`, which replaces
each secret value found in etcd's configuration and agent.conf (BGP passwords, anything
under a key named like a password, secret or token), and what looks like one in any file
(``md5-password "…"``, BIRD's ``password "…"``, FRR's ``password …``, PEM private keys).
TLS key files are named by path in agent.conf and never read. The tarball is written
mode 0600 all the same: logs and addresses are an operator's business.

A collector that fails (etcd down, no nft, agent not running) is recorded in
``commands.txt`` or the file it would have written, and the rest goes on: diagnostics
are wanted most when something is broken. The exit code is 1 only if the tarball could
not be written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datastore import keys
from datastore.client import Datastore
from datastore.version import l3fabric_version
from fabricctl.common import CliError, run
from fabricctl.config import parse_env_file
from fabricctl.install_cmd import CONF_PATH, DEFAULT_SOCKET, UNIT_NAME

REDACTED = "<redacted>"
LOG_TAIL_BYTES = 8 << 20
COMMAND_TIMEOUT = 30.0
_SECRET_NAME = re.compile(r"pass(word|phrase)?|secret|token|private.?key", re.I)
#: Secrets by their syntax, for text that names no value we know (a ToR's or ExaBGP's
#: configuration, a log line quoting one): what matches becomes the replacement.
_SECRET_SYNTAX = [
    # ExaBGP md5-, BIRD: the quoted string whole, backslash escapes (``\"``) included; one
    # left open on its line (a lone backslash before the quote) is replaced to the line's end.
    (re.compile(r'(\bpassword\s+)"(?:[^"\\\n]|\\.)*(?:"|$)', re.M), rf'\1"{REDACTED}"'),
    (re.compile(r"(\bneighbor\s+\S+\s+password\s+)\S+"), rf"\1{REDACTED}"),  # FRR
    (re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----).*?(-----END [A-Z ]*PRIVATE KEY-----)",
                re.S), rf"\1\n{REDACTED}\n\2"),
]


class Redactor:
    """Replaces known secret values and secret-looking syntax in text and JSON values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: set[str] = {s for s in secrets if s}

    def learn(self, obj: Any) -> None:
        """Remember every string under a secret-named key of ``obj`` (nested JSON)."""
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if isinstance(v, str) and _SECRET_NAME.search(str(k)):
                    self.secrets.add(v)
                else:
                    self.learn(v)
        elif isinstance(obj, list):
            for v in obj:
                self.learn(v)

    def value(self, obj: Any) -> Any:
        """``obj`` with every value under a secret-named key replaced."""
        if isinstance(obj, Mapping):
            return {k: REDACTED if _SECRET_NAME.search(str(k)) and v not in (None, "")
                    else self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        return obj

    def text(self, text: str) -> str:
        # Longest first, so a secret containing another is replaced whole.
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, REDACTED)
        for rx, replacement in _SECRET_SYNTAX:
            text = rx.sub(replacement, text)
        return text


@dataclass
class Bundle:
    """The files of the tarball (name -> text), each redacted as it is added."""

    redactor: Redactor
    netns: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def add(self, name: str, text: str) -> None:
        self.files[name] = self.redactor.text(text)

    def run(self, name: str | None, argv: list[str], in_netns: bool = True) -> str | None:
        """Run ``argv`` (inside the node's namespace if ``in_netns``); its stdout goes to
        ``name``; the command and its outcome to commands.txt. None if it failed."""
        full = (["ip", "netns", "exec", self.netns, *argv] if in_netns and self.netns
                else argv)
        shown = " ".join(full)
        if shutil.which(argv[0]) is None:
            self.commands.append(f"{shown}\n  skipped: {argv[0]} is not installed")
            return None
        try:
            r = subprocess.run(full, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                               errors="replace")
        except subprocess.TimeoutExpired:
            self.commands.append(f"{shown}\n  timed out after {COMMAND_TIMEOUT:.0f} s")
            return None
        line = f"{shown}\n  exit {r.returncode}"
        if r.stderr.strip():
            line += "; stderr: " + r.stderr.strip()[:500].replace("\n", "\n    ")
        self.commands.append(line)
        if name is not None:
            self.add(name, r.stdout if r.returncode == 0 or r.stdout else
                     f"(failed: exit {r.returncode}) {r.stderr}")
        if r.returncode != 0:
            return None
        return r.stdout or r.stderr  # some print their version on stderr (bird)

    def write(self, path: Path, top: str) -> None:
        """A gzipped tar of every file under ``top/``, created mode 0600."""
        files = {**self.files, "commands.txt": "\n".join(self.commands) + "\n"}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        now = time.time()
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name in sorted(files):
                data = files[name].encode()
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o600, int(now)
                tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class Target:
    """Where this node's agent lives: from the flags, else its agent.conf."""

    node: str
    netns: str | None
    socket: str
    metrics_addr: str
    log: str | None
    agent_conf: str
    conf_text: str | None  # agent.conf's text, None if unreadable

    @property
    def bgp_workdir(self) -> Path:
        return Path(self.socket).parent / f"bgp-{self.node}"


def target_from_args(args: argparse.Namespace) -> Target:
    conf_text: str | None = None
    conf: dict[str, str] = {}
    with contextlib.suppress(OSError):
        conf_text = Path(args.agent_conf).read_text()
        conf = parse_env_file(conf_text)
    node = args.node or conf.get("L3FABRIC_NODE") or socket.gethostname().split(".")[0]
    return Target(node=node, netns=args.netns or conf.get("L3FABRIC_NETNS"),
                  socket=args.socket or conf.get("L3FABRIC_SOCKET", DEFAULT_SOCKET),
                  metrics_addr=args.metrics_addr or conf.get("L3FABRIC_METRICS_ADDR",
                                                             "127.0.0.1:9091"),
                  log=args.log, agent_conf=args.agent_conf, conf_text=conf_text)


# -- collectors ---------------------------------------------------------------------------

def collect_etcd(args: argparse.Namespace, t: Target, b: Bundle) -> None:
    """etcd's view of the node and the configuration. Read first: it teaches the redactor
    the secrets every later file is cleaned of."""

    async def read(ds: Datastore) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, prefix, one in [
                ("config", keys.full("config/"), False),
                ("nodestatus", keys.node_status(t.node), True),
                ("node", keys.node(t.node), True),
                ("workloads", keys.workloads_of(t.node), False),
                ("affinities", keys.ipam_affinities_of(t.node), False),
                ("schema", keys.full(keys.SCHEMA_VERSION), True)]:
            if one:
                kv = await ds.get(prefix)
                out[name] = _decode(kv.value) if kv is not None else None
            else:
                kvs, _ = await ds.list(prefix)
                out[name] = {keys.relative(kv.key): _decode(kv.value) for kv in kvs}
        return out

    try:
        got = run(args, read)
    except CliError as e:
        b.commands.append(f"etcd {args.etcd_endpoints}\n  failed: {e}")
        b.add("etcd/ERROR.txt", f"etcd could not be read: {e}\n")
        return
    b.commands.append(f"etcd {args.etcd_endpoints}\n  read")
    b.redactor.learn(got)
    for name, value in got.items():
        b.add(f"etcd/{name}.json", json.dumps(b.redactor.value(value), indent=2) + "\n")


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def collect_agent(t: Target, b: Bundle) -> None:
    if t.conf_text is not None:
        conf = parse_env_file(t.conf_text)
        b.redactor.learn({k: v for k, v in conf.items()})
        b.add("agent/agent.conf", t.conf_text)
    else:
        b.add("agent/agent.conf", f"({t.agent_conf} not readable: not installed by "
                                  "install-agent, or not root)\n")
    if t.log:
        try:
            with open(t.log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
                b.add("agent/agent.log", f.read().decode(errors="replace"))
            b.commands.append(f"read {t.log}")
        except OSError as e:
            b.add("agent/agent.log", f"({t.log}: {e.strerror})\n")
    elif shutil.which("journalctl") and os.path.isdir("/run/systemd/system"):
        b.run("agent/agent.log", ["journalctl", "-u", UNIT_NAME, "--no-pager", "-o",
                                  "short-iso-precise", "-n", "50000"], in_netns=False)
    else:
        b.add("agent/agent.log", "(no --log FILE given and no systemd journal here: pass "
                                 "the file the agent's stderr goes to)\n")
    http = []
    for path in ("/readyz", "/livez"):
        http.append(f"GET {path}: {_http_get(t, path)}")
    b.add("agent/readyz.txt", "\n".join(http) + "\n")
    b.add("agent/metrics.txt", _http_get(t, "/metrics"))


def _http_get(t: Target, path: str) -> str:
    url = f"http://{t.metrics_addr}{path}"

    def get() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return f"{r.status}\n{r.read().decode(errors='replace')}"
        except urllib.error.HTTPError as e:
            return f"{e.code}\n{e.read().decode(errors='replace')}"
        except OSError as e:
            return f"(no answer from {url}: {e})"

    if t.netns is None:
        return get()
    from felix_like.netlink import run_in_netns  # setns in a thread; pyroute2 only here

    try:
        return run_in_netns(t.netns, get)
    except OSError as e:
        return f"(namespace {t.netns}: {e})"


def collect_dataplane(b: Bundle) -> None:
    b.run("dataplane/nft-ruleset.txt", ["nft", "list", "ruleset"])
    b.run("dataplane/iptables-save.txt", ["iptables-save"])
    b.run("dataplane/ip6tables-save.txt", ["ip6tables-save"])
    b.run("dataplane/ipset.txt", ["ipset", "list"])
    b.run("dataplane/ip-addr.txt", ["ip", "-d", "addr", "show"])
    b.run("dataplane/ip-link.txt", ["ip", "-s", "link", "show"])
    b.run("dataplane/ip-route.txt", ["ip", "route", "show", "table", "all"])
    b.run("dataplane/ip-6-route.txt", ["ip", "-6", "route", "show", "table", "all"])
    b.run("dataplane/ip-rule.txt", ["ip", "rule", "show"])
    b.run("dataplane/ip-neigh.txt", ["ip", "neigh", "show"])
    b.run("dataplane/sysctl-forwarding.txt",
          ["sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"])


def collect_bgp(t: Target, b: Bundle) -> None:
    wd = t.bgp_workdir
    for name, tail in (("exabgp.conf", 0), ("exabgp.log", LOG_TAIL_BYTES), ("exabgp.pid", 0)):
        try:
            data = (wd / name).read_bytes()
        except OSError as e:
            b.add(f"bgp/{name}", f"({wd / name}: {e.strerror})\n")
            continue
        b.add(f"bgp/{name}", data[-tail:].decode(errors="replace") if tail
              else data.decode(errors="replace"))
    b.run("bgp/sessions.txt", ["ss", "-tnpi", "state", "all", "( sport = :179 or "
                               "dport = :179 )"])


def collect_versions(t: Target, b: Bundle) -> None:
    lines = [f"l3fabric {l3fabric_version()}", f"python {sys.version.split()[0]}",
             f"kernel {platform.release()} ({platform.machine()})"]
    from bgp.controller import default_exabgp  # the one the agent runs

    for argv in ([default_exabgp(), "version"], ["nft", "--version"],
                 ["iptables", "--version"], ["bird", "--version"]):
        out = b.run(None, argv, in_netns=False)
        if out:
            lines.append(out.strip().splitlines()[0])
    b.add("version.txt", "\n".join(lines) + "\n")


def collect(args: argparse.Namespace, t: Target) -> Bundle:
    b = Bundle(Redactor(), netns=t.netns)
    collect_etcd(args, t, b)
    collect_agent(t, b)  # agent.conf's secrets are learned before anything else is read
    collect_versions(t, b)
    collect_dataplane(b)
    collect_bgp(t, b)
    b.add("README.txt", "\n".join([
        f"l3fabric diagnostics of node {t.node}",
        f"taken {datetime.now(UTC).isoformat(timespec='seconds')} on "
        f"{socket.gethostname()} by fabricctl {l3fabric_version()}",
        f"network namespace: {t.netns or 'the host'}; agent socket: {t.socket}; "
        f"metrics: {t.metrics_addr}; log: {t.log or 'journal'}",
        "passwords, secrets and private keys are replaced by " + REDACTED,
        "commands.txt lists what was run and what failed", ""]))
    # Files added before a later secret was learned are cleaned again.
    b.files = {k: b.redactor.text(v) for k, v in b.files.items()}
    return b


# -- command line ---------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diags", help="write a tarball of this node's diagnostics for a bug report",
        description="Collect the agent's log, its NodeStatus and configuration from etcd, "
                    "the ruleset, routes, BGP state and ExaBGP's configuration of this "
                    "node into one .tar.gz, with passwords and keys removed. Run as root "
                    "on the node.")
    p.add_argument("--node", default=None,
                   help="the node (default: L3FABRIC_NODE in agent.conf, else the host name)")
    p.add_argument("--agent-conf", default=CONF_PATH, metavar="FILE",
                   help=f"the agent's settings (default {CONF_PATH})")
    p.add_argument("--netns", default=None,
                   help="the namespace the agent programs (default: agent.conf's, else the "
                        "host's)")
    p.add_argument("--socket", default=None, metavar="PATH",
                   help="the agent's CNI socket; ExaBGP's files are beside it (default: "
                        f"agent.conf's, else {DEFAULT_SOCKET})")
    p.add_argument("--metrics-addr", default=None, metavar="HOST:PORT",
                   help="the agent's /metrics and /readyz (default: agent.conf's, else "
                        "127.0.0.1:9091)")
    p.add_argument("--log", default=None, metavar="FILE",
                   help="the file the agent logs to (default: the systemd journal)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="the tarball (default ./l3fabric-diags-<node>-<time>.tar.gz)")
    p.set_defaults(func=cmd_diags)


def cmd_diags(args: argparse.Namespace) -> int:
    t = target_from_args(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    top = f"l3fabric-diags-{t.node}-{stamp}"
    out = Path(args.output or f"{top}.tar.gz")
    b = collect(args, t)
    try:
        b.write(out, top)
    except OSError as e:
        raise CliError(f"--output: {out}: {e.strerror or e}") from e
    failed = sum(1 for c in b.commands if "\n  exit 0" not in c and "\n  read" not in c)
    print(str(out))
    print(f"fabricctl: {len(b.files) + 1} files; {failed} collector(s) failed or skipped "
          "(see commands.txt)", file=sys.stderr)
    return 0
