"""systemd's notify protocol: the agent tells its unit when it is ready and that it lives.

``fabric-agent.service`` is ``Type=notify`` with ``WatchdogSec=`` (fabricctl/install_cmd.py):
systemd passes ``$NOTIFY_SOCKET`` (a unix datagram socket; ``@name`` is an abstract one)
and, with a watchdog, ``$WATCHDOG_USEC``. The agent sends ``READY=1`` once after its first
in-sync apply (routes and policy programmed from a complete snapshot), so units ordered
after it (a container runtime) start with pods routable; ``WATCHDOG=1`` from its event
loop every half period, so a loop that hangs gets the agent restarted; ``STATUS=`` lines
that ``systemctl status`` shows (what start-up waits for); ``STOPPING=1`` on a stop.

Why not Debian's ``python3-systemd`` (PyPI's ``systemd-python``): the protocol is one
datagram per message, a few lines of the standard library; the binding is a C extension
that builds from PyPI only against libsystemd's headers, a dependency of every install
for these few lines. docs/architecture.md §11 lists it.

Owned: nothing but the client socket. Without ``$NOTIFY_SOCKET`` (not under systemd,
tests, labs) every call does nothing. A send that fails (systemd gone, socket full) is
logged at debug level and otherwise ignored: notification never stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger(__name__)

#: The variables systemd sets for the notify protocol; taken out of the environment
#: (`from_environ` with ``unset``), so that processes the agent starts (ExaBGP) do not
#: inherit them and speak for the unit.
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SystemdNotifier:
    """Sends notify-protocol messages to one socket address (None: sends nothing)."""

    def __init__(self, address: str | None = None, watchdog_usec: int = 0) -> None:
        self.address = address or None
        # systemd expects a ping at least once per period; half leaves room for a busy loop.
        self.watchdog_interval: float | None = (
            watchdog_usec / 2e6 if address and watchdog_usec > 0 else None)
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None,
                     unset: bool = False) -> SystemdNotifier:
        """The notifier systemd's variables describe. ``WATCHDOG_PID`` naming another
        process (the variables were inherited) disables the watchdog, as sd_notify does."""
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        address, usec = _parse(env)
        if unset:
            for k in NOTIFY_VARS:
                env.pop(k, None)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value``) as one datagram; True if it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), target)
        except OSError as e:
            log.debug("sd_notify %s to %s: %s", fields, self.address, e)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


#: How often `keep_alive` refreshes ``STATUS=`` when there is no watchdog.
STATUS_INTERVAL = 5.0


async def keep_alive(notifier: SystemdNotifier, status: Callable[[], str]) -> None:
    """Until cancelled: ``WATCHDOG=1`` every half watchdog period (if the unit has one) and
    ``STATUS=<status()>`` whenever it changes. Runs on the agent's event loop, so the pings
    stop when the loop hangs; systemd enforces the watchdog only once ``READY=1`` was sent.
    Never returns: run it only for an enabled notifier."""
    last = ""
    while True:
        if notifier.watchdog_interval is not None:
            notifier.watchdog()
        text = status()
        if text != last:
            notifier.status(text)
            last = text
        await asyncio.sleep(notifier.watchdog_interval or STATUS_INTERVAL)


def _parse(env: Mapping[str, str]) -> tuple[str | None, int]:
    address = env.get("NOTIFY_SOCKET") or None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        usec = 0
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        usec = 0
    return address, usec
