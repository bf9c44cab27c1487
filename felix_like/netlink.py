"""Small netlink and network-namespace helpers shared by the CNI handler and the route manager.

Why not ``IPRoute(netns=NAME)``: pyroute2 0.9.7 makes that socket in a forked child
(~9 ms per socket, and its default flags *create* a missing namespace). A thread that
``setns()``-es into the namespace and opens the socket there does the same in ~1 ms:
``setns(CLONE_NEWNET)`` only moves the calling thread, a socket stays bound to the
namespace it was made in, and ``/proc/sys/net`` shows the namespace of the thread that
opens the file. So both netlink sockets and sysctl writes for another namespace go
through :func:`run_in_netns`, which never changes the namespace of the caller's thread.

Namespaces are named either by a path (``/var/run/netns/X``, ``/proc/PID/ns/net``, what
CNI_NETNS carries) or by a bare name under ``/var/run/netns``; ``None`` means the
namespace the calling thread is in. Nothing here creates a namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

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
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
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

    fileno = run_in_netns(ns, make_socket)
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

    run_in_netns(ns, write_all)


def read_sysctl(ns: str | None, key: str) -> str:
    """Read one sysctl (dotted key) inside namespace ``ns``."""

    def read() -> str:
        with open(_sysctl_file(key)) as f:
            return f.read().strip()

    return run_in_netns(ns, read)
