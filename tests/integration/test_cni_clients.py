"""Real CNI clients drive l3fabric: `fabricctl install-cni`, cnitool, podman.

Each test installs the plugins with ``fabricctl install-cni`` into a temporary bin and
config dir pointing at a real `CniHandler` + `CniServer` (tests.helpers.cni.Fabric) for a
throw-away node namespace. cnitool and podman run INSIDE that node namespace (nsenter),
so every reference plugin they call (portmap's iptables rules included) acts there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cni.shim import pick_interpreter
from datastore.embedded import EmbeddedEtcd
from tests.helpers.cni import (
    REFERENCE_DIR,
    REPO,
    VENV_BIN,
    Fabric,
    fab_links,
    fabric,
    ippool,
    ns_path,
    our_routes,
    sh,
    sysctl,
)

POOL = "10.244.0.0/16"
CNITOOL_SCRIPT = REPO / "scripts" / "build-cnitool.sh"


@pytest.fixture(scope="module")
def cnitool() -> str:
    """cnitool built by scripts/build-cnitool.sh (cached); skip only if it cannot build."""
    r = subprocess.run(["bash", str(CNITOOL_SCRIPT)], capture_output=True, text=True,
                       timeout=300)
    path = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not os.access(path, os.X_OK):
        pytest.skip(f"cnitool could not be built: {r.stderr.strip()[-300:]}")
    return path


@pytest.fixture
async def fab(etcd: EmbeddedEtcd, netns: Callable[[str], str],
              tmp_path: Path) -> AsyncIterator[Fabric]:
    async with fabric(etcd.endpoint, netns("node"), tmp_path,
                      pools=[ippool("default", POOL, 26)]) as f:
        f.network = "l3fabric"
        yield f


def install_cni(bin_dir: Path, conf_dir: Path, socket: str, *extra: str) -> str:
    return sh(str(VENV_BIN / "fabricctl"), "install-cni", "--bin-dir", str(bin_dir),
              "--conf-dir", str(conf_dir), "--socket", socket, *extra)


async def run(*cmd: str, env: dict[str, str] | None = None, node: str | None = None,
              check: bool = True, timeout: float = 120) -> tuple[int, str, str]:
    """A command (inside the node namespace when ``node``), without blocking the loop."""
    argv = list(cmd) if node is None else ["nsenter", f"--net={ns_path(node)}", *cmd]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    rc = proc.returncode or 0
    if check and rc != 0:
        raise AssertionError(f"{cmd} failed ({rc}): {err.decode()[-2000:]}")
    return rc, out.decode(), err.decode()


def test_install_cni_is_idempotent(tmp_path: Path) -> None:
    out = install_cni(tmp_path / "bin", tmp_path / "net.d", "/run/x.sock")
    assert out.count("wrote") == 3
    conf = json.loads((tmp_path / "net.d" / "10-l3fabric.conflist").read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["disableCheck"] is True
    assert [p["type"] for p in conf["plugins"]] == ["l3fabric", "portmap"]
    assert conf["plugins"][0]["agentSocket"] == "/run/x.sock"
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    first = (tmp_path / "bin" / "l3fabric").read_text()
    # The default interpreter: the distribution's python3 when it runs the shims.
    assert first.startswith(f"#!{pick_interpreter()} -IS\n")
    assert os.access(tmp_path / "bin" / "l3fabric-ipam", os.X_OK)
    assert install_cni(tmp_path / "bin", tmp_path / "net.d", "/run/x.sock").count(
        "unchanged") == 3
    out = install_cni(tmp_path / "bin", tmp_path / "net.d", "/run/x.sock", "--no-portmap")
    conf = json.loads((tmp_path / "net.d" / "10-l3fabric.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["l3fabric"] and "disableCheck" not in conf


async def test_cnitool_add_check_del(fab: Fabric, cnitool: str, netns: Callable[[str], str],
                                     tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    install_cni(fab.bin_dir, conf_dir, fab.socket, "--no-portmap")
    pod = netns("pod")
    env = {"NETCONFPATH": str(conf_dir), "CNI_PATH": f"{fab.bin_dir}:{REFERENCE_DIR}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=tools;K8S_POD_NAME=cnitool-pod"}
    _, out, _ = await run(cnitool, "add", "l3fabric", ns_path(pod), env=env, node=fab.node)
    res = json.loads(out)
    address = res["ips"][0]["address"]
    assert address.startswith("10.244.") and address.endswith("/32")
    assert len(fab_links(fab.node)) == 1 and len(our_routes(fab.node)) == 1
    assert list(await fab.workloads()) == [f"workloads/{fab.node}/tools.cnitool-pod.eth0"]
    await run(cnitool, "check", "l3fabric", ns_path(pod), env=env, node=fab.node)
    # CHECK notices a broken pod
    sh("ip", "-n", pod, "route", "del", "default")
    rc, out, err = await run(cnitool, "check", "l3fabric", ns_path(pod), env=env,
                             node=fab.node, check=False)
    assert rc != 0 and "default route" in out + err
    await run(cnitool, "del", "l3fabric", ns_path(pod), env=env, node=fab.node)
    assert fab_links(fab.node) == [] and our_routes(fab.node) == []
    assert await fab.handles() == [] and await fab.workloads() == {}


async def test_cnitool_with_portmap_chain(fab: Fabric, cnitool: str,
                                          netns: Callable[[str], str],
                                          tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    install_cni(fab.bin_dir, conf_dir, fab.socket)
    pod = netns("pod")
    env = {"NETCONFPATH": str(conf_dir), "CNI_PATH": f"{fab.bin_dir}:{REFERENCE_DIR}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "CAP_ARGS": json.dumps({"portMappings": [
               {"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]})}
    _, out, _ = await run(cnitool, "add", "l3fabric", ns_path(pod), env=env, node=fab.node)
    ip = json.loads(out)["ips"][0]["address"].split("/")[0]
    nat = sh("ip", "netns", "exec", fab.node, "iptables-save", "-t", "nat")
    assert "18081" in nat and f"{ip}:80" in nat
    await run(cnitool, "del", "l3fabric", ns_path(pod), env=env, node=fab.node)
    nat = sh("ip", "netns", "exec", fab.node, "iptables-save", "-t", "nat")
    assert "18081" not in nat
    assert fab_links(fab.node) == [] and await fab.handles() == []


# ------------------------------------------------------------------ podman


@contextlib.asynccontextmanager
async def podman_env(tmp: Path, bin_dir: Path, conf_dir: Path,
                     node: str) -> AsyncIterator[dict[str, str]]:
    """Private podman config and storage in ``tmp``; everything is removed after.

    Clean-up runs podman asynchronously: its CNI DEL comes back to the handler in this
    event loop, which a blocking subprocess call would starve (the shim then times out).
    """
    tmp.mkdir(parents=True, exist_ok=True)
    # podman's default nproc/nofile limits fail here ("error setting rlimit type 6"); the
    # config alone is not enough, so podman() passes them on the command line too.
    nproc, nofile = _limits()
    (tmp / "containers.conf").write_text(f"""
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "{tmp}/libpod-tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}", "{REFERENCE_DIR}"]
network_config_dir = "{conf_dir}"
default_network = "l3fabric"
""")
    (tmp / "storage.conf").write_text(f"""
