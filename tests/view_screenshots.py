"""Regenerate docs/view-*.png: the viewer's tabs and the HTML reports, taken by headless chromium.

Demo run folders are written by the engine with the fake backend (no model), with answers that read
like short texts so the pictures show what the pages look like on real data.

    PYTHONPATH=. python tests/view_screenshots.py [--out docs]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

OPENERS = ["Imagine this:", "Picture this:", "Here is a quick one.", "Let's practise.", "Try this:"]
THINGS = {"Addition": ["apples", "marbles", "stickers"], "Subtraction": ["cookies", "balloons", "coins"],
          "Multiplication": ["boxes of pencils", "rows of chairs", "packs of cards"],
          "Triangles": ["a roof", "a sail", "a slice of pizza"], "Circles": ["a wheel", "a clock", "a pizza"]}


def demo_responder(variant: str):
    def answer(r) -> str:
        p = r.messages[-1]["content"]
        rng = random.Random(f"{variant}{r.sampling.seed}")
        sub = next((s for s in THINGS if s in p), "Addition")
        if r.json_schema is not None:
            return json.dumps({"question": f"What is {sub.lower()}?", "answer": f"{sub} is a way to reason about "
                               f"{rng.choice(THINGS[sub])}."})
        if variant == "b" or sub == "Circles":  # the same sentence again and again
            return f"{sub} is about {THINGS[sub][0]}. We count them and write the answer."
        a, b = rng.randint(2, 30), rng.randint(2, 12)
        return (f"{rng.choice(OPENERS)} You have {a} {rng.choice(THINGS[sub])} and get {b} more from a "
                f"friend at the {rng.choice(['market', 'park', 'library', 'bakery'])}. How many now? "
                f"Explain your {sub.lower()} step by step.")
    return answer


def make(dst: Path, variant: str = "a", rounds: str | None = None, price: bool = False) -> Path:
    import shutil

    from generator.testing.fake import FakeBackend
    from generator.engine.executors.local import LocalExecutor
    from generator import run as run_spec
    from generator.config.spec import load_spec

    proj = dst.parent / f"proj-{dst.name}"
    shutil.copytree(HERE / "fixtures" / "proj", proj)
    over = {"generations_per_topic": "8", "name": f"demo-{variant}"}
    if rounds:
        over["rounds"] = rounds
    if price:  # a hosted model's price, so the usage view shows cost
        over.update({"models.0.price.input_per_mtok": "0.15", "models.0.price.output_per_mtok": "0.6"})
    fake = FakeBackend(responder=demo_responder(variant))
    run_spec(load_spec(proj / "spec.yaml", over), out=dst,
             executor=LocalExecutor(backend_factory=lambda cfg, **_: fake))
    return dst


def shoot(d, url: str, out: Path, wait_css: str, click: str | None = None, height: int = 900) -> None:
    d.set_window_size(1366, height)
    d.get(url)
    end = time.time() + 60
    if click:
        while not d.find_elements("css selector", "#list .rec") and time.time() < end:
            time.sleep(0.1)
        d.find_element("css selector", click).click()
    while not d.find_elements("css selector", wait_css) and time.time() < end:
        time.sleep(0.1)
    time.sleep(0.5)
    d.save_screenshot(str(out))
    print("wrote", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE.parent / "docs"))
    args = ap.parse_args()
    out = Path(args.out)
    from browser import driver, ensure_chromium
    from generator.feedback.rounds_report import html as rounds_html
    from generator.view.app import View
    from generator.view.server import address, serve
    from scoring.api import dedup_run, score, write_report

    tmp = Path(tempfile.mkdtemp())
    a, b = make(tmp / "run-a", price=True), make(tmp / "run-b", "b")
    r = make(tmp / "run-rounds", rounds="{count: 3, budget: 40}")
    dedup_run(a)
    ensure_chromium()
    d = driver(1366, 900)
    try:
        srv = serve(View(a, b), 0)
        url = address(srv)
        shoot(d, url, out / "view-records.png", "#neighbours .rec", click="#list .rec:nth-child(3)", height=1000)
        shoot(d, url + "#clusters", out / "view-clusters.png", "#detail .cluster")
        shoot(d, url + "#compare", out / "view-compare.png", "#scores")
        shoot(d, url + "#usage", out / "view-usage.png", "#usage-b")
        srv.shutdown()
        srv = serve(View(r), 0)
        shoot(d, address(srv) + "#rounds", out / "view-rounds.png", "#allocation")
        srv.shutdown()
        (tmp / "score.html").write_text("")
        write_report(score(a, metrics="distinct_n,compression_ratio,near_dup_rate,vendi,cluster_proxy", by="topic",
                           with_map=True), tmp / "score.html")
        (tmp / "rounds.html").write_text(rounds_html(r))
        for name, page in (("report-score", "score.html"), ("report-rounds", "rounds.html")):
            d.set_window_size(1366, 900)
            d.get((tmp / page).as_uri())
            h = d.execute_script("return document.body.scrollHeight")
            d.set_window_size(1366, min(h + 80, 7000))
            d.save_screenshot(str(out / f"view-{name}.png"))
            print("wrote", out / f"view-{name}.png")
    finally:
        d.quit()


if __name__ == "__main__":
    main()
