"""`synthgen view` in a real headless chromium against a real local server.

Run folders are written by the engine with the fake backend (tests/view_runs.py): the same Parquet a
model run writes, without loading a model. Expected records come from the Parquet files, not the server.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from browser import driver, ensure_chromium
from generator.view.app import View
from generator.view.server import address, serve
from view_runs import REPEAT, SCRIPT, make_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from scoring.api import dedup_run

    base = tmp_path_factory.mktemp("view")
    a = make_run(base / "a", price={"input_per_mtok": "0.5", "output_per_mtok": "2"})
    dedup_run(a)  # marks the repeated Circles texts as duplicates
    return {"a": a, "b": make_run(base / "b", variant="b"),
            "r": make_run(base / "r", rounds="{count: 3, budget: 30}")}


def frame(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "generations" / "*.parquet")


@pytest.fixture(scope="module")
def server(runs):
    srv = serve(View(runs["a"], runs["b"]), 0)
    yield address(srv)
    srv.shutdown()


@pytest.fixture(scope="module")
def browser():
    ensure_chromium()
    d = driver()
    yield d
    d.quit()


def wait(fn, timeout: float = 30.0):
    end = time.time() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # the DOM is being rebuilt: look again
            if time.time() > end:
                raise
        if time.time() > end:
            raise AssertionError("timed out waiting for the page")
        time.sleep(0.1)


def list_ids(b) -> list[str]:
    return [e.get_attribute("data-id") for e in b.find_elements("css selector", "#list .rec")]


def total_text(b) -> str:
    return b.find_element("id", "total").text


def open_page(b, url: str) -> None:
    b.get(url)
    wait(lambda: b.find_elements("css selector", "#list .rec"))


def choose(b, filter_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(b.find_element("id", filter_id)).select_by_value(value)


def test_filters_show_exactly_the_matching_records(browser, server, runs):
    df = frame(runs["a"])
    want = set(df.filter((pl.col("template") == "qa") & (pl.col("topic_id") == "Arithmetic / Addition"))["id"])
    assert 0 < len(want) < df.height
    open_page(browser, server)
    choose(browser, "f-template", "qa")
    choose(browser, "f-topic", "Arithmetic / Addition")
    wait(lambda: total_text(browser).startswith(f"{len(want)} of {df.height}"))
    assert set(list_ids(browser)) == want
    choose(browser, "f-status", "invalid_json")  # qa answers are plain text: none is invalid JSON
    wait(lambda: total_text(browser).startswith("0 of"))
    assert list_ids(browser) == []


def test_paging_walks_every_record_once(browser, server, runs):
    df = frame(runs["a"])
    open_page(browser, server)
    first = list_ids(browser)
    assert len(first) == 25 and browser.find_element("id", "pageinfo").text == "page 1 / 2"
    browser.find_element("id", "next").click()
    wait(lambda: browser.find_element("id", "pageinfo").text == "page 2 / 2")
    second = list_ids(browser)
    assert len(second) == df.height - 25
    assert set(first) | set(second) == set(df["id"]) and not set(first) & set(second)
    assert not browser.find_element("id", "next").is_enabled()


def test_search_finds_markup_and_shows_it_as_text(browser, server, runs):
    df = frame(runs["a"])
    want = set(df.filter(pl.col("completion").str.contains("<script>", literal=True))["id"])
    assert want
    open_page(browser, server)
    browser.find_element("id", "q").send_keys("<SCRIPT>")  # search ignores case
    wait(lambda: total_text(browser).startswith(f"{len(want)} of"))
    assert set(list_ids(browser)) == want
    snip = browser.find_element("css selector", "#list .rec .snip")
    assert snip.text.startswith(SCRIPT)
    assert browser.execute_script("return window.__injected") is None
    assert not browser.find_elements("css selector", "#list .snip b, #list .snip script")
    snip.click()
    wait(lambda: browser.find_elements("css selector", "#detail pre.text"))
    texts = [e.get_attribute("textContent") for e in browser.find_elements("css selector", "#detail pre.text")]
    rid = browser.find_element("id", "detail-id").text.split()[-1]
    row = df.filter(pl.col("id") == rid).row(0, named=True)
    assert row["completion"] in texts  # exactly, markup and all
    assert row["messages"][-1]["content"] in texts
    assert browser.execute_script("return window.__injected") is None


def test_nearest_neighbours_of_a_repeated_text_are_its_copies(browser, server, runs):
    df = frame(runs["a"])
    circles = df.filter(pl.col("topic_id") == "Geometry / Circles")
    assert set(circles["completion"]) == {REPEAT}
    target = circles["id"][0]
    open_page(browser, server)
    browser.find_element("id", "q").send_keys(target)
    wait(lambda: list_ids(browser) == [target])
    browser.find_element("css selector", "#list .rec").click()
    nbs = wait(lambda: browser.find_elements("css selector", "#neighbours .rec"))
    ids = [e.get_attribute("data-id") for e in nbs]
    sims = [float(re.search(r"sim ([0-9.]+)", e.text).group(1)) for e in nbs]
    copies = len(circles) - 1
    assert set(ids[:copies]) == set(circles["id"]) - {target}
    assert all(s > 0.999 for s in sims[:copies]) and all(s < 0.999 for s in sims[copies:])
    assert sims == sorted(sims, reverse=True)


def test_duplicates_are_marked_and_filterable(browser, server, runs):
    df = frame(runs["a"])
    dups = df.filter(pl.col("duplicate_of").is_not_null())
    assert dups.height >= 2
    open_page(browser, server)
    choose(browser, "f-dup", "only")
    wait(lambda: total_text(browser).startswith(f"{dups.height} of"))
    assert set(list_ids(browser)) == set(dups["id"])
    tags = [e.text for e in browser.find_elements("css selector", "#list .tag.dup")]
    assert sorted(tags) == sorted(f"duplicate of {d}" for d in dups["duplicate_of"])


def test_clusters_cover_every_embedded_record(browser, server, runs):
    open_page(browser, server)
    browser.find_element("id", "tab-clusters").click()
    boxes = wait(lambda: browser.find_elements("css selector", "#detail .cluster"))
    sizes = [int(re.search(r": (\d+) records", b.text).group(1)) for b in boxes]
    assert sum(sizes) == frame(runs["a"]).height  # every record has a text here
    circles = set(frame(runs["a"]).filter(pl.col("topic_id") == "Geometry / Circles")["id"])
    holders = [b for b in boxes if {e.get_attribute("data-id") for e in b.find_elements("css selector", ".rec")} & circles]
    assert len(holders) == 1  # identical texts fall in one cluster


def test_compare_pairs_records_by_id_with_scores(browser, server, runs):
    a, b = frame(runs["a"]), frame(runs["b"])
    assert set(a["id"]) == set(b["id"])  # the same plan
    open_page(browser, server)
    browser.find_element("id", "tab-compare").click()
    rows = wait(lambda: browser.find_elements("css selector", "#list .pair[data-id]"))
    assert len(rows) == 25
    text_b = dict(zip(b["id"], b["completion"]))
    for row in rows[:5]:
        rid = row.get_attribute("data-id")
        ra, rb = row.find_element("css selector", ".rec.a"), row.find_element("css selector", ".rec.b")
        assert ra.get_attribute("data-id") == rb.get_attribute("data-id") == rid
        assert text_b[rid].startswith(rb.find_element("css selector", ".snip").text[:100])
    assert "30 ids in both runs, 0 only in A, 0 only in B" in total_text(browser)
    table = wait(lambda: browser.find_element("id", "scores"), timeout=120)
    cells = {tr.get_attribute("data-metric"): [td.text for td in tr.find_elements("tag name", "td")]
             for tr in table.find_elements("css selector", "tr[data-metric]")}
    assert {"distinct_n", "vendi", "compression_ratio"} <= set(cells)
    # run b draws from 8 words instead of 36: fewer distinct n-grams, a worse compression ratio
    for metric, direction in (("distinct_n", "higher"), ("compression_ratio", "lower")):
        name, d, va, vb, diff = cells[metric]
        assert d.startswith(direction)
        assert float(diff) == pytest.approx(float(vb) - float(va), abs=2e-3 * max(1, abs(float(va))))
    assert float(cells["distinct_n"][3]) < float(cells["distinct_n"][2])
    assert float(cells["compression_ratio"][3]) > float(cells["compression_ratio"][2])


def test_rounds_tab_shows_trajectory_and_allocation(browser, runs):
    from generator.feedback.rounds import load_rounds

    srv = serve(View(runs["r"]), 0)
    try:
        open_page(browser, address(srv) + "#rounds")
        table = wait(lambda: browser.find_element("id", "allocation"))
        rounds = load_rounds(runs["r"])
        assert len(browser.find_elements("css selector", "#trajectory tr")) == len(rounds) + 1
        plan = pl.read_parquet(runs["r"] / "plan.parquet")
        want = dict(plan.group_by("topic_id").len().iter_rows())
        got = {tr.find_elements("tag name", "td")[0].text: int(tr.find_elements("tag name", "td")[-2].text)
               for tr in table.find_elements("css selector", "tr")[1:]}
        assert {k: v for k, v in got.items() if v} == want
        # value per topic and template: one row per cell and per template, its accepted count from the rows
        value = browser.find_element("id", "value")
        heads = [th.text for th in value.find_elements("css selector", "tr th")]
        assert {"acceptance", "tokens / accepted", "money / accepted", "diversity"} <= set(heads)
        df = frame(runs["r"])
        rows = {(tds[0].text, tds[1].text): tds for tds in (tr.find_elements("tag name", "td")
                                                              for tr in value.find_elements("css selector", "tr")[1:])}
        assert {n for k, n in rows if k == "topic"} == set(df["topic_id"].unique())
        col = heads.index("accepted")
        for (cell,), g in df.group_by(["topic_id"]):
            assert int(rows[("topic", cell)][col].text) == int((g["status"] == "ok").sum())
    finally:
        srv.shutdown()


def test_usage_tab_shows_calls_tokens_and_cost_of_each_run(browser, server, runs):
    from generator.export.usage import compute_usage

    open_page(browser, server + "#usage")
    for which in ("a", "b"):
        table = wait(lambda: browser.find_element("id", f"usage-{which}"))
        u = compute_usage(runs[which])
        head = [th.text for th in table.find_elements("tag name", "th")]
        total = table.find_element("css selector", 'tr[data-model="total"]')
        cells = dict(zip(head, [td.text for td in total.find_elements("tag name", "td")]))
        assert int(cells["calls"]) == u["total"]["requests"] == frame(runs[which])["attempts"].sum()  # retries too
        assert int(cells["completion tokens"]) == u["total"]["completion_tokens"]
        if which == "a":  # priced: tokens x price
            want = u["total"]["prompt_tokens"] * 0.5e-6 + u["total"]["completion_tokens"] * 2e-6
            assert float(cells["cost"]) == pytest.approx(want, abs=1e-6)
        else:
            assert cells["cost"] == "-"


def test_cli_prints_address_and_rejects_a_non_run(runs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "generator.cli", "view", str(runs["a"]), "--port", "0", "--no-browser"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        meta = json.load(urllib.request.urlopen(url + "api/meta", timeout=10))
        assert meta["a"]["records"] == frame(runs["a"]).height and meta["b"] is None
        bad = urllib.request.Request(url + "api/records?round=x")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 400
    finally:
        p.terminate()
        p.wait(10)
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "generator.cli", "view", str(tmp_path / "empty"), "--no-browser"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
