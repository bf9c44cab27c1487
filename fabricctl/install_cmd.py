"""``fabricctl install-agent`` and ``fabricctl uninstall``: put l3fabric on a host, take it off.

Owned files (paths relative to ``--root``, ``/`` by default; ``--root`` works like
``DESTDIR`` for images and tests):

==========================================  ======  ============================================
``/etc/systemd/system/fabric-agent.service``  0644  the unit (see `render_unit` for why each line)
``/etc/l3fabric/agent.conf``                  0600  ``EnvironmentFile``: ``L3FABRIC_<FLAG>=value``
                                              /0644  (0600 whenever it names a TLS key)
``<cni bin dir>/l3fabric``, ``l3fabric-ipam``  0755  the CNI shims (`cni.shim.write_executable`)
``<cni conf dir>/10-l3fabric.conflist``       0644  the network config (docs/architecture.md §10)
==========================================  ======  ============================================

The shims run with ``--python`` or, by default, what `cni.shim.pick_interpreter` checks and
picks on this host (also with ``--root``): the distribution's ``/usr/bin/python3`` when it
runs them, as it starts fastest, else the Python fabricctl runs in.

The agent reads its flags from the environment (``fabric-agent`` maps ``--flag`` to
``L3FABRIC_FLAG``), so the unit has a bare ``ExecStart`` and everything host-specific is in
``agent.conf``; changing an endpoint is an edit and a restart. Two more variables in that
file, ``L3FABRIC_CNI_BIN_DIR`` and ``L3FABRIC_CNI_CONF_DIR``, are not agent flags: they
tell ``uninstall`` where the CNI files went. TLS files are referenced, never copied: they
belong to the operator.

``uninstall`` order (also in docs/install.md), chosen so that no pod is half-wired:

1. remove the conflist, so the runtime stops creating l3fabric pods;
2. stop and disable the service, then kill what is left in its cgroup (ExaBGP, which
   ``KillMode=process`` deliberately leaves running across restarts) — only on the live
   system (``--root /``) with systemd running; otherwise the agent must already be stopped,
   and a live agent socket is refused;
3. the agent cleanup (`felix_like.cleanup.cleanup`): our routes, ``fab*`` veths, the
   nftables table, the socket — in the namespace the agent programmed (``L3FABRIC_NETNS``);
4. remove the CNI executables, the unit, ``agent.conf`` and the ``rt_protos.d`` names.

etcd is not touched: the Node, its blocks and affinities are cluster state
(``fabricctl delete node NAME``, then ``fabricctl ipam check --fix``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cni.shim import pick_interpreter
from fabricctl.cni_cmd import conflist
from fabricctl.common import CliError
from fabricctl.config import parse_env_file  # the inverse of render_agent_conf

UNIT_PATH = "/etc/systemd/system/fabric-agent.service"
UNIT_NAME = "fabric-agent.service"
CONF_PATH = "/etc/l3fabric/agent.conf"
RT_PROTOS_PATH = "/etc/iproute2/rt_protos.d/l3fabric.conf"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_SOCKET = "/run/l3fabric/agent.sock"
CONFLIST_NAME = "10-l3fabric.conflist"  # install-cni's name for network "l3fabric"
PLUGINS = (("l3fabric", "plugin"), ("l3fabric-ipam", "ipam"))

#: Capabilities the agent (and the ExaBGP it starts) needs, and why.
#: The unit's start timeout and watchdog period (seconds); see `render_unit`.
START_TIMEOUT = 300
WATCHDOG_SEC = 30

CAPABILITIES = {
    "CAP_NET_ADMIN": "routes, links, sysctls under net, nftables/iptables/ipset",
    "CAP_NET_RAW": "iptables and ipset (raw sockets), ICMP checks",
    "CAP_SYS_ADMIN": "setns() into pod and node network namespaces",
    "CAP_SYS_PTRACE": "open /proc/PID/ns/net of a pod process (CNI_NETNS from some runtimes)",
    "CAP_NET_BIND_SERVICE": "ExaBGP listening on TCP port 179",
}


@dataclass(frozen=True)
class PlannedFile:
    path: str  # absolute path on the target host (without --root)
    content: str
    mode: int


# -- rendering (pure) ---------------------------------------------------------------------------

def _env_value(value: str) -> str:
    """One value in systemd ``EnvironmentFile`` syntax (double quotes when needed)."""
    if any(c in value for c in "\n\r\0"):
        raise CliError(f"value {value!r} may not contain a newline", usage=True)
    if value and all(c.isalnum() or c in "/.:,_-+@=[]%" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_agent_conf(env: Mapping[str, str]) -> str:
    lines = [
        "# l3fabric node agent: read by fabric-agent.service (EnvironmentFile=).",
        "# Written by `fabricctl install-agent`; one L3FABRIC_<FLAG>=value per line, where",
        "# <FLAG> is a `fabric-agent --help` flag. Edit, then `systemctl restart fabric-agent`.",
        "# L3FABRIC_CNI_* are not agent flags: `fabricctl uninstall` reads them.",
    ]
    lines += [f"{k}={_env_value(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def render_unit(exec_start: str) -> str:
    """The systemd unit. ``exec_start`` is the absolute path of ``fabric-agent``."""
    if not os.path.isabs(exec_start):
        raise CliError(f"the agent executable must be an absolute path, not {exec_start!r}",
                       usage=True)
    exe = f'"{exec_start}"' if any(c.isspace() for c in exec_start) else exec_start
    caps = " ".join(CAPABILITIES)
    why = "\n".join(f"#   {c}: {w}" for c, w in CAPABILITIES.items())
    return f"""\
