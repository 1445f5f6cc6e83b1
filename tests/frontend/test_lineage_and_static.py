from __future__ import annotations

import pytest
from django.contrib.staticfiles import finders

from frontend.lineage import lineage_figure, lineage_rows
from frontend.staticfiles import PLOTLY_STATIC_PATH

GRAPH = {
    "root": "version:2",
    "nodes": [
        {"id": "dataset:s3://d|", "type": "dataset", "label": "train <b>set</b>"},
        {"id": "version:1", "type": "version", "label": "churn v1", "state": "approved"},
        {"id": "version:2", "type": "version", "label": "churn v2", "state": "in_review"},
        {"id": "deployment:prod", "type": "deployment", "label": "prod", "live": True},
    ],
    "edges": [
        {"source": "dataset:s3://d|", "target": "version:1", "relation": "training"},
        {"source": "version:1", "target": "version:2", "relation": "parent"},
        {"source": "version:2", "target": "deployment:prod", "relation": "served (blue)"},
        {"source": "version:2", "target": "missing", "relation": "dangling"},
    ],
}


def positions(figure):
    found = {}
    for trace in figure["data"][1:]:
        for x, y, text in zip(trace["x"], trace["y"], trace["text"], strict=True):
            found[text] = (x, y)
    return found


def test_lineage_figure_places_upstream_left_of_downstream():
    figure = lineage_figure(GRAPH)
    where = positions(figure)
    assert where["train &lt;b&gt;set&lt;/b&gt;"][0] < where["churn v1"][0]
    assert where["churn v1"][0] < where["churn v2"][0] < where["prod"][0]
    edges = figure["data"][0]
    assert edges["mode"] == "lines"
    assert len(edges["x"]) == 3 * 3  # dangling edge dropped; None between segments
    root_trace = next(t for t in figure["data"][1:] if "churn v2" in t["text"])
    sizes = dict(zip(root_trace["text"], root_trace["marker"]["size"], strict=True))
    assert sizes["churn v2"] > sizes["churn v1"]


def test_lineage_figure_escapes_labels_and_hover_text():
    figure = lineage_figure(GRAPH)
    text = str(figure)
    assert "<b>" not in text
    assert "&lt;b&gt;" in text


def test_lineage_of_a_lone_version():
    figure = lineage_figure({"root": "v", "nodes": [{"id": "v", "type": "version"}], "edges": []})
    assert positions(figure) == {"v": (0.0, 0.0)}


def test_lineage_rows_use_labels():
    rows = lineage_rows(GRAPH)
    assert rows[0] == {"source": "train <b>set</b>", "target": "churn v1", "relation": "training"}


def test_plotly_bundle_is_a_local_static_file_and_only_that():
    found = finders.find(PLOTLY_STATIC_PATH)
    assert found and found.endswith("plotly/package_data/plotly.min.js")
    assert finders.find("frontend/vendor/widgetbundle.js") is None
    listed = [path for finder in finders.get_finders() for path, _ in finder.list([])]
    assert "plotly.min.js" in listed and "widgetbundle.js" not in listed


@pytest.mark.django_db
def test_base_page_loads_plotly_and_app_scripts_locally(client, make_user):
    client.force_login(make_user("viewer"))
    html = client.get("/models/").content.decode()
    assert f'src="/static/{PLOTLY_STATIC_PATH}"' in html
    assert 'src="/static/frontend/app.js"' in html
    assert 'href="/static/frontend/operations.css"' in html
    assert "http://" not in html.split("<body")[0] and "https://" not in html.split("<body")[0]
