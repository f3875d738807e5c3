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
    if not any(v for _, v in items):  # all zero or missing: an empty frame says nothing
        return ""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.6, 0.24 * len(items) + 1.1))
        ax.barh([k[:32] for k, _ in items], [v for _, v in items], color=PALETTE[0])
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
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
    """The 2-D map; the 10 largest groups get colours, the rest are grey."""
    xs, ys, gs = m["x"], m["y"], m.get("group") or ["all"] * len(m["x"])
    if not xs:
        return ""
    sizes: dict[str, int] = {}
    for g in gs:
        sizes[g] = sizes.get(g, 0) + 1
    top = sorted(sizes, key=lambda g: (-sizes[g], g))[:len(PALETTE)]
    color = {g: PALETTE[i] for i, g in enumerate(top)}
    rest = len(sizes) - len(top)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 5.5))
        if rest:
            pts = [(x, y) for x, y, g in zip(xs, ys, gs) if g not in color]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=7, alpha=0.4, color="#c8c8c8",
                       label=f"{rest} other groups")
        for g in top:
            pts = [(x, y) for x, y, gg in zip(xs, ys, gs) if gg == g]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.75, color=color[g], label=g[:40])
        if len(sizes) > 1:
            ax.legend(fontsize=8, markerscale=2, bbox_to_anchor=(1.01, 1), loc="upper left")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        return _png(fig)
    except ImportError:
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        sx = 380 / ((x1 - x0) or 1)
        sy = 380 / ((y1 - y0) or 1)
        dots = "".join(f'<circle cx="{10 + (x - x0) * sx:.1f}" cy="{10 + (y1 - y) * sy:.1f}" r="2" '
                       f'fill="{color.get(g, "#c8c8c8")}"/>' for x, y, g in zip(xs, ys, gs))
        legend = ", ".join(f'<span style="color:{color[g]}">&#9679;</span> {html.escape(g)}' for g in top)
        return f'<h4>{html.escape(title)}</h4><svg width="400" height="400">{dots}</svg><p>{legend}</p>'


STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#1d1f23;"
         "line-height:1.4}table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right;vertical-align:top}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
         ".sig{font-weight:bold;color:#b00}.muted{color:#667;font-size:12px}"
         ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:8px}"
         ".charts img,img{max-width:100%}.scroll{max-height:28em;overflow:auto}"
         ".ex{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:10px}"
         ".card{border:1px solid #ddd;border-radius:4px;padding:6px 8px}.card h4{margin:0 0 4px}"
         "pre{white-space:pre-wrap;word-break:break-word;font:12px/1.35 ui-monospace,monospace;background:#f7f7f9;"
         "margin:4px 0;padding:4px 6px;max-height:14em;overflow:auto}")
DIRECTION = {True: "↑ higher is more diverse", False: "↓ lower is more diverse", None: "– not a diversity direction"}


def _description(name: str) -> str:
    from scoring.metrics import get

    try:
        return get(name).description
    except KeyError:
        return ""


def _metric_table(scores: dict[str, Any], datasets: dict[str, Any], names: list[str]) -> str:
    rows = {r["metric"]: r for r in scores.get("table", [])}
    first = next(iter(datasets.values()), {})
    out = ["<h2>Metrics</h2><table><tr><th>metric</th><th>direction</th>"
           + "".join(f"<th>{html.escape(p)}</th>" for p in datasets) + "</tr>"]
    for n in names:
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
        arrow = DIRECTION[first.get("direction", {}).get(n)]
        desc = _description(n)
        out.append(f"<tr><td><b>{html.escape(n)}</b>" + (f"<br><span class='muted'>{html.escape(desc)}</span>" if desc else "")
                   + f"</td><td>{arrow}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    if scores.get("table"):
        out.append("<p class='muted'>Δ: difference from the first dataset; bold red when it exceeds twice the "
                   "combined spread.</p>")
    return "".join(out)


def _group_table(ds: dict[str, Any], names: list[str], by: str | None) -> str:
    """Groups x metrics in one table (the bars below show the same values)."""
    cols = [n for n in names if ds["metrics"].get(n, {}).get("per_group")]
    if not cols:
        return ""
    groups = sorted({g for n in cols for g in ds["metrics"][n]["per_group"]})
    counts = ds.get("groups", {})
    head = f"<tr><th>{html.escape(by or 'group')}</th><th>texts</th>" + "".join(
        f"<th>{html.escape(n)}</th>" for n in cols) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(g)}</td><td>{counts.get(g, '')}</td>" + "".join(
        f"<td>{_fmt(ds['metrics'][n]['per_group'].get(g))}</td>" for n in cols) + "</tr>" for g in groups)
    return f"<h3>By {html.escape(by or 'group')}</h3><div class='scroll'><table>{head}{body}</table></div>"


