"""A throw-away 3-member etcd cluster on loopback, for failover tests.

Owns: three etcd processes (each in its own session, so a kill reaches the whole group),
one temp directory holding their data dirs and logs. `EtcdCluster.stop` (also run by the
context manager on any failure) kills every member still running and removes the
directory; it tolerates members already dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datastore.embedded import free_port


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)


@dataclass
class EtcdCluster:
    size: int = 3
    heartbeat_ms: int = 100
    election_ms: int = 1000
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="l3fabric-etcdc-")))
    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self, ready_timeout: float = 20.0) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise RuntimeError("etcd is not installed (Debian package etcd-server)")
        self.members = [Member(f"m{i}", free_port(), free_port()) for i in range(self.size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            log = open(self.root / f"{m.name}.log", "ab")  # noqa: SIM115 - child keeps it
            try:
                m.proc = subprocess.Popen(
                    [etcd, "--name", m.name, "--data-dir", str(self.root / m.name),
                     "--listen-client-urls", m.endpoint, "--advertise-client-urls", m.endpoint,
                     "--listen-peer-urls", m.peer_url,
                     "--initial-advertise-peer-urls", m.peer_url,
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", self.root.name,
                     "--heartbeat-interval", str(self.heartbeat_ms),
                     "--election-timeout", str(self.election_ms),
                     "--log-level", "warn"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            finally:
                log.close()
        deadline = time.monotonic() + ready_timeout
        while not all(m.healthy() for m in self.members):
            dead = [m.name for m in self.members if not m.alive]
            if dead or time.monotonic() > deadline:
                self.stop(keep_logs=True)
                raise RuntimeError(f"etcd cluster not healthy (dead: {dead}); logs in "
                                   f"{self.root}")
            time.sleep(0.1)

    def status(self) -> list[dict[str, object]]:
        """``etcdctl endpoint status -w json`` of the live members."""
        eps = ",".join(m.endpoint for m in self.members if m.alive)
        out = subprocess.run(
            ["etcdctl", "--endpoints", eps, "--command-timeout", "2s", "endpoint", "status",
             "-w", "json"], capture_output=True, text=True, timeout=10,
            env={**os.environ, "ETCDCTL_API": "3"})
        if out.returncode != 0 and not out.stdout.strip():
            raise RuntimeError(f"etcdctl endpoint status failed: {out.stderr.strip()}")
        return list(json.loads(out.stdout))

    def leader(self) -> Member:
        for st in self.status():
            hdr = st["Status"]["header"]  # type: ignore[index]
            if st["Status"]["leader"] == hdr["member_id"]:  # type: ignore[index]
                ep = str(st["Endpoint"])
                return next(m for m in self.members if m.endpoint == ep)
        raise RuntimeError("no leader")

    def stop(self, keep_logs: bool = False) -> None:
        for m in self.members:
            m.kill(signal.SIGKILL)
        if not keep_logs:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def etcd_cluster(size: int = 3) -> Iterator[EtcdCluster]:
    c = EtcdCluster(size=size)
    try:
        c.start()
        yield c
    finally:
        c.stop()
