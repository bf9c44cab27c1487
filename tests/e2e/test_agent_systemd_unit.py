"""The unit ``fabricctl install-agent`` writes, under a real systemd.

The container is the lab's node image (``make images``: Debian 12 with systemd as PID 1 and
l3fabric from a wheel of this checkout), run with ``--network none``; etcd runs inside it on
loopback. What an operator sees: ``install-agent --start`` returns once the agent told
systemd ``READY=1`` (the unit active, its status line the agent's); ``systemctl restart``
and a watchdog timeout (the agent stopped with SIGSTOP, ``WatchdogSec=`` shortened by a
drop-in) each bring a new agent, and the same ExaBGP keeps running across both
(``KillMode=process``).
"""

from __future__ import annotations

import resource
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from helpers.images import NODE_IMAGE, PODMAN, skip_unless_built

IMAGE = NODE_IMAGE
EXABGP_PID = "/run/l3fabric/bgp-n1/exabgp.pid"


pytestmark = skip_unless_built((IMAGE,))


@pytest.fixture
def node() -> Iterator[Callable[..., str]]:
    """A running node container; the fixture's value runs a command in it."""
    name = f"l3f-unit-{uuid.uuid4().hex[:8]}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    subprocess.run([*PODMAN, "run", "-d", "--name", name, "--network", "none", "--privileged",
                    "--pull", "never", "--ulimit", "nproc=4096:4096", "--ulimit",
                    f"nofile={soft}:{hard}", IMAGE, "/sbin/init"],
                   check=True, capture_output=True, timeout=120)

    def run(*cmd: str, check: bool = True, timeout: float = 120) -> str:
        r = subprocess.run([*PODMAN, "exec", name, *cmd], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            journal = subprocess.run([*PODMAN, "exec", name, "journalctl", "--no-pager", "-n",
                                      "60"], capture_output=True, text=True).stdout
            raise AssertionError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}\n{journal}")
        return r.stdout.strip()

    try:
        wait(lambda: run("systemctl", "is-system-running", check=False)
             in ("running", "degraded"), "systemd in the container")
        yield run
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "2", name], capture_output=True, timeout=120)


def wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def show(run: Callable[..., str], *props: str) -> dict[str, str]:
    out = run("systemctl", "show", "fabric-agent", *(f"-p{p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def test_unit_is_ready_after_sync_and_restarts_keep_exabgp(node: Callable[..., str]) -> None:
    node("systemd-run", "--unit", "l3f-etcd", "etcd", "--name", "e", "--data-dir", "/tmp/etcd",
         "--listen-client-urls", "http://127.0.0.1:2379",
         "--advertise-client-urls", "http://127.0.0.1:2379",
         "--listen-peer-urls", "http://127.0.0.1:2380",
         "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
         "--initial-cluster", "e=http://127.0.0.1:2380")
    wait(lambda: node("sh", "-c", "etcdctl --endpoints 127.0.0.1:2379 endpoint health "
                                  ">/dev/null 2>&1 && echo healthy", check=False) == "healthy",
         "etcd in the container")

    out = node("fabricctl", "install-agent", "--node", "n1", "--etcd-endpoints",
               "http://127.0.0.1:2379", "--node-ip", "10.77.1.1/30", "--no-cni", "--start")
    assert "started fabric-agent.service" in out
    # `--start` returned: systemd got READY=1, which the agent sends once in sync.
    st = show(node, "Type", "NotifyAccess", "ActiveState", "SubState", "StatusText", "MainPID",
              "WatchdogUSec")
    assert (st["Type"], st["NotifyAccess"], st["ActiveState"], st["SubState"]) == \
        ("notify", "main", "active", "running")
    assert st["StatusText"].startswith("ready"), st
    assert st["WatchdogUSec"] != "0"
    exabgp = node("cat", EXABGP_PID)
    first = st["MainPID"]

    # A restart: a new agent, ready again, the same ExaBGP.
    node("systemctl", "restart", "fabric-agent")
    st = show(node, "ActiveState", "MainPID", "StatusText")
    assert st["ActiveState"] == "active" and st["MainPID"] != first
    assert st["StatusText"].startswith("ready"), st
    assert node("cat", EXABGP_PID) == exabgp
    node("kill", "-0", exabgp)

    # The watchdog: an agent whose event loop stops pinging is killed and started again;
    # ExaBGP stays.
    node("sh", "-c", "mkdir -p /etc/systemd/system/fabric-agent.service.d && printf "
         "'[Service]\\nWatchdogSec=3\\n' > /etc/systemd/system/fabric-agent.service.d/t.conf "
         "&& systemctl daemon-reload && systemctl restart fabric-agent")
    stopped = show(node, "MainPID")["MainPID"]
    node("kill", "-STOP", stopped)
    wait(lambda: show(node, "NRestarts")["NRestarts"] != "0", "the watchdog's restart")
    wait(lambda: show(node, "ActiveState")["ActiveState"] == "active", "the agent again")
    st = show(node, "MainPID", "StatusText")
    assert st["MainPID"] != stopped and st["StatusText"].startswith("ready"), st
    assert node("cat", EXABGP_PID) == exabgp
    node("kill", "-0", exabgp)
