"""The ExaBGP process-API helper: a relay between ExaBGP's pipes and the agent's BGP socket.

ExaBGP runs ``python -m bgp.relay --socket PATH`` as its ``process``: it writes JSON events
(and ``done``/``error`` acks) to our stdin and reads commands from our stdout. We connect to
the agent's unix socket and pass lines both ways. Standard library only, so that it starts
fast and never shares a failure with the agent.

Why a relay (docs/architecture.md §2, §11): ExaBGP outlives the agent, and so do we. When
the agent goes away the relay keeps running, keeps ExaBGP fed, and reconnects every
``--retry`` seconds.
What it owns:

- the **announced set**: every ``[neighbor X] announce route P ...`` command line still in
  effect (a later ``withdraw route P`` for the same neighbour selector removes it). A
  re-attaching agent gets it in the hello, so it can withdraw what it no longer wants
  without a flap of what it still wants;
- the **latest state event per peer**, replayed after the hello;
- each peer's **adj-RIB-in** (`AdjRibIn`): every route the peer announced and has not
  withdrawn, recorded from ExaBGP's parsed updates whether or not the agent is attached.
  A re-attaching agent gets it replayed after the states, then ``relay-replayed``: it
  rebuilds its import table without asking the peers (ExaBGP keeps no RIB, and a peer
  may ignore a route refresh: FRR 8.4 with enhanced route refresh ignores one until it
  has sent End-of-RIB, which it sends only to graceful-restart peers).

Protocol on the socket, one line each way per message: relay → agent, first
``{"type": "relay-hello", "pid": N, "announced": [lines], "dropped": N, "rib": true}``,
then the states, then the adj-RIB-in as ExaBGP-shaped ``update`` events, then
``{"type": "relay-replayed", "complete": {peer: [afi, ...]}}`` (the families whose routes
the relay knows in full: ``"*"`` for all of them), then whatever ExaBGP writes; agent →
relay, ExaBGP command lines, and ``relay filter {json}`` and ``relay replay`` lines that
are ours (`AdjRibIn`).

Failure modes: ExaBGP exits → our stdin closes → we exit. The agent dies mid-line → the
partial line is discarded with the connection. An agent that stops reading while it is
attached is dropped once ``MAX_BACKLOG`` bytes wait for it (it re-attaches and gets the
replay: nothing is lost). We die → ExaBGP respawns us (5 times a minute), and what we
held is lost: the next attach sees an empty announced set, re-announces its desired
routes (a route it withdrew meanwhile stays announced until ExaBGP restarts), and our
adj-RIB-in lacks what was learned before, so the replay says which peers' routes the new
relay knows in full (those whose session it saw come up, or a route refresh of which it
saw end) and the agent asks the others for a refresh.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

#: Bytes queued for an attached agent that does not read, before it is dropped.
MAX_BACKLOG = 64 << 20
#: Paths kept per peer before the agent has said its limits (the model's upper bound).
HARD_LIMIT = 1_000_000
#: Paths a peer may make us keep beyond what the agent keeps (outside its pools, or past
#: its limit), for the agent to get from us when a pool is added or a limit raised.
SPARE = 10_000
#: Prefixes per replayed update line.
REPLAY_CHUNK = 500

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def route_key(line: str) -> tuple[str, str, str] | None:
    """``(neighbor selector, verb, prefix)`` of an announce/withdraw route command, else None."""
    words = line.split()
    sel = ""
    if len(words) >= 2 and words[0] == "neighbor":
        sel, words = words[1], words[2:]
    if len(words) >= 3 and words[0] in ("announce", "withdraw") and words[1] == "route":
        return sel, words[0], words[2]
    return None


def withdraw_line(prefix: str) -> str:
    """ExaBGP's command withdrawing one of our announcements: an IPv4 one names ``next-hop
    self`` as it was announced; an IPv6 one (announced with an address) names none,
    since ExaBGP refuses ``self`` there."""
    return f"withdraw route {prefix}" if ":" in prefix else f"withdraw route {prefix} next-hop self"


def _afi(prefix: str) -> str:
    return "ipv6" if ":" in prefix else "ipv4"


class AdjRibIn:
    """Per peer: prefix -> (family, next hops as offered, attributes), from ExaBGP's
    parsed events, bounded like the agent's import table (`bgp.rib`) by what the agent
    sends (``relay filter``: its pools and each peer's limit) plus ``SPARE``: a new
    prefix is kept while the peer has fewer than its limit inside the pools (those the
    agent keeps), or fewer than limit + ``SPARE`` in all (outside the pools or past the
    limit: what the agent asks for again, ``relay replay``, when it adds a pool or raises
    a limit, since a peer may ignore its route refresh). Before the first filter:
    everything, up to ``HARD_LIMIT`` per peer. Only prefixes inside the pools are
    replayed. Paths of one update share its attributes (one interned string), so a path
    costs a dict entry and a tuple: ~2,000 prefixes are a few hundred kB.

    Rules: a session "up" or "down" empties the peer's RIB (a new session sends its whole
    table); a Begin-of-RIB marks a family's paths stale and its End-of-RIB (enhanced route
    refresh) drops those not re-sent; withdrawals remove. ``complete`` says which
    families are known in full: all of them once a session came up under our eyes, one
    family once a refresh of it ended."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[str, tuple[str, tuple[str, ...], str]]] = {}
        self.inside: dict[str, int] = {}  # per peer: how many of its paths are in the pools
        self.stale: dict[str, set[str]] = {}
        self.complete: dict[str, set[str]] = {}
        self.heads: dict[str, dict[str, Any]] = {}  # peer -> address/asn of its last event
        self.pools: tuple[Network, ...] | None = None
        self.limits: dict[str, int] = {}
        self.default_limit = HARD_LIMIT
        self.refused = 0
        self._attrs: dict[str, str] = {}

    # -- the agent's filter ----------------------------------------------------------------

    def set_filter(self, spec: Mapping[str, Any]) -> None:
        """``{"pools": [cidr], "limits": {peer: n}, "default": n}``: peers not named are
        no longer configured and their paths go; paths outside every pool go."""
        self.pools = tuple(ipaddress.ip_network(p, strict=False) for p in spec["pools"])
        self.limits = {str(k): int(v) for k, v in spec.get("limits", {}).items()}
        self.default_limit = int(spec.get("default", HARD_LIMIT))
        for peer in [p for p in self.paths if p not in self.limits]:
            self._forget(peer)
        for peer, rib in self.paths.items():
            self.inside[peer] = sum(1 for k in rib if self._in_pools(k))

    def _in_pools(self, prefix: str) -> bool:
        if self.pools is None:
            return True
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            return False
        return any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
                   for p in self.pools)

    def _forget(self, peer: str) -> None:
        for table in (self.paths, self.inside, self.stale, self.complete, self.heads):
            table.pop(peer, None)

    # -- ExaBGP's events ------------------------------------------------------------------

    def on_event(self, msg: Mapping[str, Any]) -> None:
        nb = msg.get("neighbor") or {}
        peer = str((nb.get("address") or {}).get("peer", ""))
        if not peer:
            return
        self.heads[peer] = {k: nb[k] for k in ("address", "asn") if k in nb}
        kind = msg.get("type")
        if kind == "state":
            if nb.get("state") in ("up", "down"):
                for table in (self.paths, self.inside, self.stale):
                    table.pop(peer, None)
                self.complete[peer] = {"*"}
        elif kind == "update":
            message = nb.get("message") or {}
            self._on_update(peer, message.get("update") or {})
        elif kind == "refresh":
            rr = nb.get("route-refresh") or {}
            afi = str(rr.get("afi", ""))
            rib = self.paths.get(peer, {})
            if rr.get("subtype") == "begin":
                self.stale.setdefault(peer, set()).update(
                    k for k in rib if _afi(k) == afi)
            elif rr.get("subtype") == "end":
                stale = self.stale.get(peer, set())
                for key in [k for k in stale if _afi(k) == afi]:
                    self._remove(peer, rib, key)
                    stale.discard(key)
                self.complete.setdefault(peer, set()).add(afi)

    def _remove(self, peer: str, rib: dict[str, Any], key: str) -> None:
        if rib.pop(key, None) is not None and self._in_pools(key):
            self.inside[peer] -= 1

    def _on_update(self, peer: str, update: Mapping[str, Any]) -> None:
        rib = self.paths.setdefault(peer, {})
        stale = self.stale.get(peer, set())
        self.inside.setdefault(peer, 0)
        for nlris in (update.get("withdraw") or {}).values():
            for n in nlris:
                key = str(n.get("nlri"))
                self._remove(peer, rib, key)
                stale.discard(key)
        announce = update.get("announce") or {}
        if not announce:
            return
        text = json.dumps(update.get("attribute") or {}, sort_keys=True)
        if len(self._attrs) > 2 * self.size() + 1000:  # drop the ones no path uses
            self._attrs = {a: a for rib_ in self.paths.values() for _, _, a in rib_.values()}
        attrs = self._attrs.setdefault(text, text)
        limit = self.limits.get(peer, self.default_limit)
        for family, by_nh in announce.items():
            # A prefix is listed under each of its next hops (an IPv6 global and
            # link-local pair): keep them all, in order; the agent chooses.
            offered: dict[str, list[str]] = {}
            for nexthop, items in by_nh.items():
                for n in items:
                    offered.setdefault(str(n.get("nlri")), []).append(str(nexthop))
            for key, nhs in offered.items():
                if key not in rib:
                    inside = self._in_pools(key)
                    if not ((inside and self.inside[peer] < limit)
                            or len(rib) < limit + (SPARE if self.pools is not None else 0)):
                        self.refused += 1
                        continue
                    self.inside[peer] += inside
                rib[key] = (str(family), tuple(nhs), attrs)
                stale.discard(key)

    # -- the replay -----------------------------------------------------------------------

    def replay(self) -> Iterator[dict[str, Any]]:
        """The held routes as ExaBGP ``update`` events (grouped by family, next hops and
        attributes), then the ``relay-replayed`` marker."""
        for peer, rib in self.paths.items():
            groups: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
            for key, (family, nhs, attrs) in rib.items():
                if self._in_pools(key):
                    groups.setdefault((family, nhs, attrs), []).append(key)
            for (family, nhs, attrs), keys in groups.items():
                for i in range(0, len(keys), REPLAY_CHUNK):
                    chunk = [{"nlri": k} for k in keys[i:i + REPLAY_CHUNK]]
                    yield {"type": "update", "neighbor": {
                        **self.heads.get(peer, {"address": {"peer": peer}}),
                        "direction": "receive", "message": {"update": {
                            "attribute": json.loads(attrs),
                            "announce": {family: {nh: chunk for nh in nhs}}}}}}
        yield {"type": "relay-replayed",
               "complete": {p: sorted(f) for p, f in self.complete.items()}}

    def size(self) -> int:
        return sum(len(r) for r in self.paths.values())


