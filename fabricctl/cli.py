"""``fabricctl``: the command line of l3fabric (docs/architecture.md §10).

Exit codes: 0 success, 1 failure with one clear line on stderr, 2 usage error. Never a
traceback for a failure we can name; ``L3FABRIC_DEBUG=1`` shows one for the rest.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from datastore.version import l3fabric_version

from .common import CliError
from .completion_cmd import autocomplete
from .config import CONFIG_ENV, DEFAULT_CONFIG_PATHS, SETTINGS, resolve

# Sub-command modules; each has add_parser(s)(sub). Optional ones may be absent while a
# part of l3fabric is not built yet: their commands are then simply not offered.
_MODULES = [
    ("fabricctl.resources", "add_parsers"),
    ("fabricctl.etcd_cmd", "add_parser"),
    ("fabricctl.ipam_cmd", "add_parser"),
    ("fabricctl.node_cmd", "add_parser"),
    ("fabricctl.cni_cmd", "add_parser"),
    ("fabricctl.policy_cmd", "add_parser"),
    ("fabricctl.flows_cmd", "add_parser"),
    ("fabricctl.lab_cmd", "add_parser"),
    ("fabricctl.install_cmd", "add_parsers"),
    ("fabricctl.tor_cmd", "add_parser"),
    ("fabricctl.diags_cmd", "add_parser"),
    ("fabricctl.version_cmd", "add_parser"),
    ("fabricctl.completion_cmd", "add_parser"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"fabricctl: {message}", file=sys.stderr)
        raise SystemExit(2)


def _add_global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """The flags every command takes. On sub-commands their default is SUPPRESS, so a flag
    given after the command overrides one given before it and an absent one changes
    nothing: ``fabricctl get node --etcd-endpoints X`` means what it does in front."""
    taken = p._option_string_actions  # a command may own one already (install-agent)
    g = p.add_argument_group("global flags")
    for s in SETTINGS:
        if s.flag not in taken:
            g.add_argument(s.flag, default=default, help=s.help, metavar=s.metavar)
    if "--config" not in taken:
        g.add_argument("--config", default=default, metavar="FILE",
                       help=f"config file with L3FABRIC_ETCD_* settings (env {CONFIG_ENV}; "
                            f"default: the first of {', '.join(DEFAULT_CONFIG_PATHS)})")
    if "--verbose" not in taken:
        g.add_argument("-v", "--verbose", action="store_true",
                       default=False if default is None else default,
                       help="log what fabricctl does (debug level) on stderr")


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                out.append(child)
                out.extend(_subparsers(child))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fabricctl", description="Operate an l3fabric network.")
    p.add_argument("--version", action="version", version=f"fabricctl {l3fabric_version()}",
                   help="print fabricctl's version and exit")
    _add_global_flags(p, None)
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
    for child in _subparsers(p):
        _add_global_flags(child, argparse.SUPPRESS)
    return p


def resolve_connection(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill ``args.etcd_*`` from flags, environment and config file (`fabricctl.config`);
    ``args.etcd_sources`` says where each came from."""
    flags = {s.dest: getattr(args, s.dest, None) for s in SETTINGS}
    res = resolve(flags, environ, config=getattr(args, "config", None))
    for dest, value in res.values.items():
        setattr(args, dest, value)
    try:
        args.etcd_timeout = float(args.etcd_timeout)
    except ValueError:
        raise CliError(f"etcd timeout {args.etcd_timeout!r} ({res.sources['etcd_timeout']}) "
                       "is not a number of seconds", usage=True) from None
    args.etcd_sources = dict(res.sources)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    autocomplete(parser)  # a completion request from the shell: answered, then exit
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        resolve_connection(args, os.environ)
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