[storage]
driver = "overlay"
graphroot = "{tmp}/graph"
runroot = "{tmp}/run"
""")
    (tmp / "registries.conf").write_text("unqualified-search-registries = []\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp),
           "CONTAINERS_CONF": str(tmp / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(tmp / "storage.conf"),
           "CONTAINERS_REGISTRIES_CONF": str(tmp / "registries.conf")}
    try:
        yield env
    finally:
        await run("podman", "rm", "-af", "-t", "0", env=env, node=node, check=False)
        await run("podman", "system", "reset", "-f", env=env, node=node, check=False)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(tmp))]
        for mnt in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _limits() -> tuple[int, int]:
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    return nproc, nofile


def busybox_image(env: dict[str, str], tmp: Path) -> str:
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    for cmd in ("sh", "ping", "nc", "ip", "sleep", "cat", "echo", "true"):
        (root / "bin" / cmd).symlink_to("busybox")
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True,
                         check=True).stdout
    subprocess.run(["podman", "import", "-", "localhost/l3busybox:latest"], input=tar,
                   env=env, check=True, capture_output=True)
    return "localhost/l3busybox:latest"


@pytest.mark.skipif(shutil.which("podman") is None or shutil.which("runc") is None
                    or not Path("/bin/busybox").exists(),
                    reason="podman, runc or busybox-static not installed")
async def test_podman_pods_get_addresses_reach_each_other_and_host_port(
        fab: Fabric, tmp_path: Path) -> None:
    node = fab.node
    conf_dir = tmp_path / "net.d"
    install_cni(fab.bin_dir, conf_dir, fab.socket)
    # the node's own address, for the host port; forwarding in this test namespace only
    sh("ip", "-n", node, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    sh("ip", "-n", node, "addr", "add", "10.99.0.1/32", "dev", "uplink0")
    sh("ip", "-n", node, "link", "set", "uplink0", "up")
    sysctl(node, "net.ipv4.ip_forward", "1")
    async with podman_env(tmp_path / "podman", fab.bin_dir, conf_dir, node) as env:
        image = busybox_image(env, tmp_path)
        podman = ("podman", "--cgroup-manager", "cgroupfs", "--runtime", "runc")
        nproc, nofile = _limits()
        limits = ("--ulimit", f"nproc={nproc}:{nproc}", "--ulimit", f"nofile={nofile}:{nofile}")
        await run(*podman, "run", *limits, "-d", "--name", "srv", "--network", "l3fabric",
                  "-p", "18082:8080", image, "sh", "-c",
                  "while true; do echo hello-from-pod | nc -l -p 8080; done",
                  env=env, node=node)
        _, out, _ = await run(*podman, "inspect", "srv", env=env, node=node)
        info = json.loads(out)[0]
        srv_ip = info["NetworkSettings"]["Networks"]["l3fabric"]["IPAddress"]
        assert srv_ip.startswith("10.244.")
        weps = await fab.workloads()
        assert [w["spec"]["ipNetworks"] for w in weps.values()] == [[f"{srv_ip}/32"]]
        # a second pod reaches the first
        _, out, _ = await run(*podman, "run", *limits, "--rm", "--network", "l3fabric", image,
                              "sh", "-c", f"ip -4 addr show eth0; ping -c 1 -W 2 {srv_ip}",
                              env=env, node=node)
        assert "1 packets received" in out
        # the mapped host port, from the node
        got = ""
        for _ in range(20):
            _, got, _ = await run(sys.executable, "-c", _CLIENT, "10.99.0.1", "18082",
                                  node=node, check=False)
            if "hello-from-pod" in got:
                break
            await asyncio.sleep(0.2)
        assert "hello-from-pod" in got
        await run(*podman, "rm", "-f", "-t", "0", "srv", env=env, node=node)
    assert fab_links(node) == [] and our_routes(node) == []
    assert await fab.handles() == [] and await fab.workloads() == {}


_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
c.sendall(b"x\\n")
print(c.recv(100).decode())
"""
