"""The dashboard as a newcomer reads it: heatmap labels clear of the axis title, a version
with one request drawn as a point, cost per 1,000 predictions with currency and prices, and
a one-request version that does not set the cost scale. Screenshots in test-artifacts/."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from gateway.metrics import BUCKET_COUNT
from monitoring.models import DriftFeature, DriftWindow, MetricRollup, SlotResourceSample
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture

FEATURES = ["age", "balance", "contract_months", "monthly_charges", "tenure"]


def _one_request(deployment, version: int) -> None:
    MetricRollup.objects.create(
        deployment=deployment,
        version=version,
        status=200,
        start=timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=40),
        count=1,
        rows=1,
        latency_us_sum=4000,
        histogram=[1 if i == 60 else 0 for i in range(BUCKET_COUNT)],
    )


def _resources(deployment, slot: str, version: int) -> None:
    now = timezone.now()
    SlotResourceSample.objects.bulk_create(
        SlotResourceSample(
            deployment=deployment,
            slot=slot,
            version=version,
            cpu_seconds=2.0 * i,
            rss_bytes=300_000_000,
            process_count=2,
            taken_at=now - timedelta(minutes=50 - i),
        )
        for i in range(40)
    )


def _drift_windows(deployment, version: int) -> None:
    end = timezone.now().replace(minute=0, second=0, microsecond=0)
    for hours in range(6, 0, -1):
        window = DriftWindow.objects.create(
            deployment=deployment,
            version=version,
            kind="scheduled",
            start=end - timedelta(hours=hours + 1),
            end=end - timedelta(hours=hours),
            status="ok",
        )
        DriftFeature.objects.bulk_create(
            DriftFeature(
                window=window,
                feature=name,
                kind="numeric",
                status=("drift" if hours == 1 and name == "age" else "ok"),
                psi=0.3 if hours == 1 and name == "age" else 0.01,
            )
            for name in FEATURES
        )


def _boxes(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; })",
    )


def _overlap(a: dict, b: dict) -> bool:
    return not (
        a["bottom"] <= b["top"]
        or b["bottom"] <= a["top"]
        or a["right"] <= b["left"]
        or b["right"] <= a["left"]
    )


def test_dashboard_figures_read_right(ui, ops):  # noqa: F811
    deployment = ops["deployment"]
    v3 = ops["versions"][3].number
    _one_request(deployment, v3)
    _resources(deployment, "green", 2)
    _resources(deployment, "spare", v3)
    _drift_windows(deployment, 2)

    page = ui.new_page(ops["operator"])
    page.goto(f"/deployments/{deployment.name}/?window=24h")
    for figure in ("fig-drift", "fig-throughput", "fig-cost"):
        expect(page.locator(f'[data-figure="{figure}"]')).to_have_attribute("data-drawn", "true")

    heatmap = page.locator('[data-figure="fig-drift"]')
    heatmap.scroll_into_view_if_needed()
    ticks = _boxes(page, '[data-figure="fig-drift"] .xtick text')
    (title,) = _boxes(page, '[data-figure="fig-drift"] .xtitle')
    assert ticks and not [t for t in ticks if _overlap(t, title)], (ticks, title)
    ui.shot(page, "01-dashboard-24h")

    # v3 served one request: one marker, no line along the day.
    throughput = page.evaluate(
        "() => document.querySelector('[data-figure=\"fig-throughput\"]').data"
        ".map(t => [t.name, t.y.filter(v => v !== null).length])"
    )
    assert dict(throughput)[f"v{v3}"] == 1, throughput

    cost = page.locator("#fig-cost-caption")
    expect(cost).to_contain_text("USD per 1,000 predictions")
    expect(cost).to_contain_text("USD per CPU-hour")
    bars = page.evaluate("() => document.querySelector('[data-figure=\"fig-cost\"]').data[0].x")
    assert bars == ["v2"], bars  # v3's one request is named in the table, not charted
    expect(page.locator("#dashboard table")).to_contain_text("1 prediction: too few")
    page.locator('[data-figure="fig-cost"]').scroll_into_view_if_needed()
    ui.shot(page, "02-dashboard-cost-and-drift")
    assert not ui.console_errors, ui.console_errors
