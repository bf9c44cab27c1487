"""Process and connection checks shared by the tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable
from pathlib import Path


def running(pid: int | str) -> bool:
    """Alive and not a zombie: a daemon re-parented when its agent died may stay a zombie
    here (this container's init does not reap), which is stopped for every purpose."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def running_with(marker: str) -> list[str]:
    """Command lines of the running (not zombie) processes that name ``marker`` (a lab's
    private state directory, a container's id)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and running(d.name):
            out.append(cmd.strip())
    return out


def tcp_connections(ns: str, peer: str, port: int = 179) -> frozenset[tuple[str, str]]:
    """The established TCP connections in namespace ``ns`` with ``peer`` on ``port``
    (either end: 179 is BGP), as (local, remote) ``address:port`` pairs from ``ss``.

    A BGP session's identity: it keeps its connection for as long as it lives, and a
    reset opens a new one on a new ephemeral port, so the same set before and after
    means no reset happened. (BIRD's ``show protocols`` "since" is printed from a
    monotonic clock converted at each call: two reads of one session can differ by 1 ms.)
    """
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-tnH", "state", "established",
         f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=10).stdout
    found = set()
    for line in out.splitlines():
        # With one state asked for, ss prints no State column: Recv-Q Send-Q Local Peer.
        local, remote = line.split()[2:4]
        host = remote.rsplit(":", 1)[0].strip("[]")
        if host.removeprefix("::ffff:") == peer:  # an IPv4 peer on a dual-stack socket
            found.add((local, remote))
    return frozenset(found)


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """SIGTERM every process, then wait for each (SIGKILL after ``timeout``)."""
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
