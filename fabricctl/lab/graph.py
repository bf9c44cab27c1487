"""A picture of a running lab: graphviz ``dot`` text from ``runner.status`` (pure), then
``dot -Tsvg`` / ``-Tpng``.

Routers are boxes, nodes are ellipses grouped by rack, pods hang off their node, and every
BGP session is an edge coloured by its state (green Established, red otherwise; dashed for
iBGP). The management network is left out: it carries no pod traffic.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any


def _id(name: str) -> str:
    return '"' + name.replace('"', "'") + '"'


def render_dot(st: dict[str, Any]) -> str:
    lines = [f"graph {_id(st['lab'])} {{",
             "  graph [rankdir=TB, fontname=Helvetica, label=" +
             _id(f"lab {st['lab']} ({st.get('topology', '')})") + ", labelloc=t];",
             "  node [fontname=Helvetica, fontsize=10];",
             "  edge [fontname=Helvetica, fontsize=8];"]
    racks: dict[str, list[dict[str, Any]]] = {}
    for n in st["nodes"]:
        if n["role"] == "mgmt":
            continue
        racks.setdefault(n.get("rack") or "", []).append(n)
    for rack, members in sorted(racks.items()):
        indent = "  "
        if rack:
            lines.append(f"  subgraph {_id('cluster_' + rack)} {{ label={_id('rack ' + rack)}; "
                         "style=dashed; color=gray;")
            indent = "    "
        for n in members:
            up = n.get("running")
            label = f"{n['name']}\\nAS {n.get('asn')}\\n{n.get('fabric_ip', '')}"
            if n["role"] == "router":
                lines.append(f"{indent}{_id(n['name'])} [shape=box, style=filled, "
                             f"fillcolor={'lightblue' if up else 'pink'}, label={_id(label)}];")
            else:
                blocks = ", ".join(n.get("blocks") or [])
                if blocks:
                    label += f"\\n{blocks}"
                lines.append(f"{indent}{_id(n['name'])} [shape=ellipse, style=filled, "
                             f"fillcolor={'palegreen' if up else 'pink'}, label={_id(label)}];")
        if rack:
            lines.append("  }")
    seen = set()
    for s in st["sessions"]:
        if s.get("source") != "bird":
            continue
        pair = tuple(sorted((s["router"], s["node"])))
        if pair in seen:
            continue
        seen.add(pair)
        ok = str(s.get("state", "")).startswith("Established")
        style = "dashed" if s.get("ibgp") else "solid"
        lines.append(f"  {_id(s['router'])} -- {_id(s['node'])} [color={'green' if ok else 'red'}, "
                     f"style={style}, label={_id(str(s.get('state', '')))}];")
    for p in st["pods"]:
        pid = "pod " + p["pod"]
        label = f"{p['pod']}\\n{', '.join(p.get('ips', []))}"
        lines.append(f"  {_id(pid)} [shape=note, fontsize=9, label={_id(label)}];")
        lines.append(f"  {_id(p['node'])} -- {_id(pid)} [color=gray];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_images(dot_text: str, out: Path) -> list[Path]:
    """``out`` without suffix gets ``.svg`` and ``.png``; returns the files written."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("graphviz is not installed (Debian package graphviz)")
    base = out.with_suffix("") if out.suffix in (".svg", ".png", ".dot") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    base.with_suffix(".dot").write_text(dot_text)
    for fmt in ("svg", "png"):
        target = base.with_suffix("." + fmt)
        subprocess.run([dot, f"-T{fmt}", "-o", str(target)], input=dot_text.encode(),
                       check=True, capture_output=True, timeout=60)
        written.append(target)
    return written
