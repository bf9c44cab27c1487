"""install-agent in a temporary root, then the generated unit's command line really runs.

What systemd would do is reproduced by hand: read ``EnvironmentFile=`` and run
``ExecStart=`` with that environment, plus the ``$NOTIFY_SOCKET`` (a unix datagram socket
the test binds) and ``$WATCHDOG_USEC`` of ``Type=notify`` with ``WatchdogSec=``. The agent
programs a throw-away namespace (``--netns`` recorded in agent.conf) and talks to the
test's etcd; it must send ``READY=1`` once ``/readyz`` answers 200, ping the watchdog,
and register its Node. Then it is stopped, and ``uninstall`` cleans the
namespace and removes every file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from datastore.embedded import EmbeddedEtcd, free_port
from fabricctl.install_cmd import parse_env_file

FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))


def fabricctl(*args: str, etcd: EmbeddedEtcd | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if etcd is not None:
        env["L3FABRIC_ETCD_ENDPOINTS"] = etcd.endpoint
    return subprocess.run([FABRICCTL, *args], capture_output=True, text=True, env=env,
                          timeout=60)


def unit_values(unit: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            k, _, v = line.partition("=")
            out.setdefault(k, v)
    return out


def notifications(sock: socket.socket, until: str, deadline: float) -> list[str]:
    """The notify datagrams read from ``sock`` up to the first holding ``until``."""
    seen: list[str] = []
    while not any(until in m.splitlines() for m in seen):
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        seen.append(sock.recv(4096).decode())
    return seen


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def test_generated_unit_command_runs_the_agent(etcd: EmbeddedEtcd, netns: Callable[[str], str],
                                               tmp_path: Path) -> None:
    ns = netns("inst")
    root = tmp_path / "root"
    sock = tmp_path / "agent.sock"
    port = free_port()
    r = fabricctl("install-agent", "--root", str(root), "--node", "inst-n1",
                  "--etcd-endpoints", etcd.endpoint, "--metrics-addr", f"127.0.0.1:{port}",
                  "--socket", str(sock), "--netns", ns, "--node-ip", "10.77.1.1/30",
                  "--log-level", "debug")
    assert r.returncode == 0, r.stderr
    unit = unit_values(root / "etc/systemd/system/fabric-agent.service")
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert int(unit["WatchdogSec"]) > 0 and unit["KillMode"] == "process"
    env_file = root / unit["EnvironmentFile"].lstrip("/")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **parse_env_file(env_file.read_text())}
    assert env["L3FABRIC_NETNS"] == ns
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    env |= {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}

    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen([unit["ExecStart"]], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        try:
            notifications(notify, "READY=1", deadline)
        except TimeoutError:
            raise AssertionError((tmp_path / "agent.log").read_text()) from None
        # READY=1 means ready: /readyz answers 200 from that moment on.
        assert http_status(f"http://127.0.0.1:{port}/readyz") == 200
        assert notifications(notify, "WATCHDOG=1", time.monotonic() + 10)
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
        assert http_status(f"http://127.0.0.1:{port}/livez") == 200
        node = fabricctl("get", "node", "inst-n1", "-o", "json", etcd=etcd)
        assert node.returncode == 0, node.stderr
        assert json.loads(node.stdout)["spec"]["bgp"]["ipv4Address"] == "10.77.1.1/30"
        assert sock.exists()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            rc = agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
            raise
        finally:
            log.close()
    assert rc == 0, (tmp_path / "agent.log").read_text()
    assert notifications(notify, "STOPPING=1", time.monotonic() + 1)
    notify.close()

    # A route of ours left behind (a block's blackhole, say): uninstall's cleanup must
    # remove it from the namespace the agent programmed.
    subprocess.run(["ip", "-n", ns, "route", "add", "blackhole", "10.244.77.0/26",
                    "proto", "80"], check=True)

    r = fabricctl("uninstall", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "agent cleanup: removed 1 routes" in r.stdout
    routes = subprocess.run(["ip", "-n", ns, "route", "show", "proto", "80"],
                            capture_output=True, text=True, check=True).stdout
    assert routes.strip() == ""
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert not sock.exists()
