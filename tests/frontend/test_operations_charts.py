"""frontend/charts.py (pure figure builders) and the dashboard's SQL merge of roll-ups
(monitoring/selectors/buckets.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from frontend import charts
from gateway.metrics import BUCKET_COUNT
from monitoring import selectors as data
from monitoring.models import DriftFeature, DriftWindow, MetricRollup
from monitoring.selectors import traffic_by_version
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _series(versions=(1, 2), n=3, requests=5):
    return {
        v: {
            "t": [T0 + timedelta(minutes=i) for i in range(n)],
            "p50": [10.0 * v] * n,
            "p95": [20.0 * v] * n,
            "p99": [30.0 * v] * n,
            "rps": [requests / 60] * n,
            "error_rate": [0.1] * n,
            "requests": [requests] * n,
        }
        for v in versions
    }


def _json_roundtrip(figure: dict) -> dict:
    # What json_script does: the figure must be plain JSON.
    return json.loads(json.dumps(figure, cls=DjangoJSONEncoder))


# --- pure figures ---------------------------------------------------------------------------


def test_latency_figure_has_three_percentiles_per_version():
    figure = charts.latency_figure(_series())
    assert _json_roundtrip(figure) == figure  # datetimes already ISO strings
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["v1 p50", "v1 p95", "v1 p99", "v2 p50", "v2 p95", "v2 p99"]
    v1 = figure["data"][:3]
    assert {t["line"]["color"] for t in v1} == {charts.version_color(1)}
    assert [t["line"]["dash"] for t in v1] == ["solid", "dash", "dot"]
    assert v1[2]["y"] == [30.0, 30.0, 30.0]
    assert v1[0]["x"][0] == "2026-01-01T00:00:00+00:00"
    assert figure["layout"]["title"]["text"] == "Latency (ms) by version"
    assert figure["layout"]["xaxis"]["type"] == "date"


def test_throughput_and_error_figures_have_one_trace_per_version():
    throughput = charts.throughput_figure(_series())
    assert [t["name"] for t in throughput["data"]] == ["v1", "v2"]
    assert not any("stackgroup" in t for t in throughput["data"])
    assert all(t["connectgaps"] is False and "markers" in t["mode"] for t in throughput["data"])


def test_throughput_leaves_buckets_without_requests_as_gaps():
    series = _series(versions=(1,), n=4)
    series[1]["requests"] = [0, 1, 0, 0]
    series[1]["rps"] = [0.0, 1 / 60, 0.0, 0.0]
    (trace,) = charts.throughput_figure(series)["data"]
    # One request in one bucket: one point, not a line along the whole window.
    assert trace["y"] == [None, 1 / 60, None, None]
    errors = charts.error_rate_figure(_series())
    assert errors["data"][1]["y"] == [0.1, 0.1, 0.1]
    assert errors["layout"]["yaxis"]["tickformat"] == ".1%"


@pytest.mark.parametrize(
    "figure",
    [
        charts.latency_figure({}),
        charts.latency_figure(_series(requests=0)),
        charts.throughput_figure({}),
        charts.error_rate_figure({}),
        charts.cost_figure([]),
        charts.cost_figure([{"version": 1, "cost_per_prediction": None}]),
        charts.drift_heatmap_figure(features=[], times=[], statuses=[], scores=[], version=None),
        charts.prediction_distribution_figure(labels=[], reference=[], live=None),
        charts.shadow_agreement_figure([], version=2),
        charts.shadow_agreement_figure([{"start": T0, "rows": 0, "mirrored": 3}], version=2),
    ],
)
def test_empty_data_gives_a_figure_that_says_what_is_missing(figure):
    assert figure["data"] == []
    (note,) = figure["layout"]["annotations"]
    assert note["text"] and not note["showarrow"]
    assert figure["layout"]["title"]["text"]
    assert _json_roundtrip(figure) == figure


def test_shadow_figure_is_oldest_minute_first_with_agreement_and_probability_gap():
    windows = [
        {
            "start": T0 + timedelta(minutes=1),
            "rows": 10,
            "agreement_rate": 0.5,
            "prob_abs_mean": 0.2,
        },
        {"start": T0, "rows": 4, "agreement_rate": 1.0, "prob_abs_mean": 0.01},
        {"start": T0 - timedelta(minutes=1), "rows": 0, "agreement_rate": None},
    ]
    figure = charts.shadow_agreement_figure(windows, version=3)
    agreement, gap = figure["data"]
    assert agreement["x"] == [T0.isoformat(), (T0 + timedelta(minutes=1)).isoformat()]
    assert agreement["y"] == [1.0, 0.5] and agreement["customdata"] == [4, 10]
    assert gap["y"] == [0.01, 0.2] and gap["yaxis"] == "y2"
    assert figure["layout"]["title"]["text"] == "Shadow v3 against live"
    assert _json_roundtrip(figure) == figure


def test_cost_figure_shows_cost_with_its_raw_inputs():
    prices = {"price_cpu_hour": 0.04, "price_gb_hour": 0.005}
    figure = charts.cost_figure(
        [
            {
                "version": 1,
                "cost_per_prediction": 2e-6,
                "predictions": 5000,
                "cpu_seconds": 12.5,
                "memory_gb_hours": 0.1,
                **prices,
            },
            {
                "version": 2,
                "cost_per_prediction": None,
                "predictions": 0,
                "cpu_seconds": 0,
                "memory_gb_hours": 0,
                **prices,
            },
            # One request: its cost per prediction is the idle slot's whole cost.
            {
                "version": 3,
                "cost_per_prediction": 0.4,
                "predictions": 1,
                "cpu_seconds": 30,
                "memory_gb_hours": 0.2,
                **prices,
            },
        ],
        currency="EUR",
    )
    (bars,) = figure["data"]
    # Per 1,000 predictions, not 2e-06; the one-request version does not set the scale.
    assert bars["x"] == ["v1"] and bars["y"] == [pytest.approx(0.002)]
    assert bars["text"] == ["0.002 EUR"]
    assert bars["customdata"] == [[5000, 12.5, 0.1]]
    assert "CPU-seconds" in bars["hovertemplate"] and "GB-hours" in bars["hovertemplate"]
    assert figure["layout"]["title"]["text"] == "Cost per 1,000 predictions (EUR)"
    (basis,) = figure["layout"]["annotations"]
    assert basis["text"] == "at 0.04 EUR per CPU-hour and 0.005 EUR per GB-hour of memory"


def test_drift_heatmap_maps_statuses_to_levels_and_keeps_scores_in_hover():
    times = [T0, T0 + timedelta(hours=1)]
    figure = charts.drift_heatmap_figure(
        features=["age", "income"],
        times=times,
        statuses=[["ok", "drift"], ["warn", None]],
        scores=[[0.01, 0.4], [0.15, None]],
        version=2,
    )
    (heatmap,) = figure["data"]
    assert heatmap["type"] == "heatmap"
    assert heatmap["y"] == ["age", "income"]
    assert heatmap["x"] == ["01-01 00:00", "01-01 01:00"]
    assert figure["layout"]["xaxis"]["type"] == "category"
    assert heatmap["z"] == [[1, 3], [2, None]]
    assert heatmap["text"][0][1] == "drift · score 0.400"
    assert heatmap["text"][1][1] == "no window"
    assert heatmap["colorbar"]["ticktext"] == ["no data", "ok", "warn", "drift"]
    assert figure["layout"]["title"]["text"] == "Drift per feature (v2)"


def test_prediction_distribution_compares_live_with_reference():
    figure = charts.prediction_distribution_figure(
        labels=["0", "1", "other"],
        reference=[0.5, 0.5, 0.0],
        live=[0.2, 0.8, 0.0],
        live_rows=10,
        version=2,
    )
    assert [t["name"] for t in figure["data"]] == ["reference", "live (10 sampled)"]
    assert figure["layout"]["barmode"] == "group"
    reference_only = charts.prediction_distribution_figure(
        labels=["0", "1"], reference=[0.5, 0.5], live=None
    )
    assert [t["name"] for t in reference_only["data"]] == ["reference"]
    assert data.shares([1, 3]) == [0.25, 0.75] and data.shares([0, 0]) == [0.0, 0.0]


# --- the SQL merge against the monitoring selector -------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def _random_rollups(deployment, *, minutes: int, seed: int = 3, statuses=(200, 500, 422)):
    rng = np.random.default_rng(seed)
    now = timezone.now().replace(second=0, microsecond=0)
    rows = []
    for m in range(minutes):
        for version in (1, 2):
            for status in statuses:
                histogram = np.zeros(BUCKET_COUNT, dtype=np.int64)
                centre = 40 + 10 * version + (5 if status >= 500 else 0)
                idx = np.clip(rng.normal(centre, 6, 40).astype(int), 0, BUCKET_COUNT - 1)
                np.add.at(histogram, idx, 1)
                count = int(histogram.sum())
                rows.append(
                    MetricRollup(
                        deployment=deployment,
                        version=version,
                        status=status,
                        start=now - timedelta(minutes=m + 1),
                        count=count,
                        rows=count * 2,
                        errors=count if status >= 500 else 0,
                        latency_us_sum=count * 1000,
                        histogram=histogram.tolist(),
                    )
                )
    MetricRollup.objects.bulk_create(rows)


@pytest.mark.django_db
@pytest.mark.parametrize("window", ["1h", "24h"])
def test_window_percentiles_match_the_monitoring_selector(ops, window):  # noqa: F811
    deployment = ops["deployment"]
    MetricRollup.objects.filter(deployment=deployment).delete()
    _random_rollups(deployment, minutes=50)
    buckets = data.rollup_buckets(deployment=deployment, window=window)
    totals = buckets.totals()
    expected = traffic_by_version(deployment=deployment, start=buckets.start, end=buckets.end)
    assert set(totals) == set(expected) == {1, 2}
    for version, summary in expected.items():
        cell = totals[version]
        for q in (0.5, 0.95, 0.99):
            assert cell.percentile_ms(q) == pytest.approx(summary.percentile_ms(q), rel=1e-12)
        assert (cell.requests, cell.errors, cell.client_errors, cell.predictions) == (
            summary.requests,
            summary.errors,
            summary.client_errors,
            summary.predictions,
        )
        assert cell.latency_us_sum == summary.latency_us_sum


@pytest.mark.django_db
def test_each_minute_bucket_equals_its_own_rows(ops):  # noqa: F811
    deployment = ops["deployment"]
    MetricRollup.objects.filter(deployment=deployment).delete()
    _random_rollups(deployment, minutes=5, statuses=(200,))
    buckets = data.rollup_buckets(deployment=deployment, window="1h")
    for row in MetricRollup.objects.filter(deployment=deployment):
        cell = buckets.cells[row.start][row.version]
        assert cell.requests == row.count
        assert cell.histogram.tolist() == list(row.histogram)
    points = data.series(buckets)
    assert len(points[1]["t"]) == len(buckets.starts) <= 61
    quiet = [i for i, n in enumerate(points[1]["requests"]) if n == 0]
    assert quiet and all(points[1]["p99"][i] is None for i in quiet)


@pytest.mark.django_db
@pytest.mark.parametrize(("window", "most"), [("1h", 61), ("24h", 289), ("7d", 169), ("30d", 181)])
def test_every_window_has_at_most_a_few_hundred_points(ops, window, most):  # noqa: F811
    buckets = data.rollup_buckets(deployment=ops["deployment"], window=window)
    assert len(buckets.starts) <= most
    assert buckets.start.timestamp() % buckets.bucket_seconds == 0


@pytest.mark.django_db
def test_closed_buckets_come_from_the_cache_and_open_ones_are_recomputed(ops):  # noqa: F811
    deployment = ops["deployment"]
    first = data.rollup_buckets(deployment=deployment, window="24h")
    with CaptureQueriesContext(connection) as queries:
        second = data.rollup_buckets(deployment=deployment, window="24h")
    (query,) = queries.captured_queries
    assert "date_bin" in query["sql"]
    # Only the span from the first bucket that is not settled yet is read again.
    assert second.totals()[1].requests == first.totals()[1].requests == 300
    # A roll-up landing in the open bucket shows on the next refresh.
    now = timezone.now().replace(second=0, microsecond=0)
    MetricRollup.objects.create(
        deployment=deployment,
        version=1,
        status=200,
        start=now,
        count=7,
        rows=7,
        latency_us_sum=7000,
        histogram=[7 if i == 50 else 0 for i in range(BUCKET_COUNT)],
    )
    third = data.rollup_buckets(deployment=deployment, window="24h")
    assert third.totals()[1].requests == 307


@pytest.mark.django_db
def test_unknown_window_is_refused_with_the_known_ones(ops):  # noqa: F811
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="window must be one of 1h, 24h, 7d, 30d"):
        data.rollup_buckets(deployment=ops["deployment"], window="90d")


@pytest.mark.django_db
def test_drift_heatmap_data_is_features_by_window_of_one_version(ops):  # noqa: F811
    deployment = ops["deployment"]
    now = timezone.now()
    for hours, status in ((3, "ok"), (2, "warn"), (1, "drift")):
        window = DriftWindow.objects.create(
            deployment=deployment,
            version=2,
            kind="scheduled",
            start=now - timedelta(hours=hours + 1),
            end=now - timedelta(hours=hours),
            status=status,
        )
        DriftFeature.objects.create(
            window=window, feature="age", kind="numeric", status=status, psi=hours / 10
        )
        if hours == 1:
            DriftFeature.objects.create(
                window=window, feature="plan", kind="categorical", status="ok", js=0.05
            )
    other = DriftWindow.objects.create(
        deployment=deployment, version=1, kind="scheduled", start=now, end=now, status="drift"
    )
    DriftFeature.objects.create(window=other, feature="age", kind="numeric", status="drift")
    heat = data.drift_heatmap(
        deployment=deployment, start=now - timedelta(days=1), end=now, version=2
    )
    assert heat["features"] == ["age", "plan"]
    assert len(heat["times"]) == 3
    assert heat["statuses"] == [["ok", "warn", "drift"], [None, None, "ok"]]
    assert heat["scores"][0] == pytest.approx([0.3, 0.2, 0.1])
    assert heat["scores"][1][2] == 0.05  # JS where there is no PSI
    figure = charts.drift_heatmap_figure(**heat)
    assert figure["data"][0]["z"] == [[1, 2, 3], [None, None, 1]]
