"""CNI test helpers: run the real plugin executables, and a real handler + socket server.

`Fabric` is one node's CNI side as the agent has it (a `CniHandler` behind a `CniServer`
on a unix socket, IPAM on a real etcd, the node given as a network namespace), without
the rest of the agent. Plugins are exec'd as runtimes do: environment + stdin, through
``asyncio`` subprocesses so the event loop keeps serving the socket meanwhile.

`run_conflist` applies libcni's semantics to a conflist (per-plugin config with ``name``
and ``cniVersion`` injected, ``runtimeConfig`` for declared capabilities, ``prevResult``
threaded through ADD/CHECK, DEL in reverse order), so chains with the reference plugins
(portmap, ptp) run without cnitool. Reference plugins that program the node (ptp,
portmap) are run inside the node namespace with ``nsenter``, never in the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.shim import pick_interpreter, write_executable
from datastore import keys
from datastore import model as m
from datastore.client import Datastore, EtcdConfig
from felix_like.cni_handler import CniHandler, EndpointSink
from felix_like.cni_server import CniServer
from felix_like.metrics import Metrics
from ipam.allocator import IpamClient

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
REFERENCE_DIR = Path("/usr/lib/cni")
NETNS_DIR = "/var/run/netns"


def ns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


@dataclass
class CniRun:
    """One plugin exec: exit status, stdout, stderr, and stdout decoded when it is JSON."""

    exit: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def code(self) -> int | None:
        obj = self.json
        return obj.get("code") if isinstance(obj, dict) else None

    def ok(self) -> CniRun:
        assert self.exit == 0, f"plugin failed ({self.exit}): {self.stdout} {self.stderr}"
        return self


def cni_env(command: str, *, container_id: str | None = "c1", netns: str | None = None,
            ifname: str | None = "eth0", args: str | None = None,
            cni_path: Sequence[str | os.PathLike[str]] = (), cap_args: Any = None,
            drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment a runtime gives a plugin; None leaves a variable out."""
    env = {"CNI_COMMAND": command, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for name, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns),
                        ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
        if value is not None:
            env[name] = value
    if cni_path:
        env["CNI_PATH"] = ":".join(str(p) for p in cni_path)
    if cap_args is not None:
        env["CAP_ARGS"] = json.dumps(cap_args)
    for name in drop:
        env.pop(name, None)
    return env


async def exec_plugin(exe: str | os.PathLike[str], env: Mapping[str, str],
                      stdin: str | Mapping[str, Any], *, node_ns: str | None = None,
                      timeout: float = 60) -> CniRun:
    """Exec a plugin with ``env`` and ``stdin``; inside ``node_ns`` when given (nsenter)."""
    data = stdin if isinstance(stdin, str) else json.dumps(stdin)
    argv = [str(exe)]
    if node_ns is not None:
        argv = ["nsenter", f"--net={ns_path(node_ns)}", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(data.encode()), timeout)
    assert proc.returncode is not None
    return CniRun(proc.returncode, out.decode(), err.decode())


@functools.cache
def _shim_python() -> str:
    """The interpreter install-cni would pick (checked once per test session)."""
    return pick_interpreter()