# l3fabric node agent. Written by `fabricctl install-agent`; host settings live in
# {CONF_PATH}. See docs/install.md.
[Unit]
Description=l3fabric node agent (pod routes, policy, CNI, BGP)
# BGP needs the node's addresses and routes to the ToR: start once the network is up.
Wants=network-online.target
After=network-online.target
# When etcd runs on this host (small clusters), start after it; harmless otherwise.
After=etcd.service
# Never give up restarting (the default rate limit would leave the node unmanaged).
StartLimitIntervalSec=0

[Service]
# The agent sends READY=1 after its first in-sync apply (pod routes and policy programmed
# from a complete etcd snapshot), so units ordered after it start with pods routable;
# `systemctl status` shows what start-up waits for (STATUS=). Only the agent, the main
# process, may notify: ExaBGP shares the cgroup but not the unit's state.
Type=notify
NotifyAccess=main
# Start-up waits for etcd; a restart cannot bring etcd back, but one stuck otherwise is
# restarted after this long (the dataplane is kept across the restart).
TimeoutStartSec={START_TIMEOUT}
# The agent pings from its event loop every half period once ready: a loop that hangs
# gets the agent restarted (and only the agent, see KillMode).
WatchdogSec={WATCHDOG_SEC}
EnvironmentFile={CONF_PATH}
ExecStart={exe}
# Restart whatever the cause: pods keep their routes meanwhile (the dataplane is only
# resynced, never flushed, on start), and CNI calls get "try again later" (code 11).
Restart=always
RestartSec=2
# ExaBGP runs in its own session and must outlive the agent so that an agent restart or
# upgrade does not reset BGP sessions (docs/architecture.md §2). A new session does not
# take it out of the unit's cgroup: with the default KillMode=control-group systemd would
# kill it together with the agent on every stop, restart and watchdog timeout, and each
# would reset every BGP session; `process` stops only the agent, whose successor adopts
# the running ExaBGP. On a final stop, `fabricctl uninstall` kills what is left.
KillMode=process
TimeoutStopSec=30
# /run/l3fabric holds the CNI socket; keep it across restarts (the shims' path).
RuntimeDirectory=l3fabric
RuntimeDirectoryPreserve=yes
# Runs as root (it writes /proc/sys/net/* and /etc/iproute2/rt_protos.d), with only the
# capabilities it needs:
{why}
CapabilityBoundingSet={caps}
AmbientCapabilities={caps}
NoNewPrivileges=yes
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def render_conflist(socket_path: str, mtu: int = 0) -> str:
    """The network config of docs/architecture.md §10 (``mtu: 0``: the uplink's), exactly as
    ``fabricctl install-cni`` writes it."""
    return json.dumps(conflist("l3fabric", socket_path, mtu), indent=2) + "\n"


def render_plugin(which: str, python: str) -> str:
    """The text `cni.shim.write_executable` writes (rendered in a scratch directory)."""
    from cni.shim import write_executable

    with tempfile.TemporaryDirectory(prefix="l3fabric-shim-") as d:
        dest = Path(d) / "shim"
        write_executable(dest, which, python)
        return dest.read_text()


