"""The ExaBGP process-API helper: a relay between ExaBGP's pipes and the agent's BGP socket.

ExaBGP runs ``python -m bgp.relay --socket PATH`` as its ``process``: it writes JSON events
(and ``done``/``error`` acks) to our stdin and reads commands from our stdout. We connect to
the agent's unix socket and pass lines both ways. Standard library only, so that it starts
fast and never shares a failure with the agent.

Why a relay (DESIGN §2, §5): ExaBGP outlives the agent. When the agent goes away the relay
keeps running, keeps ExaBGP fed, and reconnects every ``--retry`` seconds. What it owns:

- the **announced set**: every ``[neighbor X] announce route P ...`` command line still in
  effect (a later ``withdraw route P`` for the same neighbour selector removes it). A
  re-attaching agent gets it in the hello, so it can withdraw what it no longer wants
  without a flap of what it still wants;
- the **latest state event per peer**, buffered while the agent is away and replayed after
  the hello (updates received meanwhile are dropped and counted: the agent asks for a
  route refresh on every attach, which re-sends them).

Protocol on the socket, one line each way per message: relay → agent, first
``{"type": "relay-hello", "pid": N, "announced": [lines], "dropped": N}``, then the buffered
state events, then whatever ExaBGP writes; agent → relay, ExaBGP command lines.

Failure modes: ExaBGP exits → our stdin closes → we exit. The agent dies mid-line → the
partial line is discarded with the connection. We die → ExaBGP respawns us (5 times a
minute), and our announced set is lost: the next attach sees an empty set, re-announces
its desired routes, and a route it withdrew meanwhile stays announced until ExaBGP restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Sequence


def route_key(line: str) -> tuple[str, str, str] | None:
    """``(neighbor selector, verb, prefix)`` of an announce/withdraw route command, else None."""
    words = line.split()
    sel = ""
    if len(words) >= 2 and words[0] == "neighbor":
        sel, words = words[1], words[2:]
    if len(words) >= 3 and words[0] in ("announce", "withdraw") and words[1] == "route":
        return sel, words[0], words[2]
    return None


class Relay:
    def __init__(self, path: str, retry: float = 0.2) -> None:
        self.path = path
        self.retry = retry
        self.sock: socket.socket | None = None
        self.announced: dict[tuple[str, str], str] = {}
        self.states: dict[str, str] = {}
        self.dropped = 0
        self._from_exabgp = b""
        self._from_agent = b""
        self._next_try = 0.0
        self.sel = selectors.DefaultSelector()

    # -- agent side ----------------------------------------------------------------------

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            self._next_try = time.monotonic() + self.retry
            return
        hello = {"type": "relay-hello", "pid": os.getpid(),
                 "announced": list(self.announced.values()), "dropped": self.dropped}
        s.settimeout(10)
        try:
            s.sendall((json.dumps(hello) + "\n").encode()
                      + b"".join((line + "\n").encode() for line in self.states.values()))
        except OSError:
            s.close()
            self._next_try = time.monotonic() + self.retry
            return
        self.dropped = 0
        self.sock = s
        self._from_agent = b""
        self.sel.register(s, selectors.EVENT_READ, "agent")

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
            self._next_try = time.monotonic() + self.retry

    def _to_agent(self, data: bytes) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self._disconnect()

    def _on_agent(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._disconnect()
            return
        self._from_agent += data
        *lines, self._from_agent = self._from_agent.split(b"\n")
        out = []
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            key = route_key(line)
            if key is not None:
                sel, verb, prefix = key
                if verb == "announce":
                    self.announced[(sel, prefix)] = line
                else:
                    self.announced.pop((sel, prefix), None)
            out.append(line + "\n")
        if out:
            sys.stdout.write("".join(out))
            sys.stdout.flush()

    # -- ExaBGP side ---------------------------------------------------------------------

    def _on_exabgp(self) -> bool:
        data = os.read(sys.stdin.fileno(), 65536)
        if not data:
            return False
        self._from_exabgp += data
        *lines, self._from_exabgp = self._from_exabgp.split(b"\n")
        forward = []
        for raw in lines:
            if b'"type": "state"' in raw or b'"type":"state"' in raw:
                try:
                    peer = json.loads(raw)["neighbor"]["address"]["peer"]
                    self.states[str(peer)] = raw.decode()
                except (ValueError, KeyError, TypeError):
                    pass
            if self.sock is None:
                if raw.strip() not in (b"done", b"error", b""):
                    self.dropped += 1
                continue
            forward.append(raw + b"\n")
        if forward:
            self._to_agent(b"".join(forward))
        return True

    def run(self) -> int:
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "exabgp")
        while True:
            if self.sock is None and time.monotonic() >= self._next_try:
                self._connect()
            timeout = None if self.sock is not None else max(
                0.0, self._next_try - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data == "exabgp":
                    if not self._on_exabgp():
                        return 0
                elif self.sock is not None:
                    self._on_agent()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bgp.relay", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="the agent's BGP unix socket")
    p.add_argument("--retry", type=float, default=0.2, help="seconds between reconnects")
    args = p.parse_args(argv)
    try:
        return Relay(args.socket, args.retry).run()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
