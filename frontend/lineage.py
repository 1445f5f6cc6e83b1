"""Lineage graph → Plotly figure. Pure: the selector's graph dict in, a figure dict out."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

# Colours pass WCAG AA against white for the labels drawn beside the markers.
NODE_STYLE: dict[str, dict[str, str]] = {
    "dataset": {"color": "#1f6f43", "symbol": "square", "name": "Dataset"},
    "code": {"color": "#6b3fa0", "symbol": "diamond", "name": "Code"},
    "training_run": {"color": "#8a5a00", "symbol": "triangle-up", "name": "Training run"},
    "version": {"color": "#1d4f91", "symbol": "circle", "name": "Model version"},
    "deployment": {"color": "#a3262a", "symbol": "hexagon", "name": "Deployment"},
}
_FALLBACK = {"color": "#444444", "symbol": "circle", "name": "Other"}


def _layers(node_ids: list[str], edges: list[dict[str, str]]) -> dict[str, int]:
    """Column of each node: the longest path from a source (cycles cannot occur, but a
    bound keeps a malformed graph from looping)."""
    layer = dict.fromkeys(node_ids, 0)
    for _ in range(len(node_ids)):
        changed = False
        for edge in edges:
            src, dst = edge["source"], edge["target"]
            if src in layer and dst in layer and layer[dst] < layer[src] + 1:
                layer[dst] = layer[src] + 1
                changed = True
        if not changed:
            break
    return layer


def _hover(node: dict[str, Any]) -> str:
    parts = [str(node.get("label", node["id"]))]
    for key in ("state", "uri", "content_hash", "repo", "commit", "environment"):
        if node.get(key):
            parts.append(f"{key}: {node[key]}")
    if node.get("type") == "deployment":
        parts.append("serving live traffic" if node.get("live") else "standby slot")
    return "<br>".join(_escape(p) for p in parts)


def _escape(text: str) -> str:
    # Plotly renders a subset of HTML in hover text and labels: user data stays text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def lineage_figure(graph: dict[str, Any]) -> dict[str, Any]:
    """Columns from upstream (datasets, code, parents) to downstream (children, deployments)."""
    nodes = {node["id"]: node for node in graph.get("nodes", [])}
    edges = [e for e in graph.get("edges", []) if e["source"] in nodes and e["target"] in nodes]
    layer = _layers(list(nodes), edges)
    columns: dict[int, list[str]] = defaultdict(list)
    for node_id in nodes:
        columns[layer[node_id]].append(node_id)
    position: dict[str, tuple[float, float]] = {}
    for x, ids in columns.items():
        ids.sort(key=lambda i: (nodes[i].get("type", ""), str(nodes[i].get("label", ""))))
        offset = (len(ids) - 1) / 2
        for index, node_id in enumerate(ids):
            position[node_id] = (float(x), offset - index)

    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for edge in edges:
        (x0, y0), (x1, y1) = position[edge["source"]], position[edge["target"]]
        edge_x += [x0, x1, None]
        edge_y += [y0, y1, None]
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "x": edge_x,
            "y": edge_y,
            "line": {"color": "#8c8c8c", "width": 1.5},
            "hoverinfo": "skip",
            "showlegend": False,
        }
    ]
    by_type: dict[str, list[str]] = defaultdict(list)
    for node_id, node in nodes.items():
        by_type[node.get("type", "")].append(node_id)
    root = graph.get("root")
    for node_type, ids in sorted(by_type.items()):
        style = NODE_STYLE.get(node_type, _FALLBACK)
        traces.append(
            {
                "type": "scatter",
                "mode": "markers+text",
                "name": style["name"],
                "x": [position[i][0] for i in ids],
                "y": [position[i][1] for i in ids],
                "text": [_escape(str(nodes[i].get("label", i))) for i in ids],
                "textposition": "bottom center",
                "hovertext": [_hover(nodes[i]) for i in ids],
                "hoverinfo": "text",
                "marker": {
                    "color": style["color"],
                    "symbol": style["symbol"],
                    "size": [22 if i == root else 15 for i in ids],
                    "line": {"color": "#111111", "width": [3 if i == root else 1 for i in ids]},
                },
            }
        )
    rows = max((len(ids) for ids in columns.values()), default=1)
    return {
        "data": traces,
        "layout": {
            "height": max(260, 90 * rows + 80),
            "margin": {"l": 20, "r": 20, "t": 10, "b": 30},
            "xaxis": {"visible": False, "range": [-0.6, max(columns, default=0) + 0.6]},
            "yaxis": {"visible": False, "range": [-(rows / 2) - 0.3, rows / 2 + 0.3]},
            "legend": {"orientation": "h", "y": -0.05},
            "hovermode": "closest",
            "plot_bgcolor": "#ffffff",
            "paper_bgcolor": "#ffffff",
        },
        "config": {"displayModeBar": False},
    }


def lineage_rows(graph: dict[str, Any]) -> list[dict[str, str]]:
    """The graph's links as text rows (the chart's accessible equivalent)."""
    labels = {node["id"]: str(node.get("label", node["id"])) for node in graph.get("nodes", [])}
    return [
        {
            "source": labels.get(edge["source"], edge["source"]),
            "target": labels.get(edge["target"], edge["target"]),
            "relation": str(edge.get("relation", "")),
        }
        for edge in graph.get("edges", [])
    ]
