"""bgp.drain: a stopped agent's relay is answered with the withdrawal of every announce
line it reports; an agent still listening is left alone. A fake relay (a thread with the
relay's socket protocol, acking like ExaBGP) stands in for the real one."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from bgp.drain import drain_via_relay, withdraw_lines

ANNOUNCED = ["announce route 10.244.1.0/26 next-hop self",
             "announce route 10.244.9.7/32 next-hop self community [ 65000:1 ]",
             "neighbor 10.0.0.3 announce route 10.244.2.0/26 next-hop 10.0.0.2 "
             "originator-id 10.0.0.2 cluster-list [ 1.1.1.1 ] as-path [ ]"]


def test_withdraw_lines_undo_ours_and_reflected() -> None:
    assert withdraw_lines([*ANNOUNCED, "announce route-refresh ipv4 unicast", "junk"]) == [
        "withdraw route 10.244.1.0/26 next-hop self",
        "withdraw route 10.244.9.7/32 next-hop self",
        "neighbor 10.0.0.3 withdraw route 10.244.2.0/26"]
    # An IPv6 block goes out with an address as next hop: its withdrawal names none
    # (ExaBGP refuses "next-hop self" there, and a graceful-restart peer then kept the
    # drained node's block for the restart time).
    assert withdraw_lines(["announce route fd44::/122 next-hop fd98:2::2"]) == [
        "withdraw route fd44::/122"]


def fake_relay(path: str, got: list[str]) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close()
                time.sleep(0.02)  # the relay's retry
                continue
            hello = {"type": "relay-hello", "pid": 1, "announced": ANNOUNCED, "dropped": 0}
            s.sendall((json.dumps(hello) + "\n").encode())
            buf = b""
            with s:
                while buf.count(b"\n") < 3:
                    buf += s.recv(4096)
                got.extend(buf.decode().splitlines())
                s.sendall(b'{"type": "state"}\ndone\ndone\n')
                s.sendall(b"done\n")
            return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_drain_answers_the_relay_with_withdrawals(tmp_path: Path) -> None:
    path = str(tmp_path / "bgp-n1.sock")
    Path(path).touch()  # the dead agent's socket file is still there
    got: list[str] = []
    t = fake_relay(path, got)
    assert drain_via_relay(path, timeout=3, settle=0) == 3
    t.join(5)
    assert got == withdraw_lines(ANNOUNCED)
    assert not Path(path).exists()


def test_no_relay_or_a_live_agent_means_no_drain(tmp_path: Path) -> None:
    path = str(tmp_path / "bgp-n1.sock")
    t0 = time.monotonic()
    assert drain_via_relay(path, timeout=0.3, settle=0) is None
    assert time.monotonic() - t0 < 2
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.bind(path)
    agent.listen(1)
    try:
        assert drain_via_relay(path, timeout=0.3, settle=0) is None
        assert Path(path).exists(), "the live agent's socket was taken away"
    finally:
        agent.close()
