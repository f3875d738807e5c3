"""probe.json: summaries over seeds, differences against the spread, the table and the plot."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from generator.core.errors import SynthgenError
from generator.probe.config import PROBE_NAME

# metric -> (label, higher is better)
METRICS = {
    "real_ppl": ("real ppl", False),
    "synthetic_ppl": ("synthetic ppl", False),
    "gsm8k_accuracy": ("GSM8K acc", True),
    "train_loss_last": ("last train loss", False),
}


def flat_metrics(train: dict, ev: dict) -> dict:
    """The numbers of one (arm, seed) under stable names: the keys summaries and plots use."""
    m: dict = {}
    if ev.get("real_ppl", {}).get("ppl") is not None:
        m["real_ppl"] = ev["real_ppl"]["ppl"]
    if ev.get("synthetic_ppl", {}).get("ppl") is not None:
        m["synthetic_ppl"] = ev["synthetic_ppl"]["ppl"]
    if ev.get("gsm8k", {}).get("accuracy") is not None:
        m["gsm8k_accuracy"] = ev["gsm8k"]["accuracy"]
    if train and train.get("loss_last") is not None:
        m["train_loss_last"] = train["loss_last"]
    for task, vals in (ev.get("lm_eval") or {}).items():
        for k, v in vals.items():
            m[f"lm_eval:{task}:{k}"] = v
    return m


def summarize(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "min": min(values), "max": max(values)}


def arm_summary(runs: list[dict]) -> dict:
    done = [r for r in runs if r.get("status") == "done"]
    keys = list(dict.fromkeys(k for r in done for k in r["metrics"]))
    out = {k: summarize([r["metrics"][k] for r in done if k in r["metrics"]]) for k in keys}
    walls = [r["wall_s"]["total"] for r in done]
    if walls:
        out["wall_s"] = summarize(walls)
    return out


def differences(arms: list[dict]) -> list[dict]:
    """Each arm against the first (the baseline, e.g. real-only): delta of means and whether it
    exceeds the spread, i.e. |delta| > sd_a + sd_b (the mean +/- sd bars do not overlap)."""
    if len(arms) < 2:
        return []
    base = arms[0]
    out = []
    for a in arms[1:]:
        for k, s in a.get("summary", {}).items():
            b = base.get("summary", {}).get(k)
            if k == "wall_s" or b is None:
                continue
            spread = None if s["sd"] is None or b["sd"] is None else s["sd"] + b["sd"]
            delta = s["mean"] - b["mean"]
            out.append({"arm": a["name"], "vs": base["name"], "metric": k, "delta": delta, "spread": spread,
                        "exceeds": None if spread is None else abs(delta) > spread})
    return out


def write_probe(out: Path, probe: dict) -> Path:
    path = Path(out) / PROBE_NAME
    tmp = path.with_name(PROBE_NAME + ".partial")
    tmp.write_text(json.dumps(probe, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_probe(path: str | Path) -> dict:
    """probe.json from a probe folder (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / PROBE_NAME
    try:
        probe = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SynthgenError(f"{p}: cannot read a probe result ({exc}); run `synthgen probe ... --out` first")
    if probe.get("kind") != "synthgen-probe":
        raise SynthgenError(f"{p}: not a synthgen probe result (no \"kind\": \"synthgen-probe\")")
    return probe


def _fmt(s: dict | None, key: str) -> str:
    if not s:
        return "-"
    pct = key == "gsm8k_accuracy"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}")
    return f(s["mean"]) + (f" ± {f(s['sd'])}" if s.get("sd") is not None else "")


def table(probe: dict):
    """One row per arm: mean ± sd over seeds for each metric, diversity, wall time."""
    from rich.table import Table
    from rich.text import Text

    arms = probe.get("arms", [])
    keys = [k for k in METRICS if any(k in a.get("summary", {}) for a in arms)]
    keys += sorted({k for a in arms for k in a.get("summary", {}) if k.startswith("lm_eval:")})
    xm = probe.get("diversity", {}).get("x_metric")
    t = Table(title=Text(f"probe: {probe.get('base_model', {}).get('name')} · "
                         f"{len(probe.get('settings', {}).get('seeds', []))} seed(s) · "
                         f"{probe.get('settings', {}).get('derived', {}).get('steps')} steps (mean ± sd)"))
    for col in ["arm", "ratio", "syn. frac.", f"diversity ({xm})" if xm else "diversity", "seeds"] + \
               [METRICS.get(k, (k,))[0] for k in keys] + ["wall s / seed"]:
        t.add_column(col, justify="left" if col == "arm" else "right")
    base = probe.get("base")
    if base and base.get("metrics"):
        t.add_row("(base model)", "", "", "", "", *[_fmt({"mean": base["metrics"][k], "sd": None}, k)
                                                     if k in base["metrics"] else "-" for k in keys], "")
    for a in arms:
        s = a.get("summary", {})
        div = (a.get("diversity") or {}).get(xm) if xm else None
        done = sum(r.get("status") == "done" for r in a.get("runs", []))
        t.add_row(Text(a["name"]), a["ratio"], f"{a['synthetic_fraction']:.3f}", "-" if div is None else f"{div:.4f}",
                  f"{done}/{len(a.get('runs', []))}", *[_fmt(s.get(k), k) for k in keys], _fmt(s.get("wall_s"), ""))
    return t


