"""A single-member etcd on loopback, for the demo, for people trying l3fabric out, and for tests.

Owns: one etcd process, its data directory (when it made it) and a small state file that
lets ``fabricctl etcd stop`` find the process again. Production clusters never use this:
they point ``--etcd-endpoints`` at their own etcd cluster.

Failure mode: if etcd does not answer within ``ready_timeout`` the process is killed and
``EmbeddedEtcdError`` names the log file to read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log_name = __name__


class EmbeddedEtcdError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def state_dir() -> Path:
    """Where fabricctl keeps its state: $XDG_STATE_HOME/l3fabric or ~/.local/state/l3fabric."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "l3fabric"


@dataclass
class EmbeddedEtcd:
    """One etcd member listening on ``host`` (loopback by default)."""

    data_dir: Path
    client_port: int
    peer_port: int
    host: str = "127.0.0.1"
    name: str = "l3fabric"
    proc: subprocess.Popen[bytes] | None = None
    owns_data_dir: bool = False
    # The ports were picked free here (`temporary`): another process may take one between
    # the pick and etcd's bind, so `start` picks again when etcd finds one in use.
    picked_ports: bool = False
    extra_args: tuple[str, ...] = ()
    # "https" for a TLS client port; the server's --cert-file etc. go in extra_args, and
    # ssl_context (CA + client cert when etcd asks for one) is what the health probe uses.
    scheme: str = "http"
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def temporary(cls, host: str = "127.0.0.1") -> EmbeddedEtcd:
        """A member with free ports and a throw-away data dir (removed by stop())."""
        d = Path(tempfile.mkdtemp(prefix="l3fabric-etcd-"))
        return cls(data_dir=d, client_port=free_port(host), peer_port=free_port(host),
                   host=host, owns_data_dir=True, picked_ports=True)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def unix_endpoint(self) -> str:
        """The same member over its unix socket (``unix:///…/localhost:PORT``)."""
        return f"unix://{self.data_dir.resolve()}/localhost:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".log")

    def _client_urls(self) -> str:
        if self.scheme != "http":  # a plain unix socket would bypass TLS client auth
            return self.endpoint
        return f"{self.endpoint},unix://localhost:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            shutil.which("etcd") or "/usr/bin/etcd",
            "--name", self.name,
            "--data-dir", str(self.data_dir / "member-data"),
            # Also on a unix socket (etcd makes it in its working directory, the data dir):
            # agents inside network namespaces reach it without any network path.
            "--listen-client-urls", self._client_urls(),
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--log-level", "warn",
            *self.extra_args,
        ]

    def start(self, ready_timeout: float = 15.0) -> None:
        for attempt in range(3):
            try:
                return self._start(ready_timeout)
            except EmbeddedEtcdError:
                lost_race = self.picked_ports and attempt < 2 and (
                    b"address already in use" in self.log_path.read_bytes()[-2000:])
                if not lost_race:
                    raise
                self.client_port, self.peer_port = free_port(self.host), free_port(self.host)

    def _start(self, ready_timeout: float) -> None:
        if shutil.which("etcd") is None:
            raise EmbeddedEtcdError("etcd is not installed (Debian package etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A socket file left by an earlier run of this member would make etcd fail to bind.
        (self.data_dir / f"localhost:{self.client_port}").unlink(missing_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.data_dir,
            )
        finally:
            logf.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedEtcdError(
                    f"etcd exited with {self.proc.returncode}; see {self.log_path}")
            if self.healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise EmbeddedEtcdError(f"etcd not healthy after {ready_timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1,
                                        context=self.ssl_context) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
