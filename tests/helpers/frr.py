"""FRR 8.x (Debian's ``frr``) as a top-of-rack router inside a test namespace.

`Frr` owns a scratch directory (configs, vty sockets, pid files, logs) and the ``zebra``
and ``bgpd`` processes it starts; `stop()` ends them and removes the directory. The
namespace is the caller's. Gotchas (PLATFORM.md): the daemons run as FRR's own user
(root is refused unless it is in ``frrvty``), so the directory is made outside pytest's
0700 tmp dirs and given to that user; ``zebra`` has no ``-S``: its API socket is named
with ``-z``; ``bgpd -S`` would skip zebra, and the routes must reach the ToR's kernel.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from helpers.exabgp import wait_for
from helpers.procs import stop_all

FRR_DIR = Path("/usr/lib/frr")


def frr_missing() -> str | None:
    """Why FRR cannot run here, or None."""
    if not (FRR_DIR / "bgpd").exists() or shutil.which("vtysh") is None:
        return "FRR is not installed (Debian package frr)"
    if subprocess.run(["id", "frr"], capture_output=True).returncode != 0:
        return "FRR's user 'frr' does not exist"
    return None


class Frr:
    def __init__(self, ns: str, log_dir: Path) -> None:
        self.ns = ns
        self.log_dir = log_dir  # the daemons' stdout/stderr (pytest's tmp_path will do)
        self.dir = Path(tempfile.mkdtemp(prefix="l3fabric-frr-"))
        self.dir.chmod(0o755)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, bgpd_conf: str) -> None:
        """zebra, then bgpd with ``bgpd_conf`` (``fabricctl tor-config --format frr``)."""
        (self.dir / "bgpd.conf").write_text(bgpd_conf)
        (self.dir / "zebra.conf").write_text("")
        subprocess.run(["chown", "-R", "frr:frr", str(self.dir)], check=True)
        for daemon in ("zebra", "bgpd"):
            out = self.log_dir / f"frr-{daemon}.out"
            with open(out, "wb") as logf:
                self.procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", self.ns, str(FRR_DIR / daemon),
                     "-z", str(self.dir / "zserv.api"), "-i", str(self.dir / f"{daemon}.pid"),
                     "--vty_socket", str(self.dir), "-P", "0",
                     "-f", str(self.dir / f"{daemon}.conf"),
                     "--log", f"file:{self.dir / daemon}.log"],
                    stdout=logf, stderr=subprocess.STDOUT))
            vty = self.dir / f"{daemon}.vty"
            wait_for(vty.exists, 15, f"{daemon} to start", 0.05, out.read_text)

    def vtysh(self, *cmds: str) -> str:
        args = [a for c in cmds for a in ("-c", c)]
        return subprocess.run(["vtysh", "--vty_socket", str(self.dir), *args],
                              capture_output=True, text=True, timeout=15).stdout

    def vtysh_json(self, cmd: str) -> Any:
        """A ``... json`` command's answer; {} while bgpd cannot answer yet."""
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(self.vtysh(cmd) or "{}")
        return {}

    def peers(self, afi: str = "ipv4") -> dict[str, str]:
        """Neighbour address -> session state in an address family's summary."""
        peers = self.vtysh_json(f"show bgp {afi} unicast summary json").get("peers", {})
        return {ip: str(p.get("state")) for ip, p in peers.items()}

    def log(self, daemon: str = "bgpd", n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return f"--- FRR {daemon} log ---\n{(self.dir / f'{daemon}.log').read_text()[-n:]}"
        return ""

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
