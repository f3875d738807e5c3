"""The rounds report: diversity against generations spent, and where each round's budget went.

`tables(rounds)` gives rich tables (trajectory, per-cell allocation, value per topic cell and
template, decisions); `html(run_dir, rounds)` the same as one self-contained HTML page with
matplotlib plots inlined as base64 PNG.
"""
from __future__ import annotations

import base64
import html as _html
import io
import logging
from typing import Any

from generator.core.run_layout import read_manifest, read_stop, run_path
from generator.core.storage import name_of
from generator.feedback.rounds import load_rounds

log = logging.getLogger(__name__)
SCORING_EXTRA = "pip install 'synthgen[scoring]'"


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}g}"
    return str(x)


def trajectory_rows(rounds: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for h in rounds:
        s = h.get("scores", {})
        flags = h.get("yields", {}).get("flags", {})
        acts = list(dict.fromkeys(d["action"] for d in h.get("decisions", []) if d.get("cell") is None))
        rows.append({"round": h["round"], "spent": h["spent"], "spent_total": h["spent_total"],
                     "tracked": h.get("tracked"), "gain": h.get("gain"), "score": h.get("score_name"),
                     "ok": flags.get("ok", 0), "flagged": sum(v for k, v in flags.items() if k != "ok"),
                     "vendi": s.get("vendi"), "mean_cosine_distance": s.get("mean_cosine_distance"),
                     "near_dup_rate": s.get("near_dup_rate"), "cells": len(h.get("active", [])),
                     "pool": ", ".join(acts), "templates": template_mix(h)})
    return rows


def template_mix(h: dict) -> str:
    """The round's template shares ('spec' when it used the spec's weights)."""
    w = h.get("template_weights")
    if not w:
        return "spec"
    return ", ".join(f"{k.rsplit('/', 1)[-1]} {v:.2f}" for k, v in w.items())


def allocation_matrix(rounds: list[dict]) -> tuple[list[str], dict[str, list[int]]]:
    cells: dict[str, None] = {}
    for h in rounds:
        for c in h.get("active", h["allocation"]):
            cells.setdefault(c, None)
    mat = {c: [int(h["allocation"].get(c, 0)) for h in rounds] for c in cells}
    order = sorted(mat, key=lambda c: (-sum(mat[c]), c))
    return order, mat


VALUE_COLUMNS = ("records", "accepted", "acceptance", "tokens", "tokens_per_accepted", "cost_per_accepted",
                 "diversity", "diversity_share", "diversity_per_1k_tokens")


def value_rows(rounds: list[dict], dim: str = "cell") -> list[dict[str, Any]]:
    """What each topic cell (`dim="cell"`) or template (`"template"`) bought over all rounds, side by
    side: records and accepted ones (the final row `ok`: not flagged, refused or rejected), acceptance,
    tokens (every attempt and stage, from the round files' `costs`), tokens and money per accepted
    record (money only where the models have prices), and diversity contribution: the summed yield
    (novelty of accepted, non-duplicate records when generated), its share of the run's and per 1,000
    tokens. Best value per token first."""
    acc: dict[str, dict[str, Any]] = {}
    priced = any((h.get("costs") or {}).get("priced") for h in rounds)
    for h in rounds:
        ys = h.get("yields", {})
        cs = h.get("costs") or {}
        yg = ys.get("cells", {}) if dim == "cell" else ys.get("by", {}).get(dim, {})
        cg = cs.get("cells", {}) if dim == "cell" else cs.get("by", {}).get(dim, {})
        for k in set(yg) | set(cg):
            a = acc.setdefault(k, {dim: k, "records": 0, "accepted": 0, "tokens": 0, "cost": 0.0, "diversity": 0.0,
                                   "costed": False})
            y, c = yg.get(k, {}), cg.get(k)
            a["records"] += int(y.get("n", 0))
            a["accepted"] += int(y.get("ok", 0))
            a["diversity"] += float(y.get("yield_sum", 0.0))
            if c:
                a["costed"] = True
                a["tokens"] += int(c.get("tokens", 0))
                a["cost"] += float(c.get("cost") or 0.0)
    total = sum(a["diversity"] for a in acc.values())
    out = []
    for a in acc.values():
        n, ok, tok = a["records"], a["accepted"], a["tokens"] if a["costed"] else None
        out.append({dim: a[dim], "records": n, "accepted": ok, "acceptance": ok / n if n else None, "tokens": tok,
                    "tokens_per_accepted": tok / ok if tok is not None and ok else None,
                    "cost_per_accepted": a["cost"] / ok if priced and a["costed"] and ok else None,
                    "diversity": a["diversity"], "diversity_share": a["diversity"] / total if total else None,
                    "diversity_per_1k_tokens": 1000 * a["diversity"] / tok if tok else None})
    return sorted(out, key=lambda r: (-(r["diversity_per_1k_tokens"] or 0.0), -r["diversity"], r[dim]))


def _value_table(rounds: list[dict], dim: str, top: int):
    from rich.table import Table

    rows = value_rows(rounds, dim)
    t = Table(title=f"value per {'topic cell' if dim == 'cell' else dim}: acceptance, cost per accepted record "
                    f"and diversity contribution (top {min(top, len(rows))} of {len(rows)})")
    for col in (dim, "records", "accepted", "acceptance", "tokens", "tokens/accepted", "money/accepted",
                "diversity", "share", "diversity/1k tok"):
        t.add_column(col, justify="left" if col == dim else "right")
    for r in rows[:top]:
        t.add_row(r[dim], str(r["records"]), str(r["accepted"]), _pct(r["acceptance"]), _fmt(r["tokens"]),
                  _fmt(r["tokens_per_accepted"]), _fmt(r["cost_per_accepted"], 3), _fmt(r["diversity"], 3),
                  _pct(r["diversity_share"]), _fmt(r["diversity_per_1k_tokens"], 3))
    return t


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def tables(rounds: list[dict], top: int = 25):
    from rich.table import Table

    t = Table(title="trajectory: diversity against generations spent")
    for col in ("round", "spent", "total", "tracked", "gain", "ok", "flagged", "vendi", "mean cos dist",
                "near-dup", "cells", "templates", "pool"):
        t.add_column(col, justify="left" if col in ("pool", "templates") else "right")
    for r in trajectory_rows(rounds):
        t.add_row(str(r["round"]), str(r["spent"]), str(r["spent_total"]), f"{_fmt(r['tracked'])} ({r['score']})",
                  _fmt(r["gain"]), str(r["ok"]), str(r["flagged"]), _fmt(r["vendi"]),
                  _fmt(r["mean_cosine_distance"]), _fmt(r["near_dup_rate"], 3), str(r["cells"]), r["templates"], r["pool"])
    order, mat = allocation_matrix(rounds)
    a = Table(title=f"allocation per cell and round (top {min(top, len(order))} of {len(order)} cells)")
    a.add_column("cell")
    for h in rounds:
        a.add_column(f"r{h['round']}", justify="right")
    a.add_column("total", justify="right")
    a.add_column("last yield", justify="right")
    a.add_column("within Vendi", justify="right")
    last = rounds[-1]["yields"]["cells"] if rounds else {}
    for c in order[:top]:
        y = last.get(c, {})
        a.add_row(c, *[str(v) for v in mat[c]], str(sum(mat[c])), _fmt(y.get("yield_mean"), 3),
                  _fmt(y.get("within_vendi"), 3))
    d = Table(title="pool decisions (stop, grow, saturation caps)")
    for col in ("round", "cell", "action", "amount", "reason"):
        d.add_column(col)
    for h in rounds:
        for x in h.get("decisions", []):
            if x["action"] != "allocate":
                d.add_row(str(x["round"]), x.get("cell") or "-", x["action"], _fmt(x.get("amount")), x["reason"])
    return t, a, _value_table(rounds, "cell", top), _value_table(rounds, "template", top), d


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(rounds: list[dict], top: int = 12) -> dict[str, str]:
    """base64 PNGs: trajectory, allocation per round, yield per cell. Empty without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # an optional package: the report is whole without its charts
        log.warning("the rounds report has no charts: they need %s (%s)", exc.name or "matplotlib", SCORING_EXTRA)
        return {}
    out = {}
    rows = trajectory_rows(rounds)
    xs = [r["spent_total"] for r in rows]
    if any(r["tracked"] for r in rows):  # no empty frames: a chart is drawn only when it has values
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        ax.plot(xs, [r["tracked"] for r in rows], "o-", label=f"tracked: {rows[0]['score'] if rows else ''}")
        ax.set_xlabel("generations spent")
        ax.set_ylabel(rows[0]["score"] if rows else "score")
        if any(r["near_dup_rate"] for r in rows):
            ax2 = ax.twinx()
            ax2.plot(xs, [r["near_dup_rate"] for r in rows], "s--", color="tab:red", label="near-dup rate")
            ax2.set_ylabel("near-duplicate rate")
        fig.legend(loc="lower right", fontsize=8)
        ax.set_title("diversity against generations spent")
        out["trajectory"] = _png(fig)

    order, mat = allocation_matrix(rounds)
    shown = order[:top]
    rest = [sum(mat[c][i] for c in order[top:]) for i in range(len(rounds))]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    labels = [f"r{h['round']}" for h in rounds]
    bottom = [0] * len(rounds)
    cmap = plt.get_cmap("tab20")
    for k, c in enumerate(shown):
        ax.bar(labels, mat[c], bottom=bottom, label=c[-40:], color=cmap(k % 20))
        bottom = [b + v for b, v in zip(bottom, mat[c])]
    if any(rest):
        ax.bar(labels, rest, bottom=bottom, label=f"{len(order) - top} other cells", color="lightgrey")
    ax.set_ylabel("generations")
    ax.set_title("allocation per cell and round")
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    out["allocation"] = _png(fig)

    lines = []
    for k, c in enumerate(shown):
        ys = [h["yields"]["cells"].get(c, {}) for h in rounds]
        pts = [(h["round"], y["yield_mean"]) for h, y in zip(rounds, ys) if y.get("n")]
        if pts:
            lines.append((c, k, pts))
    if not any(p[1] for _, _, pts in lines for p in pts):
        return out
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for c, k, pts in lines:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=c[-40:], color=cmap(k % 20))
    ax.set_xlabel("round")
    ax.set_ylabel("mean yield per generation")
    ax.set_title("per-cell yield (novelty; flagged and near-duplicate rows count 0)")
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    out["yield"] = _png(fig)
    return out


def _table_html(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html(run_dir: Any, rounds: list[dict] | None = None) -> str:
    """The report page of a run folder (a local path or an fsspec URL)."""
    run_dir = run_path(run_dir)
    rounds = load_rounds(run_dir) if rounds is None else rounds
    manifest = read_manifest(run_dir)
    rule = (manifest.get("spec", {}).get("rounds") or {}).get("allocator", {}).get("rule", "?")
    imgs = plots(rounds)
    parts = [f"<h1>Rounds report: {_html.escape(manifest.get('name', name_of(run_dir)))}</h1>",
             f"<p>run folder <code>{_html.escape(str(run_dir))}</code>; allocator rule <b>{_html.escape(rule)}</b>;"
             f" {len(rounds)} round(s) finished.</p>"]
    stop = read_stop(run_dir)
    if stop is not None:
        for d in stop.get("decisions", []):
            parts.append(f"<p><b>{_html.escape(d['action'])}</b>: {_html.escape(d['reason'])}</p>")
    for key, title in (("trajectory", "Trajectory"), ("allocation", "Allocation"), ("yield", "Yield")):
        if key in imgs:
            parts.append(f"<h2>{title}</h2><img alt='{key}' src='data:image/png;base64,{imgs[key]}'/>")
    if not imgs:
        parts.append("<p>(install matplotlib for plots)</p>")
    rows = trajectory_rows(rounds)
    parts.append("<h2>Trajectory</h2>" + _table_html(
        ["round", "spent", "total", "tracked", "gain", "ok", "flagged", "vendi", "mean cos dist", "near-dup",
         "cells", "templates", "pool"],
        [[r["round"], r["spent"], r["spent_total"], r["tracked"], r["gain"], r["ok"], r["flagged"], r["vendi"],
          r["mean_cosine_distance"], r["near_dup_rate"], r["cells"], r["templates"], r["pool"]] for r in rows]))
    order, mat = allocation_matrix(rounds)
    last = rounds[-1]["yields"]["cells"] if rounds else {}
    parts.append("<h2>Allocation per cell</h2>" + _table_html(
        ["cell"] + [f"r{h['round']}" for h in rounds] + ["total", "last yield", "within Vendi"],
        [[c] + mat[c] + [sum(mat[c]), last.get(c, {}).get("yield_mean"), last.get(c, {}).get("within_vendi")]
         for c in order]))
    for dim, title in (("cell", "topic cell"), ("template", "template")):
        rows = value_rows(rounds, dim)
        parts.append(f"<h2>Value per {title}</h2>" + _table_html(
            [title, "records", "accepted", "acceptance", "tokens", "tokens / accepted", "money / accepted",
             "diversity", "share", "diversity / 1k tokens"],
            [[r[dim], r["records"], r["accepted"], _pct(r["acceptance"]), r["tokens"], r["tokens_per_accepted"],
              r["cost_per_accepted"], r["diversity"], _pct(r["diversity_share"]), r["diversity_per_1k_tokens"]]
             for r in rows]))
    for dim in ("template", "persona", "model"):
        by = rounds[-1]["yields"].get("by", {}).get(dim, {}) if rounds else {}
        if by:
            parts.append(f"<h2>Last round by {dim}</h2>" + _table_html(
                [dim, "n", "ok", "near dup", "mean yield"],
                [[k, v["n"], v["ok"], v["near_dup"], v["yield_mean"]] for k, v in sorted(by.items())]))
    parts.append(_data_html(run_dir))
    parts.append("<h2>Decisions</h2>" + _table_html(
        ["round", "cell", "action", "amount", "reason"],
        [[d["round"], d.get("cell") or "-", d["action"], d.get("amount"), d["reason"]]
         for h in rounds for d in h.get("decisions", [])]))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}th{background:#eee}"
             "img{max-width:100%}.muted{color:#667;font-size:12px}.ex{display:grid;grid-template-columns:"
             "repeat(auto-fill,minmax(330px,1fr));gap:10px}.card{border:1px solid #ddd;border-radius:4px;"
             "padding:6px 8px}.card h4{margin:0 0 4px}pre{white-space:pre-wrap;word-break:break-word;font:12px/1.35 "
             "ui-monospace,monospace;background:#f7f7f9;margin:4px 0;padding:4px 6px;max-height:14em;overflow:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>rounds report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def _data_html(run_dir: Any) -> str:
    """What the run wrote: the 2-D map, examples per topic cell and the most similar pairs."""
    from scoring.api import data_sections

    try:
        body = data_sections(str(run_dir), by="topic")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("generator", "scoring"):
            raise  # our own code: a bug, not a missing extra
        why = f"it needs {exc.name} ({SCORING_EXTRA})"
        log.warning("the rounds report has no data section: %s", why)
        return f"<h2>The data</h2><p>(not shown: {_html.escape(why)})</p>"
    except (RuntimeError, FileNotFoundError) as exc:  # the embeddings are not available: the rest still helps
        log.warning("the rounds report has no data section: %s", exc)
        return f"<h2>The data</h2><p>(not shown: {_html.escape(str(exc))})</p>"
    return f"<h2>The data</h2>{body}" if body else ""
