"""A self-contained HTML report of a connectivity graph: connectivity heat map, degree distributions, motif
z-score profile and tables. Figures are embedded as base64 PNG (matplotlib's object API with the Agg
canvas, no pyplot state); the page loads nothing from the network. Written atomically.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from connectomix.analyze.graph import ConnectivityGraph, cell_type_matrix
from connectomix.analyze.motifs import TRIAD_NAMES, dyad_census
from connectomix.analyze.significance import MotifSignificance

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#666;font-size:.85em}
"""


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _has_types(graph: ConnectivityGraph, attribute: str) -> bool:
    return attribute in graph.nodes.columns and graph.nodes[attribute].notna().any()


def connectivity_figure(graph: ConnectivityGraph, attribute: str = "cell_type") -> str:
    """Heat map of log10(1 + synapses): nodes × nodes (sorted by ``attribute``, then by degree), and the
    cell-type matrix beside it where the nodes have types."""
    typed = _has_types(graph, attribute)
    figure = _figure(11 if typed else 6.5, 5.5)
    axes = figure.subplots(1, 2 if typed else 1, squeeze=False)[0]
    degree = graph.in_degree() + graph.out_degree()
    if typed:
        types = graph.nodes[attribute].astype(object).where(graph.nodes[attribute].notna(), "~").astype(str)
        order = np.lexsort((-degree, types.to_numpy()))
    else:
        order = np.argsort(-degree, kind="stable")
    dense = graph.adjacency("synapses").toarray()[np.ix_(order, order)]
    image = axes[0].imshow(np.log10(1 + dense), cmap="magma_r", interpolation="nearest")
    axes[0].set(title=f"synapses, {graph.n_nodes} nodes", xlabel="postsynaptic", ylabel="presynaptic")
    figure.colorbar(image, ax=axes[0], label="log10(1 + synapses)", shrink=0.8)
    if typed:
        matrix = cell_type_matrix(graph, attribute)
        image = axes[1].imshow(np.log10(1 + matrix.to_numpy()), cmap="viridis")
        axes[1].set_xticks(range(len(matrix.columns)), matrix.columns, rotation=90)
        axes[1].set_yticks(range(len(matrix.index)), matrix.index)
        axes[1].set(title=f"{attribute} × {attribute}", xlabel="postsynaptic", ylabel="presynaptic")
        figure.colorbar(image, ax=axes[1], label="log10(1 + synapses)", shrink=0.8)
    return _png(figure)


def degree_figure(graph: ConnectivityGraph) -> str:
    """Histograms of in- and out-degree (partners) and of synapses per edge."""
    figure = _figure(11, 3.6)
    axes = figure.subplots(1, 3)
    for ax, values, label in (
        (axes[0], graph.in_degree(), "in-degree (presynaptic partners)"),
        (axes[1], graph.out_degree(), "out-degree (postsynaptic partners)"),
    ):
        ax.hist(values, bins=min(50, max(5, int(values.max(initial=0)) + 1)), color="#4477aa")
        ax.set(xlabel=label, ylabel="nodes")
    weights = graph.edges["synapses"].to_numpy()
    if weights.size:
        bins = np.unique(np.round(np.logspace(0, np.log10(weights.max() + 1), 30)))
        axes[2].hist(weights, bins=bins, color="#aa7744")
        axes[2].set(xscale="log", yscale="log", xlabel="synapses per edge", ylabel="edges")
    return _png(figure)


def zscore_figure(significance: MotifSignificance) -> str:
    """Bar chart of the triad z-scores (classes with no variance under the null model left blank)."""
    figure = _figure(10, 3.8)
    ax = figure.subplots()
    z = significance.zscores
    values = np.array([z[k] if z[k] is not None else np.nan for k in TRIAD_NAMES])
    colors = ["#bb3333" if v > 0 else "#3355bb" for v in np.nan_to_num(values)]
    ax.bar(range(len(TRIAD_NAMES)), np.nan_to_num(values), color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(TRIAD_NAMES)), TRIAD_NAMES, rotation=45)
    ax.set(
        ylabel="z-score",
        title=f"triad z-scores vs {significance.null} null ({significance.randomizations} randomisations)",
    )
    return _png(figure)


