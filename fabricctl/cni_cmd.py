"""``fabricctl install-cni``: drop the CNI plugin executables and the network config.

Owns: ``<bin-dir>/l3fabric``, ``<bin-dir>/l3fabric-ipam`` (stdlib shims, see
:func:`cni.shim.write_executable`; run by ``--python``, by default the distribution's
``/usr/bin/python3`` if it runs them, else this Python: :func:`cni.shim.pick_interpreter`)
and ``<conf-dir>/10-<name>.conflist`` (docs/architecture.md §10). Idempotent: files
already as wanted are left untouched (their mtime too, so runtimes watching the config
dir see no change); others are replaced atomically.

The conflist chains the reference ``portmap`` plugin (unless ``--no-portmap``), whose
CNI versions stop at 1.0.0, hence ``cniVersion: 1.0.0``; portmap's CHECK fails on
IPv4-only containers (an upstream bug), hence ``disableCheck: true`` in that case.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from cni.shim import DEFAULT_SOCKET, pick_interpreter, write_executable

from .common import CliError

CONFLIST_VERSION = "1.0.0"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("install-cni", help="install the CNI plugin executables and conflist")
    p.add_argument("--bin-dir", type=Path, required=True,
                   help="the runtime's CNI plugin directory (e.g. /opt/cni/bin)")
    p.add_argument("--conf-dir", type=Path, required=True,
                   help="the runtime's CNI config directory (e.g. /etc/cni/net.d)")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's CNI socket")
    p.add_argument("--name", default="l3fabric", help="the network name")
    p.add_argument("--mtu", type=int, default=0, help="pod MTU (0: the node uplink's)")
    p.add_argument("--no-portmap", action="store_true", help="leave portmap out of the chain")
    p.add_argument("--python", default=None,
                   help="absolute interpreter the shims run with (default: /usr/bin/python3 "
                        "if it runs them, it starts fastest; else this one)")
    p.set_defaults(func=cmd_install_cni)


def conflist(name: str, socket: str, mtu: int = 0, portmap: bool = True) -> dict[str, Any]:
    """The network config of docs/architecture.md §10."""
    plugins: list[dict[str, Any]] = [
        {"type": "l3fabric", "agentSocket": socket, "mtu": mtu,
         "ipam": {"type": "l3fabric-ipam"}}]
    out: dict[str, Any] = {"cniVersion": CONFLIST_VERSION, "name": name}
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True},
                        "snat": True})
        out["disableCheck"] = True
    out["plugins"] = plugins
    return out


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def cmd_install_cni(args: argparse.Namespace) -> int:
    if args.python is not None and not os.path.isabs(args.python):
        raise CliError(f"--python must be an absolute path, not {args.python!r}", usage=True)
    if args.mtu and not 68 <= args.mtu <= 65535:
        raise CliError("--mtu must be 0 or between 68 and 65535", usage=True)
    bin_dir: Path = args.bin_dir
    conf_dir: Path = args.conf_dir
    python = args.python or pick_interpreter()
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        conf_dir.mkdir(parents=True, exist_ok=True)
        for exe, which in (("l3fabric", "plugin"), ("l3fabric-ipam", "ipam")):
            dest = bin_dir / exe
            # Render into a scratch file, then keep the installed one if identical.
            scratch = bin_dir / f".{exe}.new{os.getpid()}"
            write_executable(scratch, which, python)
            try:
                changed = _write_if_changed(dest, scratch.read_text(), 0o755)
            finally:
                scratch.unlink(missing_ok=True)
            print(f"{'wrote' if changed else 'unchanged'} {dest}")
        conf = conflist(args.name, args.socket, args.mtu, portmap=not args.no_portmap)
        path = conf_dir / f"10-{args.name}.conflist"
        changed = _write_if_changed(path, json.dumps(conf, indent=2) + "\n", 0o644)
        print(f"{'wrote' if changed else 'unchanged'} {path}")
    except OSError as e:
        raise CliError(f"install-cni: {e}") from e
    return 0
