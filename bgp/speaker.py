"""Supervision of one node's ExaBGP and the agent side of its process API.

`BgpSpeaker` owns, for one node: when its ExaBGP runs (the process itself is
`bgp.exabgp.ExabgpProcess`: started in its own session inside the node's namespace, with
its own ``EXABGP_ROOT``, pid file and log under ``workdir``), the agent's BGP unix socket
that `bgp.relay` connects to, the import table (`bgp.rib`, fed from ExaBGP's messages as
`bgp.exabgp_api` decodes them) and the record of what is announced and reflected. It
never touches the kernel: the owner gets the import table through ``on_learned`` and
installs it.

Lifecycle and failure modes:

- ``start()`` adopts a running ExaBGP of this workdir (its pid file names a live process
  whose command line is ``exabgp ... <our config>``), else starts one once a config is set.
  Sessions thus survive an agent restart; the relay re-attaches within ``--retry``.
- On every attach the relay's hello says what ExaBGP announces; we diff it against the
  desired exports (announce the missing, withdraw the extra: nothing we still want
  flaps). The relay then replays each peer's adj-RIB-in (`bgp.relay.AdjRibIn`: what
  the peer announced and did not withdraw, recorded while we were away too) and says
  so (``relay-replayed``): the import table is complete without asking any peer, and
  what a peer withdrew meanwhile (or all of it, when its session went down) is simply
  not in the replay. No End-of-RIB or refresh answer is waited for, so a peer that
  ignores a route refresh (FRR 8.4 without graceful restart) costs nothing. Only the
  peers whose routes the relay does not know in full (it was respawned while their
  session was up) are asked for a refresh; what we hold from them stays meanwhile.
  A relay that replays nothing (no ``rib`` in its hello) gets the refresh of every
  peer, and the sync timeout covers peers that never answer.
- The attach is processed only once the owner has set exports and neighbours (the first
  ``set_neighbors``): a restarting agent that is not in sync yet withdraws nothing and
  loses no state event.
- ``on_learned`` is called when the import table changes and when it becomes complete
  (``in_sync``): the owner keeps the routes installed before a restart until then, and
  a table that is empty before and after (every peer removed meanwhile) changes nothing
  else, yet those routes must go.
- A crashed ExaBGP is restarted (backoff 1 s → 10 s); peers' routes are then held for the
  graceful-restart time (or dropped when GR is off) until the new sessions send End-of-RIB.
- ``set_config`` writes the file and signals SIGUSR1 (ExaBGP's reload) only when the text
  changed; ExaBGP re-establishes only neighbours whose definition changed. The signal
  waits until ExaBGP has its handler installed (``SigCgt``): a config change in the first
  few hundred ms after a start would otherwise kill it (SIGUSR1's default action). A
  change while ExaBGP is down, waiting for its restart, starts it; the restart then finds
  it running and starts no second one.
- End-of-RIB is ours to send (``manual-eor true`` in every neighbour): a freshly started
  ExaBGP would otherwise send it as soon as a session is up, before the relay has
  attached and we have re-announced, and a graceful-restart peer would flush our stale
  routes and re-add them a few ms later (pings lost). We send ``neighbor X announce eor
  ipv4 unicast`` on every "up" of X, after our announcements (ExaBGP sends queued routes
  before a queued EOR). A replayed "up" (agent restart) sends a redundant EOR: harmless.
- ExaBGP gives an API route only to the neighbours it has when the command comes, and
  keeps none while it has no neighbour: a neighbour added later (the first node of a
  cluster, a node joining, a new BGPPeer) would never get our blocks. So every "up"
  re-sends all our announcements before the EOR (the neighbours that have them drop the
  repeats), and nothing is sent for all neighbours while there is none.
- What peers may make us hold is bounded (`bgp.rib`: only inside the pools, at most the
  peer's max-prefix limit: `NeighborSpec.max_prefixes`, else this speaker's
  ``max_prefixes``). ``set_neighbors`` applies a changed limit to the import table
  without touching ExaBGP (the limit is not in its configuration: no reload, no session
  reset); a raised limit of a peer that had prefixes refused (or a pool added) asks the
  relay to replay what it kept beyond our bounds and the peer for a route refresh, so
  they come now; a lowered one keeps what is held and refuses new prefixes. The relay
  is told those bounds (``relay filter``) whenever they change.
  ``peer_status`` shows each peer's limit (``maxPrefixes``) and, in ``info``, a peer at
  it; ``prefixes_dropped`` counts the refused announcements.
- ``stop(drain=False)`` is an agent restart: ExaBGP keeps running. ``stop(drain=True)``
  withdraws everything, waits for it to go out, then stops ExaBGP (GR would otherwise keep
  our routes at the peers for the restart time).

One module of about 700 lines on purpose: it is one state machine, the agent's side of
one ExaBGP API session. Attach and replay, exports, session events, reflection and status
all read and change the same state (``peers``, ``announced``, ``reflected``, the import
table, ``in_sync``), and the order of what they send on that one connection is the
invariant (our routes, then reflected ones, then End-of-RIB). What has no part in that
state lives beside it: the process (`bgp.exabgp`), the message decoding
(`bgp.exabgp_api`) and what to reflect (`bgp.reflect`).

Route reflection: ExaBGP keeps no RIB and reflects nothing. When a neighbour is marked
``rr_client`` (we are its reflector) we re-announce, per neighbour, what
`bgp.reflect.reflected_routes` says (RFC 4456 rules), sending only the difference to what
was sent. On every "up" of a neighbour its reflected routes are sent again, before its
End-of-RIB, like our own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Any

from bgp.config import NeighborSpec, render_config
from bgp.exabgp import ExabgpProcess
from bgp.exabgp_api import STATE_NAMES, choose_nexthop, marker_version, parse_update
from bgp.reflect import reflected_routes
from bgp.relay import route_key, withdraw_line
from bgp.rib import DEFAULT_MAX_PREFIXES, ImportTable, Path

log = logging.getLogger(__name__)

Learned = dict[str, tuple[str, ...]]


def relay_command(socket_path: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "bgp.relay", "--socket", socket_path]


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class _PeerState:
    def __init__(self, now: float) -> None:
        self.state = "Idle"
        self.since = now
        self.refresh_pending = False


class BgpSpeaker:
    def __init__(self, node: str, *, netns: str | None, socket_path: str, workdir: FsPath,
                 exabgp_bin: str, python: str = sys.executable,
                 on_learned: Callable[[Learned], None] | None = None,
                 now: Callable[[], float] = time.time,
                 sync_timeout: float = 3.0,
                 max_prefixes: int = DEFAULT_MAX_PREFIXES) -> None:
        self.node = node
        self.netns = netns
        self.socket_path = socket_path
        self.workdir = FsPath(workdir)
        self.python = python
        self.on_learned = on_learned
        self.now = now
        self.sync_timeout = sync_timeout
        self.exabgp = ExabgpProcess(node, netns=netns, workdir=self.workdir,
                                    exabgp_bin=exabgp_bin, now=now,
                                    peers_down=self._a_neighbor_is_down)
        self.rib = ImportTable(max_prefixes)
        self.neighbors: dict[str, NeighborSpec] = {}
        self.peers: dict[str, _PeerState] = {}
        self.exports: set[str] = set()
        self.communities: tuple[str, ...] = ()
        # The next hop of our IPv6 exports (the Node's bgp.ipv6Address): IPv6 prefixes go
        # out over the IPv4 sessions (MP-BGP) with it; without it they are not announced.
        self.nexthop6: str | None = None
        self.announced: dict[str, str] = {}  # prefix -> the announce line ExaBGP has
        self.reflected: dict[tuple[str, str], str] = {}  # (neighbor, prefix) -> line
        self.learned: Learned = {}
        self._pools: list[str] = []
        self._own_blocks: list[str] = []
        self.attached = asyncio.Event()
        # Set by the first set_neighbors (owners call set_exports first): until then an
        # attaching relay waits, see _on_relay.
        self.configured = asyncio.Event()
        self.in_sync = False  # import table complete after the last attach
        self._emitted_in_sync = False  # in_sync as the owner last heard of it (_emit)
        # The interface holding a local address (``10.99.1.1`` -> ``eth1``): a link-local
        # IPv6 next hop is installed on the interface of the session it came on. The
        # owner sets it (it reads the kernel); None: link-local next hops are unusable.
        self.interface_of: Callable[[str], str | None] | None = None
        self._replaying = False  # between a relay's hello and its relay-replayed
        self._relay_filter: str | None = None  # the last filter line the relay got
        self._no_nexthop_logged: set[str] = set()
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        # Commands sent and not yet answered: ExaBGP acks each one, in order, with
        # "done" or "error", so an error names its command.
        self._unanswered: deque[str] = deque(maxlen=10_000)
        self._tasks: list[asyncio.Task[Any]] = []
        self._emit_scheduled = False
        self._stopping = False
        self._attach_time = 0.0

    # -- process supervision -------------------------------------------------------------

    def running(self) -> bool:
        return self.exabgp.running()

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            await asyncio.sleep(0.25)
            now = self.now()
            if self.rib.expire(now):
                self._schedule_emit()
            if (not self.in_sync and self.attached.is_set() and not self._replaying
                    and now - self._attach_time > self.sync_timeout):
                self._mark_in_sync("timeout")
            if self.running():
                self.exabgp.tick(now)
            if self.exabgp.text is None or self.running():
                continue
            if self.exabgp.pid is not None:
                log.error("exabgp pid %d of node %s died; restarting in %.0f s",
                          self.exabgp.pid, self.node, backoff)
                self._exabgp_gone()
                self.exabgp.died()
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
                self.exabgp.restarts += 1
            # set_config may have started one meanwhile: a second could not bind the BGP
            # port, and the first would run unsupervised.
            if not self._stopping and not self.running():
                self.exabgp.launch()

    def _exabgp_gone(self) -> None:
        """All sessions are down: hold peers' routes for their GR time (or drop them)."""
        now = self.now()
        for ip, st in self.peers.items():
            n = self.neighbors.get(ip)
            self.rib.peer_down(ip, restart_time=n.graceful_restart if n else 0, now=now)
            st.state, st.since = "Idle", now
        self.announced.clear()
        self.reflected.clear()
        self._schedule_emit()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        FsPath(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._on_relay, self.socket_path,
                                                       limit=1 << 24)
        self.exabgp.adopt()
        self._tasks.append(asyncio.create_task(self._supervise(), name="bgp-supervise"))

    async def stop(self, drain: bool = False) -> None:
        if drain and self._writer is not None:
            await self.set_exports(set())
            self._send([f"neighbor {ip} withdraw route {p}" for ip, p in self.reflected])
            self.reflected.clear()
            await asyncio.sleep(0.5)  # let ExaBGP send the withdrawals before it stops
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
        if drain:
            await self.exabgp.terminate()

    # -- configuration -------------------------------------------------------------------

    async def set_neighbors(self, neighbors: Mapping[str, NeighborSpec]) -> bool:
        self.neighbors = dict(neighbors)
        now = self.now()
        for ip in self.neighbors:
            self.peers.setdefault(ip, _PeerState(now))
        for ip in list(self.peers):
            if ip not in self.neighbors:
                del self.peers[ip]
                self.rib.forget(ip)
                self._schedule_emit()
        raised = [ip for ip, n in self.neighbors.items()
                  if self.rib.set_limit(ip, n.max_prefixes)
                  and self.peers[ip].state == "Established"]
        self._sync_relay_filter()
        if raised:
            # Prefixes refused under the old limit are not stored (bgp.rib): the relay
            # keeps some beyond it (`bgp.relay.AdjRibIn`) and replays them; the peers are
            # asked too, for what it could not keep (one may ignore the request).
            log.info("max-prefix limit of %s raised: asking the relay for its routes and "
                     "the peers for a route refresh", ", ".join(raised))
            self._send_relay("relay replay")
            for ip in raised:
                self._send([f"neighbor {ip} announce route-refresh {f}"
                            for f in self._families(ip)])
        changed = await self.set_config(render_config(
            self.neighbors, relay_command(self.socket_path, self.python)))
        self.configured.set()
        return changed

    async def set_config(self, text: str) -> bool:
        """Write the config and reload ExaBGP if it changed. True if something was done."""
        if not self.exabgp.write_config(text):
            return False
        if self.running():
            self.exabgp.reload()
        elif not self._stopping and self._server is not None:
            self.exabgp.launch()
        return True

    def set_filter(self, pools: Iterable[str], own_blocks: Iterable[str]) -> None:
        """Import only inside ``pools``; never ``own_blocks`` (nor our exports)."""
        self._pools, self._own_blocks = list(pools), list(own_blocks)
        grown = self.rib.set_filter(self._pools, self._own_blocks, self.exports)
        self._sync_relay_filter()  # before a refresh: the relay must keep its answer
        if grown and any(st.state == "Established" for st in self.peers.values()):
            # Paths inside a new pool were never stored (bgp.rib): the relay kept some
            # outside the pools and replays them; the peers are asked again too.
            log.info("pools added: asking the relay for its routes and the peers for a "
                     "route refresh")
            self._send_relay("relay replay")
            self._send_to_all(self._refresh_all())
        self._schedule_emit()

    # -- exports -------------------------------------------------------------------------

    def _families(self, peer: str) -> list[str]:
        """The address families of the session with ``peer`` (ExaBGP's names)."""
        n = self.neighbors.get(peer)
        return ["ipv4 unicast", "ipv6 unicast"] if n is not None and n.ipv6 else ["ipv4 unicast"]

    def _refresh_all(self) -> list[str]:
        """Route-refresh requests to every neighbour, for each of its families. IPv6 is
        asked for first: a peer answers in order, and its IPv4 End-of-RIB is what ends
        the wait for a complete table (`_check_sync`), so IPv6 paths are in by then (a
        peer without IPv6 only answers that request with an error)."""
        lines = [f"neighbor {ip} announce route-refresh ipv6 unicast"
                 for ip, n in sorted(self.neighbors.items()) if n.ipv6]
        return [*lines, "announce route-refresh ipv4 unicast"]

    def _announce_line(self, prefix: str) -> str | None:
        """ExaBGP's command announcing ``prefix``; None for an IPv6 prefix while we have no
        IPv6 next hop (``next-hop self`` would give the peers our IPv4 address)."""
        if ":" in prefix:
            if self.nexthop6 is None:
                return None
            line = f"announce route {prefix} next-hop {self.nexthop6}"
        else:
            line = f"announce route {prefix} next-hop self"
        if self.communities:
            line += f" community [ {' '.join(self.communities)} ]"
        return line

    async def set_exports(self, prefixes: set[str],
                          communities: Iterable[str] | None = None) -> None:
        """Desired announcements; only the difference to what ExaBGP has goes out."""
        if communities is not None:
            self.communities = tuple(communities)
        self.exports = set(prefixes)
        self.rib.set_filter(self._pools, self._own_blocks, self.exports)
        self._schedule_emit()
        await self._sync_exports()

    async def _sync_exports(self) -> None:
        if self._writer is None:
            return
        lines = []
        for p in sorted(self.announced.keys() - self.exports):
            lines.append(withdraw_line(p))
            del self.announced[p]
        for p in sorted(self.exports):
            line = self._announce_line(p)
            if line is None:  # an IPv6 prefix and no IPv6 next hop (any more)
                if self.announced.pop(p, None) is not None:
                    lines.append(withdraw_line(p))
                continue
            if self.announced.get(p) != line:
                lines.append(line)
                self.announced[p] = line
        self._send_to_all(lines)
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    def _send_to_all(self, lines: list[str]) -> None:
        """Commands for every neighbour: none while there is none (ExaBGP would answer
        each with an error). Announcements are kept in ``announced`` all the same, and
        sent to each neighbour when its session comes up."""
        if self.neighbors:
            self._send(lines)

    def _sync_relay_filter(self) -> None:
        """Tell the relay what its adj-RIB-in may hold: what our import table stores
        (inside the pools, each configured peer's limit), so that a replay brings back
        what we would have kept, and a flood costs the relay no more than us."""
        if self._writer is None:
            return
        line = "relay filter " + json.dumps({
            "pools": self._pools, "default": self.rib.max_prefixes,
            "limits": {ip: self.rib.limit(ip) for ip in sorted(self.neighbors)}},
            separators=(",", ":"))
        if line != self._relay_filter:
            self._send_relay(line)
            self._relay_filter = line

    def _send_relay(self, line: str) -> None:
        """A command of the relay's own: ExaBGP never sees it, nor acks it."""
        if self._writer is None:
            return
        try:
            self._writer.write((line + "\n").encode())
        except (ConnectionError, RuntimeError):
            self._writer = None

    def _send(self, lines: list[str]) -> None:
        if not lines or self._writer is None:
            return
        try:
            self._writer.write("".join(line + "\n" for line in lines).encode())
            self._unanswered.extend(lines)
        except (ConnectionError, RuntimeError):
            self._writer = None

    # -- the relay connection ------------------------------------------------------------

    async def _on_relay(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()
        # Race: an agent restarting attaches to the running relay before its datastore is
        # in sync. Diffing the relay's announced set against exports not yet known would
        # withdraw every block (traffic to the node's pods stops until they are announced
        # again), and state events and the refresh answer for neighbours not yet known
        # would be dropped (peers shown Idle, learned routes swept after the sync timeout).
        # So wait for the first configuration; meanwhile the relay's lines queue in the
        # socket (it gives up after its send timeout and reconnects).
        await self.configured.wait()
        try:
            hello = json.loads(await reader.readline())
            assert hello.get("type") == "relay-hello"
        except (ValueError, AssertionError, ConnectionError):
            writer.close()
            return
        self._writer = writer
        self._unanswered.clear()
        self._relay_filter = None
        self._sync_relay_filter()
        self._on_hello(hello)
        await self._sync_exports()
        self.attached.set()
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                self.on_relay_line(raw)
        except (ConnectionError, ValueError) as e:
            log.warning("relay connection: %s", e)
        finally:
            if self._writer is writer:
                self._writer = None
                self.attached.clear()
            writer.close()

    def _on_hello(self, hello: Mapping[str, Any]) -> None:
        self.announced.clear()
        self.reflected.clear()
        for line in hello.get("announced", []):
            key = route_key(line)
            if key is None:
                continue
            sel, _, prefix = key
            if sel:
                self.reflected[(sel, prefix)] = line
            else:
                self.announced[prefix] = line
        self.in_sync = False
        self._attach_time = self.now()
        if hello.get("rib"):
            log.info("relay pid %s attached: exabgp announces %d prefixes; replaying the "
                     "peers' routes (%d events came while detached)", hello.get("pid"),
                     len(self.announced), hello.get("dropped", 0))
            # What we hold from a live session (the relay, not we, restarted) is checked
            # against the replay: what it does not bring back was withdrawn meanwhile.
            self._replaying = True
            for ip, st in self.peers.items():
                st.refresh_pending = False
                if st.state == "Established":
                    self.rib.mark_stale(ip)
            return
        log.info("relay pid %s attached: exabgp announces %d prefixes, %d updates were lost",
                 hello.get("pid"), len(self.announced), hello.get("dropped", 0))
        for st in self.peers.values():
            st.refresh_pending = st.state == "Established"
        # Peers without enhanced route refresh would send no End-of-RIB: the sync timeout
        # covers them.
        self._send_to_all(self._refresh_all())

    def _on_replayed(self, complete: Mapping[str, Any]) -> None:
        """The relay has replayed its adj-RIB-in. For each established peer whose routes
        it knows in full, what we held and it did not replay is gone (swept); for a peer
        it knows only in part (it was respawned while the session was up) we keep what we
        hold and ask for a route refresh (its Begin/End-of-RIB markers sweep, if the peer
        sends them). Peers not established keep what the down/up rules gave them
        (graceful restart)."""
        self._replaying = False
        asked = []
        for ip, st in self.peers.items():
            if st.state != "Established":
                continue
            known = {str(f) for f in complete.get(ip, ())}
            if "*" in known:
                self.rib.sweep(ip)
                continue
            families = []
            for afi, version in (("ipv6", 6), ("ipv4", 4)):
                if afi in known:
                    self.rib.sweep(ip, version)
                else:
                    self.rib.unmark_stale(ip, version)
                    if f"{afi} unicast" in self._families(ip):
                        families.append(f"{afi} unicast")
            if families:
                asked.append(ip)
                st.refresh_pending = "ipv4 unicast" in families
                self._send([f"neighbor {ip} announce route-refresh {f}" for f in families])
        if asked:
            log.warning("the relay holds only part of the routes of %s (it restarted while "
                        "their sessions were up): asked them for a route refresh; what they "
                        "withdrew meanwhile stays until they send it or the session resets",
                        ", ".join(asked))
        self._schedule_emit()
        if not any(st.refresh_pending for st in self.peers.values()):
            self._mark_in_sync("the relay replayed every peer's routes")

    def _mark_in_sync(self, why: str) -> None:
        if not self.in_sync:
            self.in_sync = True
            log.info("bgp import table in sync (%s)", why)
            self._schedule_emit()

    def _check_sync(self) -> None:
        if not self.in_sync and not any(st.refresh_pending for st in self.peers.values()) \
                and any(st.state == "Established" for st in self.peers.values()):
            self._mark_in_sync("every established peer sent End-of-RIB")

    def on_relay_line(self, raw: bytes) -> None:
        """One line from the relay: ExaBGP's ack of a command, one of its JSON messages
        (session state, update, End-of-RIB, route refresh) or the relay's own
        ``relay-replayed``. The relay connection feeds them in order; so do tests."""
        if not raw.startswith(b"{"):
            ack = raw.strip()
            if ack in (b"done", b"error"):
                cmd = self._unanswered.popleft() if self._unanswered else "?"
                if ack == b"error":
                    log.warning("exabgp rejected the command %r", cmd)
            return
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "relay-replayed":
            if self._replaying:  # the end of the attach's replay, not of one we asked for
                self._on_replayed(msg.get("complete") or {})
            return
        nb = msg.get("neighbor") or {}
        peer = str((nb.get("address") or {}).get("peer", ""))
        if peer not in self.peers:
            return
        st = self.peers[peer]
        now = self.now()
        if kind == "state":
            state = STATE_NAMES.get(nb.get("state", ""), str(nb.get("state")))
            if state != st.state:
                st.state, st.since = state, now
            if nb.get("state") == "down":
                n = self.neighbors.get(peer)
                self.rib.peer_down(peer, restart_time=n.graceful_restart if n else 0, now=now)
                st.refresh_pending = False
                self._check_sync()
                self._schedule_emit()
            elif nb.get("state") == "up":
                # manual-eor: the End-of-RIB follows our announcements. ExaBGP gives a
                # route from the API only to the neighbours configured when the command
                # came (and rejects it when there is none): a neighbour added since (a
                # node joining, a new BGPPeer, a changed definition) has none of our
                # routes. So every "up" sends them all again; peers that have them drop
                # the repeats (ExaBGP's adj-rib-out cache), then this End-of-RIB.
                # Routes we reflect to this peer likewise, and before the End-of-RIB (a
                # graceful-restart peer sweeps at it what it held from us): forgotten as
                # sent, they go out again now, even when this "up" came in the same read
                # as the "down" (no reflection ran between them to withdraw them).
                self._send(sorted(self.announced.values()))
                self.reflected = {k: v for k, v in self.reflected.items() if k[0] != peer}
                self._reflect()
                self._send([f"neighbor {peer} announce eor {f}" for f in self._families(peer)])
                # A fresh session sends its table and End-of-RIB (no refresh needed). An
                # "up" the relay replays is an old session: the replay has its table.
                st.refresh_pending = not self.in_sync and not self._replaying
        elif kind == "update":
            message = nb.get("message") or {}
            if "eor" in message:
                self._end_of_rib(peer, st, marker_version(message["eor"]))
            else:
                local = str((nb.get("address") or {}).get("local", ""))
                self._on_update(peer, message.get("update") or {}, local)
            self._schedule_emit()
        elif kind == "refresh":
            rr = nb.get("route-refresh") or {}
            sub = rr.get("subtype")
            if sub == "begin":
                self.rib.mark_stale(peer, version=marker_version(rr))
            elif sub == "end":
                self._end_of_rib(peer, st, marker_version(rr))
                self._schedule_emit()

    def _end_of_rib(self, peer: str, st: _PeerState, version: int | None) -> None:
        """The end of ``peer``'s routes of one family (End-of-RIB, or the end of a
        refresh): that family's paths still stale go. IPv4's, which comes last (see
        `_refresh_all`), also ends the wait for the peer's complete table."""
        self.rib.sweep(peer, version)
        if version != 6:
            st.refresh_pending = False
            self._check_sync()

    def _session_interface(self, peer: str, local: str) -> str | None:
        """The interface of the session with ``peer``: the one holding its local
        address (as the event names it, else as configured)."""
        n = self.neighbors.get(peer)
        address = local or (n.local_address if n is not None else "")
        if not address or self.interface_of is None:
            return None
        return self.interface_of(address)

    def _on_update(self, peer: str, update: Mapping[str, Any], local: str = "") -> None:
        msg = parse_update(update)
        interface: list[str | None] = []

        def session_interface() -> str | None:  # looked up once, and only if needed
            if not interface:
                interface.append(self._session_interface(peer, local))
            return interface[0]

        for prefix, nexthops in msg.offered.items():
            chosen = choose_nexthop(nexthops, session_interface)
            if chosen is None:
                # Replaces what the peer sent before (an implicit withdrawal).
                self.rib.withdraw(peer, prefix)
                if peer not in self._no_nexthop_logged:
                    self._no_nexthop_logged.add(peer)
                    log.warning("peer %s offers no usable next hop for %s (%s; the "
                                "session's interface: %s): not installed (logged once "
                                "per peer)", peer, prefix, ", ".join(nexthops),
                                session_interface())
                continue
            self.rib.announce(peer, prefix, Path(
                nexthop=chosen, as_path=msg.as_path, originator_id=msg.originator_id,
                cluster_list=msg.cluster_list))
        for prefix in msg.withdrawn:
            self.rib.withdraw(peer, prefix)

    # -- output to the owner -------------------------------------------------------------

    def _schedule_emit(self) -> None:
        if not self._emit_scheduled:
            self._emit_scheduled = True
            with contextlib.suppress(RuntimeError):  # no running loop: emitted on next event
                asyncio.get_running_loop().call_soon(self._emit)


    def _emit(self) -> None:
        self._emit_scheduled = False
        table = self.rib.table()
        self._reflect()
        # The owner also hears of the import table becoming complete: a restarted agent
        # keeps its predecessor's routes until then, and an empty table (every peer gone
        # while it was away) is no change of `learned`, yet those routes must go now.
        if table != self.learned or self.in_sync != self._emitted_in_sync:
            self.learned = table
            self._emitted_in_sync = self.in_sync
            if self.on_learned is not None:
                self.on_learned(dict(table))

    def _reflect(self) -> None:
        """Re-announce learned routes to our route-reflector clients (and from clients),
        as `bgp.reflect.reflected_routes` has them; withdraw what no longer goes."""
        if self._writer is None or not any(n.rr_client for n in self.neighbors.values()):
            return
        up = [ip for ip, st in self.peers.items() if st.state == "Established"
              and ip in self.neighbors and self.neighbors[ip].ibgp]
        want = reflected_routes(self.rib.best(), self.neighbors, up, self.exports)
        lines = [f"neighbor {d} withdraw route {p}" for (d, p) in self.reflected.keys()
                 - want.keys()]
        lines += [line for k, line in sorted(want.items()) if self.reflected.get(k) != line]
        self.reflected = want
        self._send(lines)

    def prefixes_dropped(self) -> dict[str, int]:
        """Per configured peer: new prefixes refused at its max-prefix limit."""
        return {ip: self.rib.dropped(ip) for ip in sorted(self.neighbors)}

    def _a_neighbor_is_down(self) -> bool:
        """Whether some configured neighbour's session is not Established."""
        return any((st := self.peers.get(ip)) is None or st.state != "Established"
                   for ip in self.neighbors)

    def peer_status(self) -> list[dict[str, Any]]:
        """One dict per configured neighbour, NodeStatus ``status.bgp.peers[]`` shape."""
        out = []
        for ip in sorted(self.neighbors):
            n = self.neighbors[ip]
            st = self.peers.get(ip)
            up = st is not None and st.state == "Established"
            limit = self.rib.limit(ip)
            row: dict[str, Any] = {
                "peerIP": ip, "type": n.type, "asNumber": n.peer_as,
                "state": st.state if st else "Idle",
                "since": _iso(st.since if st else None),
                "prefixesIn": self.rib.accepted(ip),
                "prefixesOut": (len(self.announced)
                                + sum(1 for d, _ in self.reflected if d == ip)) if up else 0,
                "maxPrefixes": limit,
            }
            info = []
            if self._writer is None:
                info.append("exabgp not attached")
            over = self.rib.over_limit(ip)
            if self.rib.limited(ip) or over:
                text = (f"max-prefix {limit} reached: "
                        f"{self.rib.dropped(ip)} announcements dropped")
                if over:
                    text += (f", {self.rib.stored(ip)} held (kept when the limit was "
                             "lowered)")
                info.append(text)
            if info:
                row["info"] = "; ".join(info)
            out.append(row)
        return out
