"""The dashboard picture (bench/dashboard/): the PromQL approximation gives the values a
reader of the panels expects from a known series, every panel of dashboards/l3fabric.json
evaluates over scrapes of the agent's own metrics registry, and, where matplotlib (the
``docs`` extra) is installed, the picture is drawn."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.dashboard.promql import PromQLError, Series, evaluate
from bench.dashboard.render import DASHBOARD, evaluate_dashboard, format_value, render
from felix_like.metrics import BgpSample, Metrics, PeerSample

pytestmark = pytest.mark.unit


def _series(pages: list[str], instance: str = "n1", step: float = 1.0) -> Series:
    series = Series()
    for i, page in enumerate(pages):
        series.add_scrape(i * step, page, instance)
    return series


def _values(expr: str, series: Series, t: float) -> dict[str, float]:
    return {",".join(f"{k}={v}" for k, v in s.labels): s.value
            for s in evaluate(expr, series, t)}


COUNTER = "# TYPE req counter\nreq_total{verb=\"ADD\"} %d\nreq_total{verb=\"DEL\"} %d\n"


def test_rate_and_increase_over_a_window_count_resets() -> None:
    series = _series([COUNTER % (0, 0), COUNTER % (2, 1), COUNTER % (4, 1), COUNTER % (1, 1)])
    rate = _values('sum by (verb) (rate(req_total{instance=~".*"}[3s]))', series, 2.0)
    assert rate == {"verb=ADD": 2.0, "verb=DEL": 0.5}
    # 4 -> 1 is a restart of the counter: the rise is 1, not -3
    assert _values("increase(req_total{verb=\"ADD\"}[2s])", series, 3.0) == {
        "instance=n1,verb=ADD": 1.0}
    assert evaluate("rate(req_total[3s])", series, 0.0) == []  # one sample: no rate yet


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    page = ("# TYPE lat histogram\n"
            'lat_bucket{le="0.1"} %d\nlat_bucket{le="0.2"} %d\nlat_bucket{le="+Inf"} %d\n'
            "lat_sum 0\nlat_count %d\n")
    series = _series([page % (0, 0, 0, 0), page % (5, 10, 10, 10)])
    p50 = _values("histogram_quantile(0.5, sum by (le) (rate(lat_bucket[5s])))", series, 1.0)
    assert p50 == {"": pytest.approx(0.1)}
    p75 = _values("histogram_quantile(0.75, sum by (le) (rate(lat_bucket[5s])))", series, 1.0)
    assert p75 == {"": pytest.approx(0.15)}
    # no observations in the window: no point, as Prometheus's NaN draws none
    series.add_scrape(2.0, page % (5, 10, 10, 10), "n1")
    assert _values("histogram_quantile(0.5, sum by (le) (rate(lat_bucket[1s])))",
                   series, 2.0) == {}


def test_comparison_or_vector_and_on() -> None:
    page = ("# TYPE up gauge\nup{peer=\"a\"} 1\nup{peer=\"b\"} 0\n"
            "# TYPE info gauge\ninfo{version=\"1\"} 1\n")
    series = _series([page])
    assert _values("count(up == 0) or vector(0)", series, 0.0) == {"": 1.0}
    assert _values("count(up > 5) or vector(0)", series, 0.0) == {"": 0.0}
    assert _values("max by (instance) (up) and on (instance) info", series, 0.0) == {
        "instance=n1": 1.0}
    assert _values("max(up) and on (instance) info", series, 0.0) == {}  # no instance
    assert len(evaluate("up and on (instance) info", series, 0.0)) == 2
    assert evaluate("up and on (instance) nothing", series, 0.0) == []
    with pytest.raises(PromQLError):
        evaluate("label_replace(up, 'a', 'b', 'c', 'd')", series, 0.0)


def _agent_pages(n: int) -> list[str]:
    """``n`` scrapes of a real `Metrics` registry with some traffic between them."""
    metrics = Metrics()
    metrics.in_sync.set(1)
    metrics.sample_bgp(lambda: BgpSample((PeerSample("10.0.0.1", True, 3, 100, 0),),
                                         advertised=2))
    pages = []
    for i in range(n):
        metrics.cni_requests.labels("ADD", "ok").inc()
        metrics.cni_latency.labels("ADD").observe(0.01 * (i % 3 + 1))
        metrics.apply_latency.labels("routes").observe(0.002)
        metrics.routes_programmed.labels("local").set(i)
        metrics.datastore_events.labels("update").inc(2)
        metrics.addresses_in_use.set(i)
        pages.append(metrics.render().decode())
    return pages


def test_every_panel_evaluates_over_the_agents_own_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = evaluate_dashboard(dash, _series(_agent_pages(8), step=0.5))
    by_title = {p.title: p for p in panels}
    assert [p.title for p in panels] == [p["title"] for p in dash["panels"]]

    def last(title: str) -> dict[str, float]:
        return {ln.legend: ln.points[-1][1] for ln in by_title[title].lines}
    assert last("Agents in sync") == {"in sync": 1.0}
    assert last("BGP sessions down") == {"down": 0.0}
    assert last("Sessions up per node") == {"n1 up": 1.0, "n1 configured": 1.0}
    assert last("CNI requests / s") == {"ADD ok": pytest.approx(2.0)}  # one every 0.5 s
    assert 0.01 <= last("CNI ADD latency")["p50"] <= 0.025
    assert last("Routes programmed") == {"n1 local": 7.0}
    assert last("Datastore events / s") == {"update": pytest.approx(4.0)}
    assert by_title["Versions"].rows and by_title["Versions"].rows[0][1] == 1.0
    assert last("Resident memory")["n1"] > 0


def test_values_read_as_grafana_shows_them() -> None:
    assert format_value(3 * 2**20, "bytes") == "3.0 MiB"
    assert format_value(0.0125, "s") == "12.5 ms"
    assert format_value(0.25, "percentunit") == "25.0%"
    assert format_value(2, "reqps") == "2 req/s"
    assert format_value(math.nan, "") == "NaN"


def test_the_picture_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the docs extra (make docs)")
    dash = json.loads(DASHBOARD.read_text())
    out = tmp_path / "dashboard.png"
    render(evaluate_dashboard(dash, _series(_agent_pages(6), step=0.5)), out, dash["title"],
           "a test series")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
