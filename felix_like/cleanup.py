"""``fabric-agent --cleanup``: remove everything the agent ever installed on this node.

Owned, hence removed: routes of our two protocols (``proto l3fabric``, ``l3fabric-bgp``),
veths whose name starts with ``fab`` (their per-interface sysctls go with them), the
nftables table ``inet l3fabric`` and our iptables chains/ipsets (``fab-`` prefixed), the
CNI socket. Nothing else is touched: not other protocols' routes, not other tables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from felix_like.netlink import open_iproute, run_in_netns
from felix_like.owned import HOST_IF_PREFIX
from felix_like.routes import OWNED_PROTOS, RT_TABLE_MAIN

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    routes: int = 0
    veths: int = 0
    nft_table: bool = False
    exabgp: int = 0

    def __str__(self) -> str:
        return (f"removed {self.routes} routes, {self.veths} veths"
                f"{', nft table inet l3fabric' if self.nft_table else ''}"
                f", stopped {self.exabgp} ExaBGP")


def stop_exabgp(socket_path: str) -> int:
    """Stop the ExaBGP speakers the agent left running (their pid files sit in
    ``<socket dir>/bgp-<node>/``, the agent's BGP socket beside it as
    ``bgp-<node>.sock``). Each is drained first (`bgp.drain`: its relay reports what is
    announced and we withdraw it), so peers drop the node's routes within a second
    instead of keeping them for their graceful-restart time. When no drain is possible
    (an agent still running, the relay gone) ExaBGP is stopped as it is."""
    from bgp.drain import drain_via_relay

    stopped = 0
    for pidfile in Path(socket_path).parent.glob("bgp-*/exabgp.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"exabgp" not in f.read():
                    continue
        except (OSError, ValueError):
            continue
        bgp_socket = pidfile.parent.parent / f"{pidfile.parent.name}.sock"
        withdrawn = drain_via_relay(str(bgp_socket))
        log.info("cleanup: ExaBGP pid %d drained (%s withdrawals acknowledged)", pid,
                 "no" if withdrawn is None else withdrawn)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(30):
                time.sleep(0.1)
                if _exited(pid):
                    break
            else:
                os.kill(pid, signal.SIGKILL)
        stopped += 1
        pidfile.unlink(missing_ok=True)
    return stopped


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody reaps yet (its parent, the agent, is gone too): a signal
    to it would still succeed, so ``kill(pid, 0)`` alone waited the whole 3 s."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def cleanup(netns: str | None = None, socket_path: str | None = None) -> CleanupReport:
    rep = CleanupReport()
    if socket_path:
        rep.exabgp = stop_exabgp(socket_path)
    ipr = open_iproute(netns)
    try:
        for family in (2, 10):
            for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if msg["proto"] not in OWNED_PROTOS:
                    continue
                with contextlib.suppress(Exception):
                    ipr.route("del", family=family, dst=_dst(msg), proto=msg["proto"],
                              table=RT_TABLE_MAIN)
                    rep.routes += 1
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            kind = None
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None:
                kind = info.get_attr("IFLA_INFO_KIND")
            if name.startswith(HOST_IF_PREFIX) and kind == "veth":
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
                    rep.veths += 1
    finally:
        ipr.close()
    if shutil.which("nft"):
        r = run_in_netns(netns, lambda: subprocess.run(
            ["nft", "list", "table", "inet", "l3fabric"], capture_output=True))
        rep.nft_table = r.returncode == 0
    # Both policy backends remove what they own (nft table; iptables chains and ipsets).
    from felix_like.policy.manager import PolicyManager

    for backend in ("nftables", "iptables"):
        try:
            PolicyManager(backend, netns, "", host_addresses=()).cleanup()
        except Exception as e:  # a backend whose tools are missing has nothing to remove
            log.debug("cleanup of the %s policy backend: %s", backend, e)
    if socket_path:
        with contextlib.suppress(FileNotFoundError):
            Path(socket_path).unlink()
    log.info("cleanup: %s", rep)
    return rep


def _dst(msg: object) -> str:
    dst = msg.get_attr("RTA_DST")  # type: ignore[attr-defined]
    plen = msg["dst_len"]  # type: ignore[index]
    return f"{dst}/{plen}"
