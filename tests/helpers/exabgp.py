"""Test helpers for BGP: veth links between namespaces, and a stand-alone speaker owner.

``python -m helpers.exabgp ...`` (with ``tests/`` on PYTHONPATH) runs a `BgpSpeaker` the way
the agent does — it is the "agent-side process" the tests kill with -9 — and prints one
JSON line per import-table change (``{"learned": {...}, "in_sync": bool}``). Commands on
stdin: ``exports P,P,...`` changes the announcements, ``config PATH`` loads a new
neighbour table (JSON list of NeighborSpec fields), ``status`` prints the peer status,
``drain`` stops with a drain and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from helpers.procs import tcp_connections

REPO = Path(__file__).resolve().parents[2]
EXABGP = str(REPO / ".venv" / "bin" / "exabgp")
PYTHON = str(REPO / ".venv" / "bin" / "python")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def link(ns_a: str, ip_a: str | None, ns_b: str, ip_b: str | None) -> tuple[str, str]:
    """A veth pair between two namespaces, optionally addressed (CIDR); returns the two
    names."""
    tag = os.urandom(3).hex()
    a, b = f"fbv{tag}a", f"fbv{tag}b"
    run("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
        "netns", ns_b)
    for ns, name, ip in ((ns_a, a, ip_a), (ns_b, b, ip_b)):
        if ip:
            run("ip", "-n", ns, "addr", "add", ip, "dev", name)
        run("ip", "-n", ns, "link", "set", name, "up")
    return a, b


def wait_for(pred: Callable[[], Any], timeout: float = 20, what: str = "condition",
             interval: float = 0.05, detail: Callable[[], str] | None = None) -> Any:
    """``pred()`` once it is truthy; AssertionError naming ``what`` (and ``detail()``)
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def neighbor_json(neighbors: Iterable[Any]) -> str:
    return json.dumps([dataclasses.asdict(n) for n in neighbors])


class SpeakerProcess:
    """The owner process of a BgpSpeaker (see module docstring), driven from a test."""

    def __init__(self, node: str, netns: str, workdir: Path, neighbors: Iterable[Any],
                 exports: Iterable[str], pools: Iterable[str] = ("10.244.0.0/16",),
                 own: Iterable[str] = ()) -> None:
        self.node, self.netns, self.workdir = node, netns, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.workdir / "bgp.sock")
        (self.workdir / "neighbors.json").write_text(neighbor_json(neighbors))
        self.exports, self.pools, self.own = list(exports), list(pools), list(own)
        self.proc: subprocess.Popen[str] | None = None
        self.learned: dict[str, list[str]] = {}
        self.in_sync = False
        self.status: list[dict[str, Any]] | None = None
        self._partial = ""

    def start(self) -> None:
        self._partial = ""
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "helpers.exabgp", "--node", self.node, "--netns", self.netns,
             "--workdir", str(self.workdir), "--socket", self.socket,
             "--neighbors", str(self.workdir / "neighbors.json"),
             "--exports", ",".join(self.exports), "--pools", ",".join(self.pools),
             "--own", ",".join(self.own)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            stderr=open(self.workdir / "owner.log", "a"))  # noqa: SIM115
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    def poll(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.readline()
            if not chunk:
                return
            self._partial += chunk
            if not self._partial.endswith("\n"):
                continue
            line, self._partial = self._partial, ""
            msg = json.loads(line)
            if "learned" in msg:
                self.learned = msg["learned"]
                self.in_sync = msg["in_sync"]
            if "status" in msg:
                self.status = msg["status"]

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_learned(self, want: dict[str, list[str]], timeout: float = 20) -> None:
        def ok() -> bool:
            self.poll()
            return self.learned == want
        try:
            wait_for(ok, timeout, f"learned == {want}")
        except AssertionError:
            got, missing = self.learned, want.keys() - self.learned.keys()
            raise AssertionError(
                f"learned {len(got)} prefixes, wanted {len(want)}; missing "
                f"{sorted(missing)[:5]}, extra {sorted(got.keys() - want.keys())[:5]}, "
                f"differing {[k for k in want if k in got and got[k] != want[k]][:5]}; "
                f"learned {dict(list(got.items())[:8])}") from None

    def peer_status(self) -> list[dict[str, Any]]:
        self.status = None
        self.send("status")

        def got() -> bool:
            self.poll()
            return self.status is not None
        wait_for(got, 5, "status")
        assert self.status is not None
        return self.status

    def session_id(self, peer_ip: str) -> frozenset[tuple[str, str]]:
        """The TCP connection of the session with ``peer_ip`` (empty when down): it
        changes only when the session is reset, and has no clock's resolution or jitter
        (`helpers.procs.tcp_connections`)."""
        return tcp_connections(self.netns, peer_ip)

    def exabgp_pid(self) -> int:
        return int((self.workdir / "exabgp.pid").read_text())

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self, drain: bool = True) -> None:
        """Drain (withdraw, stop ExaBGP) when the owner is alive; else kill ExaBGP."""
        if self.proc is not None and self.proc.poll() is None and drain:
            with contextlib.suppress(BrokenPipeError):
                self.send("drain")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(8)
        self.kill9()
        with contextlib.suppress(OSError, ValueError):
            os.kill(self.exabgp_pid(), signal.SIGKILL)


def _main(argv: Sequence[str] | None = None) -> int:
    from bgp.config import NeighborSpec
    from bgp.speaker import BgpSpeaker

    p = argparse.ArgumentParser()
    for flag in ("--node", "--netns", "--workdir", "--socket", "--neighbors"):
        p.add_argument(flag, required=True)
    for flag in ("--exports", "--pools", "--own"):
        p.add_argument(flag, default="")
    args = p.parse_args(argv)

    def split(s: str) -> set[str]:
        return {x for x in s.split(",") if x}

    def load(path: str) -> dict[str, NeighborSpec]:
        return {d["peer_ip"]: NeighborSpec(**d) for d in json.loads(Path(path).read_text())}

    def out(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        sp: BgpSpeaker

        def learned(table: dict[str, tuple[str, ...]]) -> None:
            out({"learned": {k: list(v) for k, v in table.items()}, "in_sync": sp.in_sync})

        sp = BgpSpeaker(args.node, netns=args.netns, socket_path=args.socket,
                        workdir=Path(args.workdir), exabgp_bin=EXABGP, python=PYTHON,
                        on_learned=learned)
        sp.set_filter(split(args.pools), split(args.own))
        await sp.start()
        await sp.set_exports(split(args.exports))
        await sp.set_neighbors(load(args.neighbors))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line:
                await sp.stop(drain=False)
                return
            cmd, _, arg = line.partition(" ")
            if cmd == "exports":
                await sp.set_exports(split(arg))
            elif cmd == "config":
                await sp.set_neighbors(load(arg))
            elif cmd == "status":
                out({"status": sp.peer_status()})
            elif cmd == "drain":
                await sp.stop(drain=True)
                return

    asyncio.run(main())
    return 0


def bird_available() -> bool:
    return shutil.which("bird") is not None and shutil.which("birdc") is not None


if __name__ == "__main__":
    sys.exit(_main())