def _table(frame: pd.DataFrame, *, index: bool = True, digits: int = 3) -> str:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "–"
        if isinstance(value, float | np.floating):
            number = float(value)
            return f"{number:.{digits}g}" if abs(number) < 1e4 else f"{number:,.0f}"
        if isinstance(value, int | np.integer):
            return f"{int(value):,}"
        return html.escape(str(value))

    head = ([html.escape(str(frame.index.name or ""))] if index else []) + [
        html.escape(str(c)) for c in frame.columns
    ]
    rows = []
    for label, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        cells = ([f"<td>{html.escape(str(label))}</td>"] if index else []) + [
            f"<td>{cell(v)}</td>" for v in row
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def motif_table(significance: MotifSignificance) -> pd.DataFrame:
    """Observed count, null mean ± std, z-score and both empirical p-values per triad class."""
    mean, std, z = significance.mean, significance.std, significance.zscores
    greater, less = significance.p_greater, significance.p_less
    return pd.DataFrame(
        {
            "observed": [significance.observed[k] for k in TRIAD_NAMES],
            "null mean": [mean[k] for k in TRIAD_NAMES],
            "null std": [std[k] for k in TRIAD_NAMES],
            "z": [z[k] for k in TRIAD_NAMES],
            "p (null ≥ obs)": [greater[k] for k in TRIAD_NAMES],
            "p (null ≤ obs)": [less[k] for k in TRIAD_NAMES],
        },
        index=pd.Index(TRIAD_NAMES, name="triad"),
    )


def render_report(
    graph: ConnectivityGraph,
    *,
    significance: MotifSignificance | None = None,
    communities: dict[str, float] | None = None,
    title: str | None = None,
    attribute: str = "cell_type",
) -> str:
    """The report as one HTML string (see the module docstring).

    ``communities``: optional ``method → adjusted Rand index`` rows to show (e.g. against cell classes).
    """
    dyads = dyad_census(graph)
    summary = pd.DataFrame(
        {
            "value": [
                graph.n_nodes,
                graph.n_edges,
                graph.n_synapses,
                dyads.mutual,
                dyads.asymmetric,
                dyads.reciprocity,
                graph.n_edges / max(graph.n_nodes * (graph.n_nodes - 1), 1),
            ]
        },
        index=pd.Index(
            ["nodes", "edges", "synapses", "reciprocal pairs", "one-way pairs", "reciprocity", "density"],
            name="",
        ),
    )
    name = title or graph.name or "connectivity graph"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(name)}</h1>",
        f"<p class='note'>connectomix report, {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        "<h2>Summary</h2>",
        _table(summary),
        "<h2>Connectivity</h2>",
        connectivity_figure(graph, attribute),
    ]
    if _has_types(graph, attribute):
        parts += [f"<h3>{html.escape(attribute)} × {html.escape(attribute)} (synapses)</h3>"]
        parts.append(_table(cell_type_matrix(graph, attribute)))
    parts += ["<h2>Degree distributions</h2>", degree_figure(graph)]
    if significance is not None:
        mutual = significance.to_dict()["mutual_dyads"]
        parts += [
            "<h2>Motifs: triad census and z-scores</h2>",
            zscore_figure(significance),
            f"<p class='note'>null model: {html.escape(significance.null)}, "
            f"{significance.randomizations} randomisations, seed {significance.seed}, "
            f"{significance.swaps_per_edge:g} swaps per edge. Reciprocal pairs: observed "
            f"{mutual['observed']}, null mean {_fmt(mutual['null_mean'])}, z = {_fmt(mutual['zscore'])}.</p>",
            _table(motif_table(significance)),
        ]
    if communities:
        frame = pd.DataFrame(
            {"adjusted Rand index": list(communities.values())},
            index=pd.Index(list(communities), name="method"),
        )
        parts += [f"<h2>Communities vs {html.escape(attribute)}</h2>", _table(frame)]
    top = graph.nodes.assign(
        in_degree=graph.in_degree(),
        out_degree=graph.out_degree(),
        synapses_in=np.bincount(graph.edges["post"], graph.edges["synapses"], graph.n_nodes).astype(np.int64),
        synapses_out=np.bincount(graph.edges["pre"], graph.edges["synapses"], graph.n_nodes).astype(np.int64),
    )
    top = top.assign(total=top["synapses_in"] + top["synapses_out"]).nlargest(20, "total")
    parts += ["<h2>Most connected nodes</h2>", _table(top.astype({"node_id": str}), index=False)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def write_report(graph: ConnectivityGraph, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_report` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(render_report(graph, **kwargs), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = [
    "connectivity_figure",
    "degree_figure",
    "motif_table",
    "render_report",
    "write_report",
    "zscore_figure",
]