@dataclass(frozen=True)
class InstallSettings:
    node: str
    etcd_endpoints: str
    agent_bin: str
    python: str
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    metrics_addr: str | None = None
    policy_backend: str | None = None
    socket: str = DEFAULT_SOCKET
    node_ip: str | None = None
    node_ip6: str | None = None
    netns: str | None = None
    log_level: str | None = None
    cni: bool = True
    cni_bin_dir: str = DEFAULT_CNI_BIN_DIR
    cni_conf_dir: str = DEFAULT_CNI_CONF_DIR
    mtu: int = 0

    def agent_env(self) -> dict[str, str]:
        pairs: list[tuple[str, str | None]] = [
            ("NODE", self.node), ("ETCD_ENDPOINTS", self.etcd_endpoints),
            ("ETCD_CA", self.etcd_ca), ("ETCD_CERT", self.etcd_cert),
            ("ETCD_KEY", self.etcd_key), ("SOCKET", self.socket),
            ("METRICS_ADDR", self.metrics_addr), ("POLICY_BACKEND", self.policy_backend),
            ("NODE_IP", self.node_ip), ("NODE_IP6", self.node_ip6), ("NETNS", self.netns),
            ("LOG_LEVEL", self.log_level),
        ]
        if self.cni:
            pairs += [("CNI_BIN_DIR", self.cni_bin_dir), ("CNI_CONF_DIR", self.cni_conf_dir)]
        return {f"L3FABRIC_{k}": v for k, v in pairs if v}


def plan_install(s: InstallSettings) -> list[PlannedFile]:
    env = s.agent_env()
    secret = s.etcd_key is not None
    files = [
        PlannedFile(UNIT_PATH, render_unit(s.agent_bin), 0o644),
        PlannedFile(CONF_PATH, render_agent_conf(env), 0o600 if secret else 0o644),
    ]
    if s.cni:
        for name, which in PLUGINS:
            files.append(PlannedFile(os.path.join(s.cni_bin_dir, name),
                                     render_plugin(which, s.python), 0o755))
        files.append(PlannedFile(os.path.join(s.cni_conf_dir, CONFLIST_NAME),
                                 render_conflist(s.socket, s.mtu), 0o644))
    return files


# -- file system ------------------------------------------------------------------------------

def under(root: str, path: str) -> Path:
    """``path`` (absolute on the target host) inside ``root``."""
    return Path(root) / path.lstrip("/")


