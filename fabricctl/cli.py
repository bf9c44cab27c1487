"""``fabricctl``: the command line of l3fabric (DESIGN §9).

Exit codes: 0 success, 1 failure with one clear line on stderr, 2 usage error. Never a
traceback for a failure we can name; ``L3FABRIC_DEBUG=1`` shows one for the rest.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .common import CliError

# Sub-command modules; each has add_parser(s)(sub). Optional ones may be absent while a
# part of l3fabric is not built yet: their commands are then simply not offered.
_MODULES = [
    ("fabricctl.resources", "add_parsers"),
    ("fabricctl.etcd_cmd", "add_parser"),
    ("fabricctl.ipam_cmd", "add_parser"),
    ("fabricctl.node_cmd", "add_parser"),
    ("fabricctl.cni_cmd", "add_parser"),
    ("fabricctl.policy_cmd", "add_parser"),
    ("fabricctl.lab_cmd", "add_parser"),
    ("fabricctl.install_cmd", "add_parsers"),
    ("fabricctl.tor_cmd", "add_parser"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"fabricctl: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = _Parser(prog="fabricctl", description="Operate an l3fabric network.")
    p.add_argument("--etcd-endpoints", default=env("L3FABRIC_ETCD_ENDPOINTS",
                                                    "http://127.0.0.1:2379"),
                   help="comma-separated etcd URLs (env L3FABRIC_ETCD_ENDPOINTS)")
    p.add_argument("--etcd-ca", default=env("L3FABRIC_ETCD_CA"))
    p.add_argument("--etcd-cert", default=env("L3FABRIC_ETCD_CERT"))
    p.add_argument("--etcd-key", default=env("L3FABRIC_ETCD_KEY"))
    p.add_argument("--etcd-timeout", type=float, default=float(env("L3FABRIC_ETCD_TIMEOUT",
                                                                   "3")))
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)
    for modname, fn in _MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        getattr(mod, fn)(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except CliError as e:
        print(f"fabricctl: {e}", file=sys.stderr)
        return 2 if e.usage else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # the last line of defence: one line, not a traceback
        if os.environ.get("L3FABRIC_DEBUG"):
            raise
        print(f"fabricctl: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
