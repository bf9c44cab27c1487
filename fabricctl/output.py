"""Rendering for every fabricctl read command: ``-o table|json|yaml``.

Commands build plain data (lists of dicts) and a table layout; this module prints them.
Nothing here talks to etcd.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import yaml

FORMATS = ("table", "json", "yaml")


def add_output_flag(p: argparse.ArgumentParser, formats: tuple[str, ...] = FORMATS,
                    default: str | None = "table") -> None:
    """``-o/--output FORMAT``: the one meaning of ``-o`` in every fabricctl command."""
    p.add_argument("-o", "--output", choices=formats, default=default, metavar="FORMAT",
                   help=f"output format: {', '.join(formats)}"
                        + (f" (default {default})" if default else ""))


def dig(obj: Any, path: str) -> Any:
    """``dig({"spec": {"cidr": "x"}}, "spec.cidr") == "x"``; missing parts give None."""
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          out: TextIO | None = None) -> None:
    """Aligned columns on ``out`` (``sys.stdout`` as it is at the call, so redirections of
    it are honoured)."""
    out = out or sys.stdout
    cells = [[cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(fmt.format(*headers).rstrip() + "\n")
    for row in cells:
        out.write(fmt.format(*row).rstrip() + "\n")


def dump(data: Any, fmt: str, out: TextIO | None = None) -> None:
    """JSON or YAML of ``data`` (a list prints as a list, one object as itself)."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt == "yaml":
        if isinstance(data, list):
            out.write(yaml.safe_dump_all(data, sort_keys=False) if data else "")
        else:
            out.write(yaml.safe_dump(data, sort_keys=False))
    else:
        raise ValueError(f"unknown output format {fmt!r}")