def differences_table(probe: dict):
    from rich.table import Table
    from rich.text import Text

    t = Table(title="difference from the first arm, against the spread (sd_a + sd_b)")
    for col in ("arm", "vs", "metric", "delta", "spread", "exceeds spread"):
        t.add_column(col, justify="left" if col in ("arm", "vs", "metric") else "right")
    for d in probe.get("differences", []):
        if d["metric"] not in METRICS and not d["metric"].startswith("lm_eval:"):
            continue
        t.add_row(Text(d["arm"]), Text(d["vs"]), d["metric"], f"{d['delta']:+.4g}",
                  "-" if d["spread"] is None else f"{d['spread']:.4g}",
                  "-" if d["exceeds"] is None else ("yes" if d["exceeds"] else "no"))
    return t


def plot(probe: dict, path: Path) -> Path | None:
    """Each metric against the synthetic fraction and against the synthetic part's diversity:
    one dot per seed, the mean with ±sd bars per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in probe.get("arms", []) if a.get("summary")]
    keys = [k for k in METRICS if k != "train_loss_last" and any(k in a["summary"] for a in arms)]
    if not arms or not keys:
        return None
    xm = probe.get("diversity", {}).get("x_metric")
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3.2 * len(keys)), squeeze=False)
    for row, k in enumerate(keys):
        for col, (xlabel, xf) in enumerate((("synthetic fraction of training tokens", lambda a: a["synthetic_fraction"]),
                                            (f"diversity of the synthetic part ({xm})",
                                             lambda a: (a.get("diversity") or {}).get(xm)))):
            ax = axes[row][col]
            for a in arms:
                x = xf(a)
                if x is None or k not in a["summary"]:
                    continue
                ys = [r["metrics"][k] for r in a["runs"] if r.get("status") == "done" and k in r["metrics"]]
                ax.scatter([x] * len(ys), ys, s=12, alpha=0.5)
                s = a["summary"][k]
                ax.errorbar([x], [s["mean"]], yerr=[s["sd"] or 0.0], fmt="o", color="black", capsize=4)
                ax.annotate(a["name"], (x, s["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(METRICS[k][0])
            ax.grid(alpha=0.3)
    fig.suptitle("probe: metric vs mix (dots: seeds; black: mean ± sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



def html(probe: dict, folder: Path) -> str:
    """A self-contained page: the table (as text), the differences, and the plot inline."""
    import base64
    import html as h
    import io

    from rich.console import Console

    buf = io.StringIO()
    c = Console(file=buf, width=160, color_system=None, highlight=False)
    c.print(table(probe))
    if probe.get("differences"):
        c.print(differences_table(probe))
    png = Path(folder) / (probe.get("plot") or "probe.png")
    img = (f'<img alt="probe plot" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
           if png.is_file() else "<p>no plot yet</p>")
    return (f"<!doctype html><meta charset='utf-8'><title>synthgen probe</title>"
            f"<h1>synthgen probe: {h.escape(str(probe.get('base_model', {}).get('name')))}</h1>"
            f"<pre>{h.escape(buf.getvalue())}</pre>{img}")


def print_report(folder: str | Path, console, out: str | Path | None = None) -> None:
    """`synthgen report PROBE_FOLDER`: the table, the differences, the plot's path; --out: an HTML page."""
    probe = load_probe(folder)
    console.print(table(probe))
    if probe.get("differences"):
        console.print(differences_table(probe))
    if probe.get("status") != "complete":
        console.print(f"status: {probe.get('status')} (rerun the same `synthgen probe` command to finish)",
                      markup=False)
    png = Path(folder) / (probe.get("plot") or "probe.png")
    if png.is_file():
        console.print(f"plot: {png}", markup=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(html(probe, Path(folder)), encoding="utf-8")
        console.print(f"wrote {out}", markup=False)
