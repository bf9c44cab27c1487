"""One node's ExaBGP process: started, adopted, reloaded and stopped.

`ExabgpProcess` owns the process (started in its own session inside the node's
namespace, with its own ``EXABGP_ROOT``, pid file and log under ``workdir``) and its
config file. It knows nothing of BGP: `bgp.speaker.BgpSpeaker` decides when to start,
restart and stop it, and what the config says.

Failure modes:

- An agent restart finds ExaBGP running: `adopt` takes it over when the pid file names a
  live process whose command line is ``exabgp ... <our config>`` (sessions survive).
- SIGUSR1 is ExaBGP's reload, and its default action kills: `reload` signals only once
  ExaBGP has its handler installed (``SigCgt``), else leaves the reload pending for the
  next `tick`.
- ExaBGP drops a reload that comes while updates are still queued for a peer (its loop
  re-arms the signal before it checks): a reload its log does not show within
  ``RELOAD_SEEN_WITHIN`` seconds is signalled again (`check_reload_seen`). Updates queued
  for a peer that never comes up (a peer its config names wrongly, or a router that is
  down) stay queued for good, and so would every reload: after ``RELOADS_BEFORE_RESTART``
  dropped in a row while a neighbour is not Established, ExaBGP is told to restart its
  BGP side (SIGALRM: it reads the config again whatever is queued, and re-establishes its
  sessions; the process, and the routes the agent learned, stay). With every neighbour
  up, the queue drains and the reload is only signalled again: a slow machine must not
  cost the sessions a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# What ExaBGP logs when it reloads its config, and how long after the signal we look.
RELOAD_LOG_LINE = b"performing reload of exabgp"
RESTART_LOG_LINE = b"performing restart of exabgp"
RELOAD_SEEN_WITHIN = 2.0
RELOADS_BEFORE_RESTART = 5


class ExabgpProcess:
    """The ExaBGP of one node and its config file, under ``workdir``."""

    def __init__(self, node: str, *, netns: str | None, workdir: Path, exabgp_bin: str,
                 now: Callable[[], float],
                 peers_down: Callable[[], bool] = lambda: True) -> None:
        self.node = node
        # Whether a neighbour is not Established (the speaker knows): only then can
        # updates stay queued for good, and a restart be worth its session resets.
        self.peers_down = peers_down
        self.netns = netns
        self.workdir = workdir
        self.exabgp_bin = exabgp_bin
        self.now = now
        self.conf_path = workdir / "exabgp.conf"
        self.pid_path = workdir / "exabgp.pid"
        self.log_path = workdir / "exabgp.log"
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # None when adopted
        self.text: str | None = None  # the config as last written (or adopted)
        self.restarts = 0
        self.reloads_repeated = 0
        self.dropped_in_a_row = 0  # reloads ExaBGP dropped since it last took one
        self.bgp_restarts = 0  # SIGALRMs sent after too many dropped reloads
        # A config change that ExaBGP could not be told of yet (it does not handle SIGUSR1
        # until it has set up, and the signal's default action kills it).
        self.reload_pending = False
        # A reload signalled and not yet seen in ExaBGP's log: (log size before the
        # signal, when to look).
        self.reload_unseen: tuple[int, float] | None = None

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` is a live ExaBGP of this config (not a zombie, not a reused pid)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (OSError, IndexError):
            return False
        return any(b"exabgp" in c for c in cmd) and str(self.conf_path).encode() in cmd

    def adopt(self) -> bool:
        """Take over the ExaBGP the pid file names, if it runs, with its config text."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        if not self.alive(pid):
            return False
        self.pid = pid
        log.info("adopted running exabgp pid %d for node %s", pid, self.node)
        with contextlib.suppress(OSError):
            self.text = self.conf_path.read_text()
        return True

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = self.workdir / "root"
        (root / "etc" / "exabgp").mkdir(parents=True, exist_ok=True)
        env.update({
            "EXABGP_ROOT": str(root),
            "exabgp.daemon.user": "root",
            "exabgp.daemon.drop": "false",
            "exabgp.daemon.daemonize": "false",
            "exabgp.log.destination": "stdout",
            # RELOAD_LOG_LINE is an INFO line of the "configuration" topic
            "exabgp.log.level": "INFO",
            "exabgp.log.configuration": "true",
            "exabgp.api.pipename": f"l3fabric-{self.node}-{os.getpid()}",
        })
        return env

    def launch(self) -> None:
        cmd = [self.exabgp_bin, "server", str(self.conf_path)]
        if self.netns is not None:
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.workdir)
        self.pid = self.proc.pid
        self.reload_pending = False  # it reads the config as it is now
        self.reload_unseen = None
        self.pid_path.write_text(f"{self.pid}\n")
        log.info("started exabgp pid %d for node %s", self.pid, self.node)

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and self.alive(self.pid)

    def died(self) -> None:
        """The supervisor saw it gone: forget it (a restart launches a new one)."""
        self.pid = None
        self.proc = None

    def write_config(self, text: str) -> bool:
        """Write ``text`` as the config (atomically); False when it is there already."""
        if text == self.text and self.conf_path.exists():
            return False
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conf_path)
        self.text = text
        return True

    def _handles_reload(self, pid: int) -> bool:
        """Whether ``pid`` has its SIGUSR1 handler installed (``SigCgt`` in its status)."""
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) >> (signal.SIGUSR1 - 1) & 1)
        except (OSError, ValueError, IndexError):
            pass
        return False

    def reload(self) -> None:
        """SIGUSR1 (ExaBGP's reload) now, or once ExaBGP handles it (`tick`)."""
        if self.pid is not None and self._handles_reload(self.pid):
            log.info("exabgp config changed: reloading (SIGUSR1)")
            self.reload_unseen = (self._log_size(), self.now() + RELOAD_SEEN_WITHIN)
            os.kill(self.pid, signal.SIGUSR1)
            self.reload_pending = False
        else:
            self.reload_pending = True

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def check_reload_seen(self, now: float) -> None:
        """Signal again a reload that ExaBGP's log does not show (see `reload_unseen`)."""
        if self.reload_unseen is None or now < self.reload_unseen[1]:
            return
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.reload_unseen[0])
                text = f.read()
                seen = RELOAD_LOG_LINE in text or RESTART_LOG_LINE in text
        except OSError:
            seen = False
        self.reload_unseen = None
        if seen:
            self.dropped_in_a_row = 0
            return
        self.dropped_in_a_row += 1
        if (self.dropped_in_a_row >= RELOADS_BEFORE_RESTART and self.pid is not None
                and self.peers_down()):
            log.warning("exabgp dropped %d reloads of its config in a row (updates stay "
                        "queued for a peer that is not up): restarting its BGP side "
                        "(SIGALRM) so that it reads the config", self.dropped_in_a_row)
            self.dropped_in_a_row = 0
            self.bgp_restarts += 1
            self.reload_unseen = (self._log_size(), self.now() + RELOAD_SEEN_WITHIN)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGALRM)
            return
        log.warning("exabgp dropped the reload of its config (it does while updates "
                    "are queued): signalling it again")
        self.reloads_repeated += 1
        self.reload()

    def tick(self, now: float) -> None:
        """The supervisor's periodic look at a running ExaBGP: a reload still pending, or
        one signalled and not seen in the log."""
        if self.reload_pending:
            self.reload()
        else:
            self.check_reload_seen(now)

    async def terminate(self) -> None:
        """SIGTERM, then SIGKILL after 3 s; the pid file goes."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(30):
            if not self.running():
                break
            await asyncio.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        self.pid = None