def write_plugins(bin_dir: Path) -> Path:
    """``l3fabric`` and ``l3fabric-ipam`` shims in ``bin_dir``, as install-cni writes them."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = _shim_python()
    write_executable(bin_dir / "l3fabric", "plugin", python)
    write_executable(bin_dir / "l3fabric-ipam", "ipam", python)
    return bin_dir


def net_conf(version: str = "1.0.0", socket: str = "", name: str = "l3net",
             **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": name, "type": "l3fabric",
                            "ipam": {"type": "l3fabric-ipam"}}
    if socket:
        conf["agentSocket"] = socket
    conf.update(extra)
    return conf


def ippool(name: str, cidr: str, block_size: int, disabled: bool = False) -> m.IPPool:
    return m.IPPool.from_dict({"apiVersion": m.API_VERSION, "kind": "IPPool",
                               "metadata": {"name": name},
                               "spec": {"cidr": cidr, "blockSize": block_size,
                                        "disabled": disabled}})


class RecordingSink:
    """An EndpointSink that records what it was told (and can be made to fail)."""

    def __init__(self) -> None:
        self.added: dict[str, m.WorkloadEndpoint] = {}
        self.removed: list[str] = []
        self.fail_next = False

    async def endpoint_added(self, key: str, wep: m.WorkloadEndpoint) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("dataplane refused the endpoint (test)")
        self.added[key] = wep

    async def endpoint_removed(self, key: str, addresses: Any = ()) -> None:
        self.removed.append(key)
        self.added.pop(key, None)


@dataclass
class Fabric:
    """One node's CNI service; see the module docstring."""

    node: str  # node name == node namespace name
    ds: Datastore
    ipam: IpamClient
    handler: CniHandler
    server: CniServer
    socket: str
    bin_dir: Path
    sink: RecordingSink
    metrics: Metrics
    network: str = "l3net"
    pods: list[str] = field(default_factory=list)

    def conf(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        return net_conf(version, self.socket, self.network, **extra)

    async def call(self, command: str, conf: Mapping[str, Any] | str, *, exe: str = "",
                   **env: Any) -> CniRun:
        env.setdefault("cni_path", [self.bin_dir, REFERENCE_DIR])
        return await exec_plugin(exe or self.bin_dir / "l3fabric", cni_env(command, **env),
                                 conf)

    async def add(self, pod_ns: str, cid: str, version: str = "1.0.0", *,
                  conf: Mapping[str, Any] | str | None = None, **env: Any) -> CniRun:
        return await self.call("ADD", conf or self.conf(version), container_id=cid,
                               netns=ns_path(pod_ns), **env)

    async def delete(self, pod_ns: str | None, cid: str, version: str = "1.0.0", *,
                     conf: Mapping[str, Any] | None = None, **env: Any) -> CniRun:
        return await self.call("DEL", conf or self.conf(version), container_id=cid,
                               netns=ns_path(pod_ns) if pod_ns else None, **env)

    async def handles(self) -> list[str]:
        kvs, _ = await self.ds.list(keys.full(keys.IPAM_HANDLES))
        return [keys.relative(kv.key)[len(keys.IPAM_HANDLES):] for kv in kvs]

    async def workloads(self) -> dict[str, dict[str, Any]]:
        kvs, _ = await self.ds.list(keys.workloads_of(self.node))
        return {keys.relative(kv.key): json.loads(kv.value) for kv in kvs}

    async def allocated(self) -> list[str]:
        """Every address allocated in any block (who holds it does not matter)."""
        from ipam.block import Block

        kvs, _ = await self.ds.list(keys.full(keys.IPAM_BLOCKS))
        out = []
        for kv in kvs:
            b = Block.from_json(kv.value)
            out += [b.address(o) for o, _ in b.allocated()]
        return sorted(out)


@contextlib.asynccontextmanager
async def fabric(endpoint: str, node_ns: str, tmp: Path, *, pools: Sequence[m.IPPool] = (),
                 dataplane: EndpointSink | None = None,
                 timeout: float = 2.0) -> AsyncIterator[Fabric]:
    """Start a Fabric for node namespace ``node_ns``; pools are written first."""
    ds = Datastore(EtcdConfig.from_strings(endpoint, timeout=timeout))
    await ds.__aenter__()
    server: CniServer | None = None
    try:
        for pool in pools:
            await ds.put(m.key_for(pool), m.encode(pool))
        ipam = IpamClient(ds, node_ns, unavailable_budget=3.0)
        sink = RecordingSink()
        metrics = Metrics()
        handler = CniHandler(node_ns, ds, ipam, node_netns=node_ns,
                             dataplane=dataplane or sink, metrics=metrics)
        sock = str(tmp / "agent.sock")
        server = CniServer(sock, handler.handle)
        await server.start()
        yield Fabric(node_ns, ds, ipam, handler, server, sock, write_plugins(tmp / "bin"),
                     sink, metrics)
    finally:
        if server is not None:
            await server.stop()
        await ds.close()


# ---------------------------------------------------------------------- libcni semantics


async def run_conflist(conflist: Mapping[str, Any], command: str, *, container_id: str,
                       netns: str | None, ifname: str = "eth0", args: str | None = None,
                       cni_path: Sequence[str | os.PathLike[str]], node_ns: str,
                       runtime: Mapping[str, Any] | None = None,
                       prev_result: Any = None) -> CniRun:
    """ADD/CHECK/DEL of a conflist as libcni does it; every plugin runs in ``node_ns``."""
    plugins = list(conflist["plugins"])
    if command == "DEL":
        plugins.reverse()
    prev = prev_result
    last = CniRun(0, "", "")
    for plugin in plugins:
        conf = dict(plugin)
        conf["name"] = conflist["name"]
        conf["cniVersion"] = conflist["cniVersion"]
        caps = plugin.get("capabilities") or {}
        rc = {k: v for k, v in (runtime or {}).items() if caps.get(k)}
        if rc:
            conf["runtimeConfig"] = rc
        conf.pop("capabilities", None)
        if prev is not None:
            conf["prevResult"] = prev
        exe = None
        for d in cni_path:
            candidate = Path(d) / conf["type"]
            if candidate.exists():
                exe = candidate
                break
        assert exe is not None, f"plugin {conf['type']} not in {cni_path}"
        env = cni_env(command, container_id=container_id, netns=netns, ifname=ifname,
                      args=args, cni_path=cni_path)
        last = await exec_plugin(exe, env, conf, node_ns=node_ns)
        if last.exit != 0:
            return last
        if command == "ADD":
            prev = last.json
    if command == "ADD":
        return CniRun(0, json.dumps(prev), "")
    return last


# ---------------------------------------------------------------------- inspection


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def ip_json(ns: str, *args: str) -> Any:
    out = sh("ip", "-n", ns, "-j", *args)
    return json.loads(out) if out.strip() else []


def links(ns: str) -> list[str]:
    return [str(link["ifname"]) for link in ip_json(ns, "link", "show")]


def fab_links(ns: str) -> list[str]:
    return [name for name in links(ns) if name.startswith("fab")]


def our_routes(ns: str, proto: str = "80") -> list[dict[str, Any]]:
    return list(ip_json(ns, "route", "show", "proto", proto))


def addresses(ns: str, ifname: str) -> list[str]:
    out = []
    for link in ip_json(ns, "addr", "show", "dev", ifname):
        out += [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]
    return out


def sysctl(ns: str, key: str, value: str) -> None:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


def ping(ns: str, address: str, count: int = 1) -> bool:
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-W", "1",
                        "-i", "0.2", address], capture_output=True)
    return r.returncode == 0
