"""Withdraw what a stopped agent's ExaBGP still announces, before ExaBGP is stopped.

Used by ``fabric-agent --cleanup`` (`felix_like.cleanup.stop_exabgp`) when the node is
removed. Why: graceful restart keeps our routes at every peer for its restart time when
ExaBGP just stops (also on SIGTERM: with GR negotiated ExaBGP closes without a
NOTIFICATION), so traffic to the node's pods is black-holed for that long.

How, with no new protocol: the agent is stopped, so its ExaBGP's relay (`bgp.relay`)
retries connecting to the agent's BGP socket every ``--retry`` seconds. We listen on that
socket ourselves, take the relay's hello (it lists every announce line still in effect),
answer each with its withdraw, wait for ExaBGP's acks (``done``/``error``, one per
command) and give ExaBGP a moment to put the UPDATEs on the wire. The caller then sends
SIGTERM. Standard library only.

Owned: the socket path for the duration of the call (removed afterwards). Failure modes:
an agent still listening on the socket (we must not steal it: we return None and the
caller stops ExaBGP as before); no relay within ``timeout`` (ExaBGP or its relay dead:
None); a partial drain is still a drain of what was acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

from bgp.relay import route_key, withdraw_line

log = logging.getLogger(__name__)


def withdraw_lines(announced: list[str]) -> list[str]:
    """The commands that undo the relay's announce lines (ours and reflected ones)."""
    out = []
    for line in announced:
        key = route_key(line)
        if key is None or key[1] != "announce":
            continue
        sel, _, prefix = key
        out.append(f"neighbor {sel} withdraw route {prefix}" if sel
                   else withdraw_line(prefix))
    return out


def _agent_listening(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def drain_via_relay(socket_path: str, timeout: float = 3.0, settle: float = 0.5) -> int | None:
    """Withdraw every route the relay at ``socket_path`` reports. Returns how many
    withdrawals ExaBGP acknowledged, or None when no drain was possible."""
    if _agent_listening(socket_path):
        log.warning("drain: an agent still listens on %s; not draining", socket_path)
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(socket_path)
        srv.listen(1)
        srv.settimeout(timeout)
        try:
            conn, _ = srv.accept()
        except OSError:
            log.warning("drain: no relay connected to %s within %.1f s", socket_path, timeout)
            return None
        with conn:
            return _drain(conn, timeout, settle)
    finally:
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)


def _drain(conn: socket.socket, timeout: float, settle: float) -> int | None:
    deadline = time.monotonic() + timeout
    conn.settimeout(timeout)
    buf = b""
    try:
        while b"\n" not in buf:
            data = conn.recv(1 << 16)
            if not data:
                return None
            buf += data
        head, _, buf = buf.partition(b"\n")
        hello = json.loads(head)
        if hello.get("type") != "relay-hello":
            return None
    except (OSError, ValueError):
        return None
    lines = withdraw_lines(list(hello.get("announced", [])))
    if not lines:
        return 0
    conn.sendall("".join(line + "\n" for line in lines).encode())
    acked = 0
    # ExaBGP answers each command with done or error (its api.ack default is on); state
    # and update JSON lines may come in between.
    while acked < len(lines) and time.monotonic() < deadline:
        *got, buf = buf.split(b"\n")
        acked += sum(1 for g in got if g.strip() in (b"done", b"error"))
        if acked >= len(lines):
            break
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = conn.recv(1 << 16)
        except OSError:
            break
        if not data:
            break
        buf += data
    # The acks mean ExaBGP took the withdrawals into its RIB; its peer loops put them on
    # the wire within a reactor turn (ms). Stopping it at once could lose them.
    time.sleep(settle)
    log.info("drain: %d withdrawals sent, %d acknowledged", len(lines), acked)
    return acked
