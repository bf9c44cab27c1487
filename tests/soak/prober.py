"""TCP and UDP servers in every pod, and probes between pods, from one process.

A socket belongs to the network namespace its creator was in when it made it, and stays
there. So this process makes each pod's listening sockets (TCP `TCP_PORT`, UDP `UDP_PORT`)
and each probe's client socket after a ``setns`` of the creating thread into the pod's
namespace, and goes back: no server process per pod, no ``ip netns exec`` per probe.

Owned: the sockets of the pods `serve` was given, closed by `forget` (before the pod's
DEL) and `close`. Nothing here resolves names or touches the root namespace's network.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

TCP_PORT = 8080
UDP_PORT = 5353
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()


@contextlib.contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """The calling thread in namespace ``name`` for the block (sockets made there stay)."""
    with _setns_lock:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {name}")
            try:
                yield
            finally:
                if _libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(target)
            os.close(home)


@dataclass(frozen=True)
class Probe:
    src: str  # pod key
    src_ns: str
    dst: str
    dst_ip: str
    proto: str  # "tcp" or "udp"


class Prober:
    def __init__(self) -> None:
        # A batch of probes holds one socket each, beside four per pod: allow 4,096.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if 0 <= soft < 4096:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (4096 if hard < 0 else min(4096, hard), hard))
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pods: dict[str, list[socket.socket]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self._thread = threading.Thread(target=self._serve_loop, daemon=True,
                                        name="soak-prober")
        self._thread.start()

    # -- servers ---------------------------------------------------------------------------

    def serve(self, pod: str, netns: str, family: int = socket.AF_INET) -> None:
        with _in_netns(netns):
            t = socket.socket(family, socket.SOCK_STREAM)
            u = socket.socket(family, socket.SOCK_DGRAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # beside the IPv4 pair on the same ports
            for s in (t, u):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
        t.bind((any_addr, TCP_PORT))
        t.listen(128)
        u.bind((any_addr, UDP_PORT))
        for s in (t, u):
            s.setblocking(False)
        with self._lock:
            self._pods.setdefault(pod, []).extend([t, u])
            self._sel.register(t, selectors.EVENT_READ, "tcp")
            self._sel.register(u, selectors.EVENT_READ, "udp")
        self._wake_w.send(b"x")

    def forget(self, pod: str) -> None:
        with self._lock:
            for s in self._pods.pop(pod, []):
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(s)
                s.close()
        self._wake_w.send(b"x")

    def _serve_loop(self) -> None:
        while not self._stop:
            with self._lock:
                pass  # let serve/forget finish before selecting on a changed set
            try:
                events = self._sel.select(0.5)
            except (OSError, ValueError):
                continue
            for key, _ in events:
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if key.data is None:
                    with contextlib.suppress(OSError):
                        s.recv(4096)
                    continue
                with contextlib.suppress(OSError):
                    if key.data == "tcp":
                        c, _ = s.accept()
                        with contextlib.suppress(OSError):
                            c.send(b"ok")
                        c.close()
                    else:
                        data, peer = s.recvfrom(512)
                        s.sendto(b"ok:" + data, peer)

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for pod in list(self._pods):
            self.forget(pod)
        self._wake_r.close()
        self._wake_w.close()

    # -- probes ------------------------------------------------------------------------------

    def run(self, probes: Iterable[Probe], timeout: float = 1.0, batch: int = 1000
            ) -> dict[Probe, bool]:
        """Each probe's outcome: TCP connected, or UDP answered, within ``timeout``."""
        todo = list(probes)
        out: dict[Probe, bool] = {}
        for i in range(0, len(todo), batch):
            out.update(self._batch(todo[i:i + batch], timeout))
        return out

    def _batch(self, probes: list[Probe], timeout: float) -> dict[Probe, bool]:
        sel = selectors.DefaultSelector()
        out: dict[Probe, bool] = {}
        socks: list[socket.socket] = []
        try:
            for n, p in enumerate(probes):
                fam = socket.AF_INET6 if ":" in p.dst_ip else socket.AF_INET
                kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
                try:
                    with _in_netns(p.src_ns):
                        s = socket.socket(fam, kind)
                except OSError:
                    out[p] = False  # the source pod is gone
                    continue
                socks.append(s)
                s.setblocking(False)
                if p.proto == "tcp":
                    rc = s.connect_ex((p.dst_ip, TCP_PORT))
                    if rc not in (0, errno.EINPROGRESS):
                        out[p] = False
                        continue
                    sel.register(s, selectors.EVENT_WRITE, p)
                else:
                    try:
                        s.sendto(f"{n}".encode(), (p.dst_ip, UDP_PORT))
                    except OSError:
                        out[p] = False
                        continue
                    sel.register(s, selectors.EVENT_READ, p)
            deadline = time.monotonic() + timeout
            while len(out) < len(probes):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for key, _ in sel.select(left):
                    p = key.data
                    cs = key.fileobj
                    assert isinstance(cs, socket.socket)
                    sel.unregister(cs)
                    if p.proto == "tcp":
                        out[p] = cs.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                    else:
                        try:
                            out[p] = cs.recv(512).startswith(b"ok:")
                        except OSError:
                            out[p] = False
            for p in probes:
                out.setdefault(p, False)
        finally:
            sel.close()
            for s in socks:
                s.close()
        return out