class Relay:
    def __init__(self, path: str, retry: float = 0.2) -> None:
        self.path = path
        self.retry = retry
        self.sock: socket.socket | None = None
        self.announced: dict[tuple[str, str], str] = {}
        self.states: dict[str, str] = {}
        self.rib = AdjRibIn()
        self.dropped = 0
        self._from_exabgp = b""
        self._from_agent = b""
        self._out = bytearray()  # for the agent, not yet taken by its socket
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
        s.setblocking(False)
        hello = {"type": "relay-hello", "pid": os.getpid(),
                 "announced": list(self.announced.values()), "dropped": self.dropped,
                 "rib": True}
        self.dropped = 0
        self.sock = s
        self._from_agent = b""
        self._out = bytearray(_lines([hello]))
        self._out += b"".join((line + "\n").encode() for line in self.states.values())
        self._out += _lines(self.rib.replay())
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, "agent")

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
            self._out = bytearray()
            self._next_try = time.monotonic() + self.retry

    def _to_agent(self, data: bytes) -> None:
        if self.sock is None:
            return
        self._out += data
        if len(self._out) > MAX_BACKLOG:
            self._disconnect()
            return
        self._flush()

    def _flush(self) -> None:
        assert self.sock is not None
        try:
            while self._out:
                n = self.sock.send(self._out)
                del self._out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._disconnect()
            return
        self.sel.modify(self.sock, selectors.EVENT_READ
                        | (selectors.EVENT_WRITE if self._out else 0), "agent")

    def _on_agent(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
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
            if line.startswith("relay "):
                self._on_control(line)
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

    def _on_control(self, line: str) -> None:
        """``relay filter {json}``: the bounds of the adj-RIB-in (`AdjRibIn.set_filter`);
        ``relay replay``: the adj-RIB-in again (a pool was added, a limit raised)."""
        _, verb, arg = [*line.split(None, 2), "", ""][:3]
        if verb == "replay":
            self._to_agent(_lines(self.rib.replay()))
        elif verb == "filter":
            try:
                self.rib.set_filter(json.loads(arg))
            except (ValueError, KeyError, TypeError) as e:
                sys.stderr.write(f"bgp.relay: bad filter {arg!r}: {e}\n")

    # -- ExaBGP side ---------------------------------------------------------------------

    def _on_exabgp(self) -> bool:
        data = os.read(sys.stdin.fileno(), 65536)
        if not data:
            return False
        self._from_exabgp += data
        *lines, self._from_exabgp = self._from_exabgp.split(b"\n")
        forward = []
        for raw in lines:
            if raw.startswith(b"{"):
                self._record(raw)
            if self.sock is None:
                if raw.strip() not in (b"done", b"error", b""):
                    self.dropped += 1
                continue
            forward.append(raw + b"\n")
        if forward:
            self._to_agent(b"".join(forward))
        return True

    def _record(self, raw: bytes) -> None:
        """Keep the latest state per peer and the adj-RIB-in up to date."""
        if not any(t in raw for t in (b'"state"', b'"update"', b'"refresh"')):
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "state":
            with contextlib.suppress(KeyError, TypeError):
                self.states[str(msg["neighbor"]["address"]["peer"])] = raw.decode()
        try:
            self.rib.on_event(msg)
        except (AttributeError, TypeError, ValueError) as e:
            sys.stderr.write(f"bgp.relay: event not recorded ({e}): {raw[:200]!r}\n")

    def run(self) -> int:
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "exabgp")
        while True:
            if self.sock is None and time.monotonic() >= self._next_try:
                self._connect()
            timeout = None if self.sock is not None else max(
                0.0, self._next_try - time.monotonic())
            for key, events in self.sel.select(timeout):
                if key.data == "exabgp":
                    if not self._on_exabgp():
                        return 0
                    continue
                if self.sock is not None and events & selectors.EVENT_WRITE:
                    self._flush()
                if self.sock is not None and events & selectors.EVENT_READ:
                    self._on_agent()


def _lines(msgs: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join((json.dumps(m, separators=(",", ":")) + "\n").encode() for m in msgs)


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
