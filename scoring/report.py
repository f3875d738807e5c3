"""HTML report: a metric table, per-group bars and a 2-D PCA map of the embeddings coloured by group.

Charts are base64 PNGs drawn with matplotlib (Agg) when it is installed, else inline SVG.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _bars(title: str, per_group: dict[str, float]) -> str:
    items = sorted(((k, v) for k, v in per_group.items() if v is not None), key=lambda kv: kv[0])[:40]
    if not items:
        return ""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 0.25 * len(items) + 1))
        ax.barh([k for k, _ in items], [v for _, v in items], color=PALETTE[0])
        ax.set_title(title)
        ax.invert_yaxis()
        return _png(fig)
    except ImportError:
        w, bh = 420, 16
        vmax = max(abs(v) for _, v in items) or 1
        rows = []
        for i, (k, v) in enumerate(items):
            rows.append(f'<text x="0" y="{i * bh + 12}" font-size="11">{html.escape(k[:24])}</text>'
                        f'<rect x="160" y="{i * bh + 2}" width="{(w - 170) * abs(v) / vmax:.1f}" height="{bh - 4}" fill="{PALETTE[0]}"/>')
        return f'<h4>{html.escape(title)}</h4><svg width="{w}" height="{len(items) * bh}">{"".join(rows)}</svg>'


def _scatter(title: str, m: dict[str, Any]) -> str:
    xs, ys, gs = m["x"], m["y"], m.get("group") or ["all"] * len(m["x"])
    names = sorted(set(gs))
    color = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(names)}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 5))
        for g in names[:30]:
            pts = [(x, y) for x, y, gg in zip(xs, ys, gs) if gg == g]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.7, color=color[g], label=g[:30])
        if 1 < len(names) <= 15:
            ax.legend(fontsize=7, markerscale=2)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        return _png(fig)
    except ImportError:
        if not xs:
            return ""
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        sx = 380 / ((x1 - x0) or 1)
        sy = 380 / ((y1 - y0) or 1)
        dots = "".join(f'<circle cx="{10 + (x - x0) * sx:.1f}" cy="{10 + (y1 - y) * sy:.1f}" r="2" fill="{color[g]}"/>'
                       for x, y, g in zip(xs, ys, gs))
        return f'<h4>{html.escape(title)}</h4><svg width="400" height="400">{dots}</svg>'


def render_html(scores: dict[str, Any]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>synthgen diversity report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
             "td:first-child{text-align:left}.sig{font-weight:bold;color:#b00}</style></head><body>",
             "<h1>Diversity report</h1>"]
    meta = {k: scores.get(k) for k in ("by", "sample", "seed", "embedder", "token_budget") if k in scores}
    parts.append("<p>" + ", ".join(f"{k}: {_fmt(v)}" for k, v in meta.items()) + "</p>")
    datasets: dict[str, Any] = scores.get("datasets", {})
    names = scores.get("metrics") or sorted({m for d in datasets.values() for m in d["metrics"]})
    # metric table
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th><th>direction</th>"
                 + "".join(f"<th>{html.escape(p)}</th>" for p in datasets) + "</tr>")
    rows = {r["metric"]: r for r in scores.get("table", [])}
    for n in names:
        first = next(iter(datasets.values()))
        d = first.get("direction", {}).get(n)
        cells = []
        for p, ds in datasets.items():
            mr = ds["metrics"].get(n, {})
            s = mr.get("spread") if mr.get("spread") is not None else mr.get("details", {}).get("bootstrap_std")
            txt = _fmt(mr.get("value")) + (f" ± {_fmt(s)}" if s is not None else "")
            diff = rows.get(n, {}).get("diffs", {}).get(p)
            if diff:
                cls = " class='sig'" if diff["significant"] else ""
                txt += f"<br><span{cls}>Δ {_fmt(diff['diff'])}</span>"
            cells.append(f"<td>{txt}</td>")
        arrow = {True: "↑ diverse", False: "↓ diverse", None: "–"}[d]
        parts.append(f"<tr><td>{html.escape(n)}</td><td>{arrow}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    if scores.get("table"):
        parts.append("<p>Δ: difference from the first dataset; bold red when it exceeds twice the combined spread.</p>")
    for p, ds in datasets.items():
        parts.append(f"<h2>{html.escape(p)}</h2><p>{ds.get('n_texts')} texts</p>")
        for n in names:
            pg = ds["metrics"].get(n, {}).get("per_group") or {}
            if pg:
                parts.append(_bars(f"{n} by {scores.get('by')}", pg))
        if ds.get("map"):
            parts.append(_scatter(f"PCA of {ds.get('embedder', '')} embeddings", ds["map"]))
    parts.append("</body></html>")
    return "\n".join(parts)
