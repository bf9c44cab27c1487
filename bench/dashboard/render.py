"""The picture of dashboards/l3fabric.json in docs/metrics.md: its panels drawn with
matplotlib from a recorded series of a live agent's ``/metrics`` scrapes.

Grafana does not run on this project's machines, so this is not a Grafana screenshot. The
panels, their titles, layout (``gridPos``), units, expressions and legends are read from
the dashboard file, so the picture follows the dashboard; each expression is evaluated at
every scrape by `bench.dashboard.promql` (an approximation of PromQL for these
expressions), with ``$instance`` as ``.*`` and ``$__rate_interval`` as `RATE_WINDOW`.

``python -m bench.dashboard.render SERIES.json [-o docs/dashboard.png]`` draws a recorded
series (`bench.dashboard.record` writes one); ``make docs`` records and draws. matplotlib
is the ``docs`` extra of pyproject.toml, not a runtime dependency: it is imported only
when drawing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.dashboard.promql import Sample, Series, evaluate

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "l3fabric.json"
OUTPUT = ROOT / "docs" / "dashboard.png"
RATE_WINDOW = "5s"  # $__rate_interval: ten scrapes at the recorder's 0.5 s

_BG, _PANEL, _TEXT, _GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"


@dataclass(frozen=True)
class Line:
    legend: str
    points: tuple[tuple[float, float], ...]  # (seconds since the first scrape, value)


@dataclass(frozen=True)
class Panel:
    """One panel as drawn: what the dashboard says of it and its evaluated lines."""

    title: str
    kind: str  # row, stat, table, timeseries
    grid: tuple[int, int, int, int]  # x, y, w, h in Grafana's 24-column grid
    unit: str
    lines: tuple[Line, ...]
    rows: tuple[tuple[str, float], ...] = ()  # a table's (labels, value) at the last scrape


def load_series(path: Path) -> Series:
    """A recorded series: ``{"scrapes": [{"t": s, "instance": name, "text": page}, …]}``."""
    series = Series()
    for scrape in json.loads(path.read_text())["scrapes"]:
        series.add_scrape(float(scrape["t"]), scrape["text"], scrape["instance"])
    return series


def _legend(fmt: str | None, s: Sample) -> str:
    labels = dict(s.labels)
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def _expr(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_WINDOW).replace("$instance", ".*")


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def evaluate_dashboard(dash: dict[str, Any], series: Series) -> list[Panel]:
    """Every panel of ``dash`` with its targets evaluated at each scrape of ``series``."""
    t0 = series.times[0] if series.times else 0.0
    out = []
    for p in _panels(dash):
        g = p["gridPos"]
        lines: dict[str, list[tuple[float, float]]] = {}
        last: list[Sample] = []
        for target in p.get("targets", []):
            expr = _expr(target["expr"])
            for t in series.times:
                vec = evaluate(expr, series, t)
                last = vec
                for s in vec:
                    legend = _legend(target.get("legendFormat"), s)
                    lines.setdefault(legend, []).append((t - t0, s.value))
        rows = tuple((_legend(None, s), s.value) for s in last) if p["type"] == "table" else ()
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        out.append(Panel(p["title"], p["type"], (g["x"], g["y"], g["w"], g["h"]), unit,
                         tuple(Line(k, tuple(v)) for k, v in lines.items()), rows))
    return out


def format_value(v: float, unit: str) -> str:
    """A value as Grafana shows it for the units the dashboard uses."""
    if math.isnan(v):
        return "NaN"
    if unit == "bytes":
        for suffix, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(v) >= size:
                return f"{v / size:.1f} {suffix}"
        return f"{v:.0f} B"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:.2f} s"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    suffix = {"reqps": " req/s", "pps": " p/s", "Bps": " B/s"}.get(unit, "")
    return f"{v:.3g}{suffix}"


def render(panels: Sequence[Panel], out: Path, title: str, note: str) -> None:
    """Draw ``panels`` on one figure laid out as the dashboard's grid; write a PNG."""
    import matplotlib  # the docs extra, not a runtime dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = max(p.grid[1] + p.grid[3] for p in panels)
    col_in, row_in, head_in = 0.75, 0.36, 0.7
    width, height = 24 * col_in, rows * row_in + head_in
    fig = plt.figure(figsize=(width, height), facecolor=_BG)
    fig.text(0.01, 1 - 0.35 / height, title, color=_TEXT, fontsize=15, weight="bold",
             va="center")
    fig.text(0.99, 1 - 0.35 / height, note, color="#8e8e8e", fontsize=9, ha="right",
             va="center")
    pad, top, left, bottom = 0.06, 0.32, 0.75, 0.32  # inches: gap, title, tick labels
    t_end = max((ln.points[-1][0] for p in panels for ln in p.lines if ln.points),
                default=1.0)

    def box(p: Panel, inner: bool) -> tuple[float, float, float, float]:
        """The panel's rectangle in figure fractions; ``inner``: its plotting area."""
        x, y, w, h = p.grid
        x0, y0 = x * col_in + pad, height - head_in - (y + h) * row_in + pad
        x1, y1 = (x + w) * col_in - pad, height - head_in - y * row_in - pad
        if inner:
            x0, y0, x1, y1 = x0 + left, y0 + bottom, x1 - 0.15, y1 - top
        return x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height

    for p in panels:
        if p.kind == "row":
            x, y, _, _ = p.grid
            fig.text((x * col_in + pad) / width, (height - head_in - (y + 0.5) * row_in) / height,
                     p.title, color=_TEXT, fontsize=12, weight="bold", va="center")
            continue
        frame = fig.add_axes(box(p, inner=False), facecolor=_PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(_GRID)
        frame.text(0.01, 1 - 0.05 / (p.grid[3] * row_in), p.title, color=_TEXT, fontsize=10,
                   weight="bold", va="top", transform=frame.transAxes)
        ax = frame if p.kind in ("stat", "table") else fig.add_axes(box(p, inner=True),
                                                                     facecolor=_PANEL)
        for spine in ax.spines.values():
            spine.set_color(_GRID)
        if p.kind in ("stat", "table"):
            if p.kind == "table":
                text = "\n".join(f"{k}   {format_value(v, p.unit)}" for k, v in p.rows)
                ax.text(0.05, 0.8, text or "No data", color=_TEXT, fontsize=9,
                        va="top", transform=ax.transAxes, family="monospace")
            else:
                values = [ln.points[-1][1] for ln in p.lines if ln.points]
                shown = format_value(sum(values), p.unit) if values else "No data"
                ax.text(0.5, 0.45, shown, color="#73bf69", fontsize=26, weight="bold",
                        ha="center", va="center", transform=ax.transAxes)
            continue
        ax.tick_params(colors=_TEXT, labelsize=7)
        ax.grid(color=_GRID, linewidth=0.5)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=p.unit: format_value(v, u)))
        for ln in p.lines:
            xs, ys = zip(*ln.points, strict=True)
            ax.plot(xs, ys, linewidth=1.3, label=ln.legend)
        if p.lines:
            ax.legend(fontsize=7, loc="upper left", facecolor=_PANEL, edgecolor=_GRID,
                      labelcolor=_TEXT)
        else:
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlim(0, t_end)
        ax.set_xlabel("seconds into the run", color=_TEXT, fontsize=7, labelpad=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=_BG)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("series", type=Path, help="a recorded series (bench.dashboard.record)")
    ap.add_argument("-o", "--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    ap.add_argument("--dashboard", type=Path, default=DASHBOARD, help=f"default {DASHBOARD}")
    args = ap.parse_args(argv)
    dash = json.loads(args.dashboard.read_text())
    series = load_series(args.series)
    seconds = series.times[-1] - series.times[0] if series.times else 0.0
    note = (f"drawn with matplotlib from {len(series.times)} scrapes of a live fabric-agent "
            f"over {seconds:.0f} s (not Grafana); rates over {RATE_WINDOW}")
    render(evaluate_dashboard(dash, series), args.output, dash["title"], note)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