def write_file(dest: Path, content: str, mode: int) -> None:
    """Atomically replace ``dest``; the temporary file has ``mode`` from its creation, so a
    secret is never readable by others, not even for a moment."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, mode)  # umask may have cut bits we asked for
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _systemd_running(root: str) -> bool:
    return os.path.realpath(root) == "/" and os.path.isdir("/run/systemd/system")


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True)


# -- install-agent ----------------------------------------------------------------------------

def _default_agent_bin() -> str:
    here = Path(sys.executable).with_name("fabric-agent")
    if here.exists():
        return str(here)
    found = shutil.which("fabric-agent")
    return os.path.abspath(found) if found else str(here)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = os.environ.get
    p = sub.add_parser(
        "install-agent", help="install fabric-agent as a systemd service, with the CNI plugin",
        description="Write the fabric-agent systemd unit, /etc/l3fabric/agent.conf and the "
                    "CNI plugin and conflist. --dry-run prints every file instead.")
    p.add_argument("--dry-run", action="store_true", help="print the files, write nothing")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="install below DIR instead of / (like DESTDIR; for images and tests)")
    p.add_argument("--node", required=True, help="this node's name")
    # The global flags, repeated so that they also work after the sub-command; SUPPRESS
    # keeps the global value when they are not given here.
    p.add_argument("--etcd-endpoints", default=argparse.SUPPRESS,
                   help="comma-separated etcd URLs (default: the global flag)")
    for f in ("ca", "cert", "key"):
        p.add_argument(f"--etcd-{f}", default=argparse.SUPPRESS, metavar="FILE",
                       help=f"TLS {f} file, as a path on the host (referenced, not copied)")
    p.add_argument("--metrics-addr", default=None, metavar="HOST:PORT",
                   help="the agent's /metrics, /livez, /readyz (agent default 127.0.0.1:9091)")
    p.add_argument("--policy-backend", choices=["nftables", "iptables"], default=None,
                   help="the agent's policy dataplane (default: the agent's, nftables)")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's CNI socket")
    p.add_argument("--node-ip", default=None, metavar="CIDR",
                   help="the node's BGP address if the agent must register the Node")
    p.add_argument("--node-ip6", default=None, metavar="CIDR",
                   help="the node's IPv6 next hop (bgp.ipv6Address) if the agent registers it")
    p.add_argument("--netns", default=None,
                   help="the agent programs this network namespace (labs, tests)")
    p.add_argument("--log-level", default=None,
                   help="the agent's log level: debug, info, warning (default info)")
    p.add_argument("--agent-bin", default=None,
                   help="absolute path of fabric-agent (default: next to this fabricctl)")
    p.add_argument("--python", default=None,
                   help="absolute interpreter for the CNI shims (default: /usr/bin/python3 "
                        "if it runs them, it starts fastest; else this one)")
    p.add_argument("--no-cni", dest="cni", action="store_false",
                   help="do not install the CNI plugin and conflist")
    p.add_argument("--cni-bin-dir", default=env("L3FABRIC_CNI_BIN_DIR", DEFAULT_CNI_BIN_DIR),
                   help=f"where the CNI plugins go (default {DEFAULT_CNI_BIN_DIR})")
    p.add_argument("--cni-conf-dir", default=env("L3FABRIC_CNI_CONF_DIR",
                                                 DEFAULT_CNI_CONF_DIR),
                   help=f"where the conflist goes (default {DEFAULT_CNI_CONF_DIR})")
    p.add_argument("--mtu", type=int, default=0, help="pod MTU; 0 = the uplink's (default)")
    p.add_argument("--start", action="store_true",
                   help="then `systemctl daemon-reload` and `enable --now` (live system only)")
    p.set_defaults(func=cmd_install_agent)

    u = sub.add_parser(
        "uninstall", help="remove l3fabric from this host (agent cleanup, CNI files, unit)",
        description="Remove the conflist, stop the agent, remove its routes, veths and "
                    "nftables table, then the CNI executables, the unit and agent.conf.")
    u.add_argument("--root", default="/", metavar="DIR",
                   help="the installation's root, as given to install-agent (default /)")
    u.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    u.add_argument("--netns", default=None,
                   help="clean this namespace (default: L3FABRIC_NETNS from agent.conf)")
    u.set_defaults(func=cmd_uninstall)


def settings_from_args(args: argparse.Namespace) -> InstallSettings:
    if args.mtu and not 68 <= args.mtu <= 65535:
        raise CliError("--mtu must be 0 (the uplink's) or between 68 and 65535", usage=True)
    agent_bin = args.agent_bin or _default_agent_bin()
    for what, path in (("--agent-bin", agent_bin), ("--python", args.python)):
        if path is not None and not os.path.isabs(path):
            raise CliError(f"{what} must be an absolute path, not {path!r}", usage=True)
    python = args.python
    if python is None:  # checked only when the shims are written
        python = pick_interpreter() if args.cni else sys.executable
    return InstallSettings(
        node=args.node, etcd_endpoints=args.etcd_endpoints, agent_bin=agent_bin,
        python=python, etcd_ca=args.etcd_ca, etcd_cert=args.etcd_cert,
        etcd_key=args.etcd_key, metrics_addr=args.metrics_addr,
        policy_backend=args.policy_backend, socket=args.socket, node_ip=args.node_ip,
        node_ip6=args.node_ip6, netns=args.netns, log_level=args.log_level, cni=args.cni,
        cni_bin_dir=args.cni_bin_dir, cni_conf_dir=args.cni_conf_dir, mtu=args.mtu)


def cmd_install_agent(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    files = plan_install(s)
    if args.dry_run:
        for f in files:
            sys.stdout.write(f"# ---- {under(args.root, f.path)} (mode {f.mode:04o})\n")
            sys.stdout.write(f.content)
        return 0
    for tls in (s.etcd_ca, s.etcd_cert, s.etcd_key):
        if tls and not under(args.root, tls).exists() and not Path(tls).exists():
            print(f"fabricctl: warning: {tls} does not exist (yet); the agent will fail "
                  f"to connect until it does", file=sys.stderr)
    if not os.path.exists(s.agent_bin):
        print(f"fabricctl: warning: {s.agent_bin} does not exist; the unit will fail "
              f"to start", file=sys.stderr)
    for f in files:
        write_file(under(args.root, f.path), f.content, f.mode)
        print(f"wrote {under(args.root, f.path)}")
    live = _systemd_running(args.root)
    if args.start and live:
        print(f"starting {UNIT_NAME} (Type=notify: returns once the agent is in sync)",
              flush=True)
        for cmd in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
            r = _systemctl(*cmd)
            if r.returncode != 0:
                raise CliError(f"systemctl {' '.join(cmd)}: {r.stderr.strip()}")
        print(f"started {UNIT_NAME}")
    elif args.start:
        raise CliError("--start: systemd is not running here (or --root is not /); "
                       "files were written, start the agent yourself")
    else:
        print(f"next: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    return 0


# -- uninstall --------------------------------------------------------------------------------

def _socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Step:
    what: str
    paths: tuple[str, ...] = ()  # absolute, already under --root


def plan_uninstall(root: str, conf: Mapping[str, str]) -> list[Step]:
    """What `cmd_uninstall` does, in order (also printed by ``--dry-run``)."""
    bin_dir = conf.get("L3FABRIC_CNI_BIN_DIR", DEFAULT_CNI_BIN_DIR)
    conf_dir = conf.get("L3FABRIC_CNI_CONF_DIR", DEFAULT_CNI_CONF_DIR)
    netns = conf.get("L3FABRIC_NETNS")
    sock = conf.get("L3FABRIC_SOCKET", DEFAULT_SOCKET)
    steps = [
        Step("remove the CNI network config (no new l3fabric pods)",
             (str(under(root, os.path.join(conf_dir, CONFLIST_NAME))),)),
        Step(f"stop and disable {UNIT_NAME}, kill what is left in its cgroup (ExaBGP)"
             if _systemd_running(root) else
             f"check that fabric-agent is stopped (its socket {sock} must not answer)"),
        Step("agent cleanup: l3fabric routes, fab* veths, nft table inet l3fabric, socket, "
             + (f"in namespace {netns}" if netns else "in this host's namespace")
             if netns or os.path.realpath(root) == "/" else
             "agent cleanup: skipped (--root is not / and no namespace is named)"),
        Step("remove the CNI executables",
             tuple(str(under(root, os.path.join(bin_dir, n))) for n, _ in PLUGINS)),
        Step("remove the unit, agent.conf and the route protocol names",
             (str(under(root, UNIT_PATH)), str(under(root, CONF_PATH)),
              str(under(root, RT_PROTOS_PATH)))),
    ]
    return steps


def _remove(paths: Iterable[str]) -> list[str]:
    gone = []
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
            gone.append(p)
    return gone


def cmd_uninstall(args: argparse.Namespace) -> int:
    root = args.root
    conf_file = under(root, CONF_PATH)
    try:
        conf = parse_env_file(conf_file.read_text())
    except FileNotFoundError:
        conf = {}
        print(f"fabricctl: warning: {conf_file} is missing; using the default paths",
              file=sys.stderr)
    if args.netns:
        conf["L3FABRIC_NETNS"] = args.netns
    steps = plan_uninstall(root, conf)
    if args.dry_run:
        for i, st in enumerate(steps, 1):
            print(f"{i}. {st.what}")
            for p in st.paths:
                print(f"   {p}")
        return 0
    sock = conf.get("L3FABRIC_SOCKET", DEFAULT_SOCKET)
    netns = conf.get("L3FABRIC_NETNS")
    live = _systemd_running(root)
    if not live and _socket_answers(sock):
        raise CliError(f"fabric-agent is still running (its socket {sock} answers): stop it "
                       f"first, then run uninstall again")

    # 1. no new pods
    for p in _remove(steps[0].paths):
        print(f"removed {p}")
    # 2. stop the agent and ExaBGP
    if live:
        _systemctl("disable", "--now", UNIT_NAME)
        _systemctl("kill", "--kill-who=all", "--signal=SIGTERM", UNIT_NAME)
        print(f"stopped {UNIT_NAME}")
    # 3. the dataplane
    if netns is None and os.path.realpath(root) != "/":
        # A --root install is an image or a test: the dataplane of the host running this
        # command is not the one that agent programmed.
        print("agent cleanup: skipped (--root is not / and no namespace is named)")
    else:
        from felix_like.cleanup import cleanup

        try:
            report = cleanup(netns, sock)
        except FileNotFoundError as e:
            raise CliError(f"agent cleanup: namespace {netns}: {e}") from e
        print(f"agent cleanup: {report}")
    # 4. the files
    for st in steps[3:]:
        for p in _remove(st.paths):
            print(f"removed {p}")
    if live:
        _systemctl("daemon-reload")
    with contextlib.suppress(OSError):  # only when empty: other files are not ours
        under(root, os.path.dirname(CONF_PATH)).rmdir()
    print("etcd still holds this node's Node, blocks and affinities: from any host run "
          f"`fabricctl delete node {conf.get('L3FABRIC_NODE', 'NAME')}` and "
          "`fabricctl ipam check --fix` when the node is gone for good")
    return 0