def map_html(m: dict[str, Any], embedder: str, by: str | None) -> str:
    what = f"2-D map: PCA of the {embedder} embeddings" + (f", coloured by {by}" if by else "")
    return f"<h3>Map</h3><p class='muted'>{html.escape(what)}; nearby points are similar texts.</p>" + _scatter(
        "PCA of the embeddings", m)


def examples_html(examples: dict[str, list[str]] | None, by: str | None) -> str:
    if not examples:
        return ""
    cards = "".join(f"<div class='card'><h4>{html.escape(g)}</h4>" + "".join(
        f"<pre>{html.escape(t)}</pre>" for t in texts) + "</div>" for g, texts in examples.items())
    what = f"each {html.escape(by)}" if by else "the data set"
    return (f"<h3>Examples</h3><p class='muted'>A few seeded texts of {what} (long texts are cut at 600 "
            f"characters).</p><div class='ex'>{cards}</div>")


def pairs_html(pairs: list[dict[str, Any]] | None) -> str:
    if not pairs:
        return ""
    rows = "".join(
        f"<tr><td class='num'>{p['similarity']:.3f}</td><td style='text-align:left'>"
        + (f"<b>{html.escape(p['group_a'])}</b>" if p.get("group_a") is not None else "")
        + f"<pre>{html.escape(p['a'])}</pre></td><td style='text-align:left'>"
        + (f"<b>{html.escape(p['group_b'])}</b>" if p.get("group_b") is not None else "")
        + f"<pre>{html.escape(p['b'])}</pre></td></tr>" for p in pairs)
    return ("<h3>Most similar pairs</h3><p class='muted'>Cosine similarity of the embeddings, among distinct "
            "texts (exact copies are counted by exact_dup_rate, not listed here).</p>"
            "<table class='pairs' style='width:100%;table-layout:fixed'><colgroup><col style='width:7em'>"
            "<col><col></colgroup><tr><th>similarity</th><th style='text-align:left'>text</th>"
            "<th style='text-align:left'>text</th></tr>"
            f"{rows}</table>")


def dataset_html(name: str, ds: dict[str, Any], names: list[str], by: str | None) -> str:
    """One data set's section: per-group table and bars, the 2-D map, examples, the closest pairs."""
    parts = [f"<h2>{html.escape(name)}</h2><p>{ds.get('n_texts')} texts</p>", _group_table(ds, names, by)]
    charts = [c for c in (_bars(f"{n} by {by}", ds["metrics"].get(n, {}).get("per_group") or {}) for n in names) if c]
    if charts:
        parts.append("<div class='charts'>" + "".join(f"<div>{c}</div>" for c in charts) + "</div>")
    if ds.get("map"):
        parts.append(map_html(ds["map"], ds.get("embedder", ""), by))
    parts += [examples_html(ds.get("examples"), by), pairs_html(ds.get("similar_pairs"))]
    return "\n".join(p for p in parts if p)


def render_html(scores: dict[str, Any]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
             "content='width=device-width, initial-scale=1'><title>synthgen diversity report</title>"
             f"<style>{STYLE}</style></head><body>", "<h1>Diversity report</h1>"]
    meta = {k: scores.get(k) for k in ("by", "sample", "seed", "embedder", "token_budget") if k in scores}
    parts.append("<p>" + ", ".join(f"{k}: {_fmt(v)}" for k, v in meta.items()) + "</p>")
    datasets: dict[str, Any] = scores.get("datasets", {})
    names = scores.get("metrics") or sorted({m for d in datasets.values() for m in d["metrics"]})
    parts.append(_metric_table(scores, datasets, names))
    for p, ds in datasets.items():
        parts.append(dataset_html(p, ds, names, scores.get("by")))
    parts.append("</body></html>")
    return "\n".join(parts)
