"""The HTML reports (`score --report`, `report --out`): examples, closest pairs, map, directions, no empty charts."""
from __future__ import annotations

import json
import re

from scoring.api import score, write_report

MARKUP = "<script>alert(1)</script> & <b>x</b>"


def corpus(tmp_path):
    rows = []
    for i in range(12):
        rows.append({"template": "alpha", "text": f"alpha text {i} " + " ".join(f"a{i}w{j}" for j in range(12))})
        rows.append({"template": "beta", "text": f"beta words {i} river stone " + " ".join(f"b{i}v{j}" for j in range(9))})
    rows[0]["text"] = MARKUP + " " + rows[0]["text"]
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p, rows


def test_score_report_shows_examples_pairs_map_and_directions(tmp_path):
    p, rows = corpus(tmp_path)
    res = score(p, metrics="distinct_n,compression_ratio,exact_dup_rate,vendi", by="template", embedder="hash",
                with_map=True)
    ds = res["datasets"][str(p)]
    assert set(ds["examples"]) == {"alpha", "beta"} and all(len(v) == 3 for v in ds["examples"].values())
    pairs = ds["similar_pairs"]
    assert len(pairs) == 8
    assert [x["similarity"] for x in pairs] == sorted((x["similarity"] for x in pairs), reverse=True)
    html = write_report(res, tmp_path / "r.html").read_text()
    assert "<script>alert" not in html and "<b>x</b>" not in html
    shown = sum(MARKUP in t for v in ds["examples"].values() for t in v) + sum(
        MARKUP in x[k] for x in pairs for k in ("a", "b"))
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;x&lt;/b&gt;") == shown
    assert "Examples" in html and "Most similar pairs" in html and "coloured by template" in html
    row = re.search(r"<b>compression_ratio</b>.*?</tr>", html, re.S).group(0)
    assert "lower is more diverse" in row
    assert "higher is more diverse" in re.search(r"<b>distinct_n</b>.*?</tr>", html, re.S).group(0)
    # no text repeats: exact_dup_rate is 0 in every group, and gets no chart
    assert all(v == 0 for v in ds["metrics"]["exact_dup_rate"]["per_group"].values())
    charts = html.count("<img alt=\"chart\"")
    nonzero = sum(any(v for v in ds["metrics"][m]["per_group"].values()) for m in ds["metrics"])
    assert charts == nonzero + 1  # the bars with values, and the map


def test_similar_pairs_skip_exact_copies():
    import numpy as np

    from scoring.examples import similar_pairs

    texts = ["one two", "one two", "one three", "four five"]
    emb = np.array([[1, 0], [1, 0], [0.9, 0.3], [0, 1]], dtype=float)
    pairs = similar_pairs(emb, texts, ["g", "g", "h", "k"], top=2)
    assert [(p["a"], p["b"]) for p in pairs] == [("one two", "one three"), ("one three", "four five")]
    assert pairs[0]["similarity"] == round(0.9 / np.hypot(0.9, 0.3), 4) and pairs[0]["group_b"] == "h"


def test_markup_in_examples_is_escaped(tmp_path):
    from scoring.report import examples_html, pairs_html

    html = examples_html({"<g>": [MARKUP]}, "template") + pairs_html(
        [{"similarity": 0.9, "a": MARKUP, "b": "plain", "group_a": "<g>", "group_b": "h"}])
    assert "<script>" not in html and "<b>x</b>" not in html and "<g>" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;x&lt;/b&gt;") == 2


def test_rounds_report_has_the_data_and_no_empty_charts(proj, tmp_path):
    from generator.testing.fake import FakeBackend
    from generator.engine.executors.local import LocalExecutor
    from generator.feedback.rounds_report import html, plots
    from generator.feedback.rounds import load_rounds
    from generator import run as run_spec
    from generator.config.spec import load_spec

    spec = load_spec(proj / "spec.yaml", {"rounds": "{count: 2, budget: 20}", "templates": "[{template: qa}]"})
    # every answer is the same sentence: no yield anywhere, so the yield chart has nothing to show
    fake = FakeBackend(responder=lambda r: "The same sentence every time, said again and again.")
    run_spec(spec, out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda cfg, **_: fake))
    rounds = load_rounds(tmp_path / "run")
    assert all(not c.get("yield_mean") for h in rounds for c in h["yields"]["cells"].values())
    imgs = plots(rounds)
    assert "yield" not in imgs and "allocation" in imgs
    page = html(tmp_path / "run", rounds)
    assert "<h2>The data</h2>" in page and "Examples" in page
