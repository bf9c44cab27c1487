"""Small netlink and network-namespace helpers shared by the CNI handler and the route manager.

Why not ``IPRoute(netns=NAME)``: pyroute2 0.9.7 makes that socket in a forked child
(~9 ms per socket, and its default flags *create* a missing namespace). A thread that
``setns()``-es into the namespace and opens the socket there does the same in ~1 ms:
``setns(CLONE_NEWNET)`` only moves the calling thread, a socket stays bound to the
namespace it was made in, and ``/proc/sys/net`` shows the namespace of the thread that
opens the file. So both netlink sockets and sysctl writes for another namespace go
through :func:`run_in_netns` (a thread per call) or :func:`run_short_in_netns` (one
long-lived thread for short jobs); neither changes the namespace of the caller's thread.

The agent's notification socket and the parsing of its datagrams live in
`felix_like.kernel_events`, built on :func:`open_netlink_socket` and the message layouts here.

Hot paths (pod wiring) use :class:`Rtnl`, a raw rtnetlink socket for the few requests
they make, instead of pyroute2's sync handle.

Namespaces are named either by a path (``/var/run/netns/X``, ``/proc/PID/ns/net``, what
CNI_NETNS carries) or by a bare name under ``/var/run/netns``; ``None`` means the
namespace the calling thread is in. Nothing here creates a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

from pyroute2 import IPRoute

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def netns_path(ns: str) -> str:
    """The filesystem path of a namespace given by name or path."""
    if "/" in ns:
        return ns
    return os.path.join(NETNS_RUN_DIR, ns)


def delete_netns(name: str) -> None:
    """Delete namespace ``name`` after killing (SIGKILL) every process still inside it: a
    namespace is only freed when its last process is gone. A missing namespace is fine.
    For test and benchmark teardown; the lab stops its processes gently first."""
    import signal
    import subprocess

    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                          text=True, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def run_in_netns(ns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` with the calling context inside network namespace ``ns``; return its result.

    ``None`` runs ``fn`` right here. Otherwise a short-lived thread enters the namespace
    (``setns`` affects only that thread) and runs ``fn``; its exception is re-raised here.
    A missing namespace raises ``FileNotFoundError`` before anything runs.
    """
    if ns is None:
        return fn()
    path = netns_path(ns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            if _get_libc().setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    try:
        thread = threading.Thread(target=worker, name=f"netns:{path}", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if error:
        raise error[0]
    return result[0]


def open_iproute(ns: str | None) -> Any:
    """An ``IPRoute`` bound to namespace ``ns`` (``None``: the current one), subscribed to
    no multicast groups (a long-lived handle must not queue events nobody reads).

    The caller closes it. Like any sync pyroute2 handle, use it from one thread.
    """
    if ns is None:
        return IPRoute(groups=0)

    def make_socket() -> int:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach()

    fileno = run_short_in_netns(ns, make_socket)
    try:
        return IPRoute(fileno=fileno, groups=0)
    except BaseException:
        os.close(fileno)
        raise


def _sysctl_file(key: str) -> str:
    # "net.ipv4.conf.fab123.proxy_arp" -> /proc/sys/net/ipv4/conf/fab123/proxy_arp.
    # Interface names containing dots are not supported (ours never have one).
    return "/proc/sys/" + key.replace(".", "/")


def write_sysctls(ns: str | None, values: Mapping[str, str]) -> None:
    """Write sysctls (dotted keys, in order) inside namespace ``ns``. Raises ``OSError``
    on the first failure, naming the key."""

    def write_all() -> None:
        for key, value in values.items():
            try:
                with open(_sysctl_file(key), "w") as f:
                    f.write(value)
            except OSError as exc:
                raise OSError(exc.errno, f"sysctl {key}={value}: {exc.strerror}") from exc

    run_short_in_netns(ns, write_all)


def read_sysctl(ns: str | None, key: str) -> str:
    """Read one sysctl (dotted key) inside namespace ``ns``."""

    def read() -> str:
        with open(_sysctl_file(key)) as f:
            return f.read().strip()

    return run_short_in_netns(ns, read)


# ---------------------------------------------------------------------- the namespace thread


class _NamespaceThread:
    """One long-lived thread that runs short jobs inside a given namespace.

    Why: :func:`run_in_netns` starts a thread per call (~1 ms of wall time), and pod
    wiring needs two or three namespace hops per pod. This thread ``setns()``-es before
    every job whose namespace differs from the one it is in, so it never relies on where
    an earlier job left it. Jobs must be short and must not call back into it (they would
    wait for themselves); callers on this thread fall back to :func:`run_in_netns`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[tuple[str, Callable[[], Any], Any]] = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._here: tuple[int, int] | None = None  # (st_dev, st_ino) of the current netns

    def run(self, ns: str, fn: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return run_in_netns(ns, fn)
        from concurrent.futures import Future

        fut: Future[T] = Future()
        with self._lock:
            if self._thread is None or self._pid != os.getpid():  # first use, or forked
                self._jobs = []
                self._thread = threading.Thread(target=self._serve, name="netns-jobs",
                                                daemon=True)
                self._pid = os.getpid()
                self._here = None
                self._thread.start()
            self._jobs.append((netns_path(ns), fn, fut))
            self._wake.notify()
        return fut.result()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._wake.wait()
                path, fn, fut = self._jobs.pop(0)
            try:
                fut.set_result(self._run_in(path, fn))
            except BaseException as exc:  # handed to the caller's thread
                fut.set_exception(exc)

    def _run_in(self, path: str, fn: Callable[[], T]) -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if self._here != (st.st_dev, st.st_ino):
                self._here = None
                if _get_libc().setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
                self._here = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)
        return fn()


_ns_thread = _NamespaceThread()


def run_short_in_netns(ns: str | None, fn: Callable[[], T]) -> T:
    """:func:`run_in_netns` for short jobs (opening a socket, writing a few sysctls):
    they run on one long-lived thread instead of a new thread each. ``None`` runs ``fn``
    here."""
    if ns is None:
        return fn()
    return _ns_thread.run(ns, fn)


def open_netlink_socket(ns: str | None, protocol: int, groups: int = 0) -> socket.socket:
    """A netlink socket of ``protocol`` in namespace ``ns`` (``None``: the calling
    thread's), bound to the multicast ``groups``."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            s.bind((0, groups))
        except BaseException:
            s.close()
            raise
        return s

    return run_short_in_netns(ns, make)


# ---------------------------------------------------------------------- raw rtnetlink

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_MULTIPATH = 9
RTA_TABLE = 15
NDA_DST = 1
NDA_LLADDR = 2
IFF_UP = 0x1
RTN_UNICAST = 1
RTPROT_STATIC = 4

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")
_RTNEXTHOP = struct.Struct("=HBBi")


class NetlinkError(OSError):
    """The kernel refused a request; ``code`` is the errno (as pyroute2's error has it)."""

    @property
    def code(self) -> int:
        return self.errno or 0


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(value: str) -> bytes:
    return bytes(int(x, 16) for x in value.split(":"))


def _ip(family: int, value: str) -> bytes:
    return socket.inet_pton(family, value)


def _parse_attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """The top-level attributes of a message body from ``offset`` (the last one wins)."""
    attrs: dict[int, bytes] = {}
    end = len(data)
    while offset + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + _RTATTR.size:offset + size]
        offset += (size + 3) & ~3
    return attrs


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class Rtnl:
    """A minimal, synchronous rtnetlink client for the few requests pod wiring makes.

    Why not pyroute2: its sync ``IPRoute`` runs an asyncio loop per request (~0.3 ms of
    CPU each) and wiring a pod takes about fifteen requests; a raw socket and ``struct``
    do the same in a few microseconds. Everything else (dumps for CHECK, the route
    manager) stays on pyroute2. One request in flight at a time: use an instance from
    one thread at a time. Errors raise :class:`NetlinkError` with the kernel's errno.
    """

    #: The netlink family of the socket `open` makes (a subclass may speak another).
    protocol = NETLINK_ROUTE

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls, ns: str | None) -> Self:
        """A socket bound to namespace ``ns`` (``None``: the calling thread's)."""
        return cls(open_netlink_socket(ns, cls.protocol))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------

    def _request(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the bodies of the replies (a dump's, or a get's one).
        Raises NetlinkError on a kernel error."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind,
                                       flags | NLM_F_REQUEST, seq, 0) + body)
        dump = (flags & NLM_F_DUMP) == NLM_F_DUMP
        out: list[bytes] = []
        while True:
            data = self._sock.recv(65536)  # a dump sends at most 32 KiB per datagram
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                size, mtype, _, mseq, _ = _NLMSGHDR.unpack_from(data, offset)
                if size < _NLMSGHDR.size:
                    raise NetlinkError(errno.EBADMSG, "malformed netlink reply")
                body_at = offset + _NLMSGHDR.size
                offset += (size + 3) & ~3
                if mseq != seq:
                    continue  # a reply to an earlier request we stopped waiting for
                if mtype == NLMSG_ERROR:
                    (err,) = _NLMSGERR.unpack_from(data, body_at)
                    if err:
                        raise NetlinkError(-err, os.strerror(-err))
                    return out
                if mtype == NLMSG_DONE:
                    return out
                out.append(data[body_at:body_at + size - _NLMSGHDR.size])
                if not dump and not flags & NLM_F_ACK:
                    return out

    def _do(self, kind: int, body: bytes, flags: int = 0) -> None:
        self._request(kind, flags | NLM_F_ACK, body)

    # -- links ------------------------------------------------------------------------

    def get_link(self, name: str | None = None,
                 index: int = 0) -> tuple[int, dict[int, bytes]] | None:
        """(index, attributes) of the link named ``name`` (or with ``index``); None if
        there is none."""
        body = _IFINFOMSG.pack(0, 0, index, 0, 0)
        if name is not None:
            body += _str(IFLA_IFNAME, name)
        try:
            [reply] = self._request(RTM_GETLINK, 0, body)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        _, _, idx, _, _ = _IFINFOMSG.unpack_from(reply)
        return idx, _parse_attrs(reply, _IFINFOMSG.size)

    def link_index(self, name: str) -> int | None:
        found = self.get_link(name)
        return None if found is None else found[0]

    def add_veth(self, name: str, mac: str, mtu: int, peer: str, peer_netns_fd: int,
                 up: bool, peer_mac: str = "") -> None:
        """``ip link add NAME address MAC mtu MTU [up] type veth peer name PEER mtu MTU
        [address PEER_MAC] netns FD``; fails with EEXIST when either name is taken.
        Without ``peer_mac`` the kernel picks a random one for the peer."""
        peer_info = (_IFINFOMSG.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, peer)
                     + _u32(IFLA_NET_NS_FD, peer_netns_fd) + _u32(IFLA_MTU, mtu))
        if peer_mac:
            peer_info += _attr(IFLA_ADDRESS, _mac(peer_mac))
        linkinfo = _str(IFLA_INFO_KIND, "veth") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        flags = IFF_UP if up else 0
        body = (_IFINFOMSG.pack(0, 0, 0, flags, flags) + _str(IFLA_IFNAME, name)
                + _attr(IFLA_ADDRESS, _mac(mac)) + _u32(IFLA_MTU, mtu)
                + _attr(IFLA_LINKINFO, linkinfo))
        self._do(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def set_up(self, index: int, alias: str = "") -> None:
        """``ip link set INDEX up [alias ALIAS]`` (the kernel ignores an alias given at
        creation, so it is set here, in the same request)."""
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP)
        if alias:
            body += _str(IFLA_IFALIAS, alias)
        self._do(RTM_NEWLINK, body)

    def delete_link(self, index: int) -> None:
        self._do(RTM_DELLINK, _IFINFOMSG.pack(0, 0, index, 0, 0))

    # -- addresses, neighbours, routes ------------------------------------------------

    def add_address(self, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        raw = _ip(family, address)
        attrs = _attr(IFA_ADDRESS, raw)
        if family == socket.AF_INET:
            attrs = _attr(IFA_LOCAL, raw) + attrs
        self._do(RTM_NEWADDR, _IFADDRMSG.pack(family, prefixlen, flags, 0, index) + attrs,
                 NLM_F_CREATE | NLM_F_EXCL)

    def add_neighbour(self, index: int, address: str, lladdr: str, state: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        body = (_NDMSG.pack(family, index, state, 0, 0) + _attr(NDA_DST, _ip(family, address))
                + _attr(NDA_LLADDR, _mac(lladdr)))
        self._do(RTM_NEWNEIGH, body, NLM_F_CREATE | NLM_F_EXCL)

    def _route_msg(self, family: int, dst: str, dst_len: int, *, oif: int, table: int,
                   proto: int, scope: int, rtype: int, flags: int = 0,
                   gateway: str | None = None) -> bytes:
        body = _RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else 252, proto,
                           scope, rtype, flags)
        if dst_len:
            body += _attr(RTA_DST, _ip(family, dst))
        if gateway is not None:
            body += _attr(RTA_GATEWAY, _ip(family, gateway))
        return body + _u32(RTA_OIF, oif) + _u32(RTA_TABLE, table)

    def add_route(self, family: int, dst: str, dst_len: int, *, oif: int, table: int,
                  proto: int, scope: int, flags: int = 0, gateway: str | None = None) -> None:
        """``ip route add`` (EEXIST when the destination is routed already)."""
        body = self._route_msg(family, dst, dst_len, oif=oif, table=table, proto=proto,
                               scope=scope, rtype=RTN_UNICAST, flags=flags, gateway=gateway)
        self._do(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)

    def delete_route(self, family: int, dst: str, dst_len: int, *, oif: int, table: int,
                     proto: int, scope: int) -> None:
        """Delete the route to ``dst/dst_len`` through ``oif`` of protocol ``proto`` only
        (ESRCH when there is none)."""
        body = self._route_msg(family, dst, dst_len, oif=oif, table=table, proto=proto,
                               scope=scope, rtype=RTN_UNICAST)
        self._do(RTM_DELROUTE, body)

    def default_route_oifs(self, family: int, table: int) -> list[int]:
        """The output interfaces of the unicast default routes of ``table``, in dump order
        (of a multipath route, its first hop)."""
        out: list[int] = []
        for reply in self._request(RTM_GETROUTE, NLM_F_DUMP,
                                   _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _, _, rtable, _, _, rtype, _ = _RTMSG.unpack_from(reply)
            if dst_len != 0 or rtype != RTN_UNICAST or fam != family:
                continue
            attrs = _parse_attrs(reply, _RTMSG.size)
            if RTA_TABLE in attrs:
                rtable = struct.unpack("=I", attrs[RTA_TABLE][:4])[0]
            if rtable != table:
                continue
            if RTA_OIF in attrs:
                out.append(struct.unpack("=i", attrs[RTA_OIF][:4])[0])
            elif RTA_MULTIPATH in attrs and len(attrs[RTA_MULTIPATH]) >= _RTNEXTHOP.size:
                out.append(_RTNEXTHOP.unpack_from(attrs[RTA_MULTIPATH])[3])
            else:
                out.append(-1)  # no device: keeps the place, matches no link
        return out

    def links(self) -> list[tuple[int, int, dict[int, bytes]]]:
        """Every link as (index, flags, attributes)."""
        out = []
        for reply in self._request(RTM_GETLINK, NLM_F_DUMP, _IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _, _, idx, flags, _ = _IFINFOMSG.unpack_from(reply)
            out.append((idx, flags, _parse_attrs(reply, _IFINFOMSG.size)))
        return out


def attr_u32(attrs: Mapping[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return None if raw is None or len(raw) < 4 else int(struct.unpack("=I", raw[:4])[0])


def attr_str(attrs: Mapping[int, bytes], kind: int) -> str | None:
    raw = attrs.get(kind)
    return None if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")
