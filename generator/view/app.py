"""What the viewer's JSON API answers: one loaded run (and optionally a second to compare with)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import polars as pl

from generator.core.run_layout import has_rounds
from generator.view import data
from generator.view.redundancy import SCORE_SAMPLE, Embeddings, ok_token_count, run_scores


class Run:
    def __init__(self, run_dir: str | Path, embedder: str = "static"):
        self.path = Path(run_dir)
        self.df = data.load_run(self.path)
        self.manifest = data.manifest(self.path)
        self.name = self.manifest.get("name") or self.path.name
        self.emb = Embeddings(self.df, embedder=embedder)

    def rows(self, rows: list[int]) -> pl.DataFrame:
        """Records by `_row`, in the order given."""
        return self.df[rows] if rows else self.df.clear()

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "records": self.df.height,
                "facets": data.facets(self.df), "has_duplicates": "duplicate_of" in self.df.columns,
                "duplicates": int(self.df["duplicate_of"].is_not_null().sum()) if "duplicate_of" in self.df.columns else 0,
                "has_rounds": has_rounds(self.path),
                "decontamination": data.decontamination(self.df, self.manifest),
                "extra_columns": [c for c in self.df.columns if c not in data.SHOWN and not c.startswith("_")]}


class View:
    """The state behind the server: run A, optional run B, cached compare scores."""

    def __init__(self, run: str | Path, run2: str | Path | None = None, embedder: str = "static"):
        self.a = Run(run, embedder)
        self.b = Run(run2, embedder) if run2 else None
        if self.b is not None and self.a.name == self.b.name:  # two runs of one spec: tell them apart by folder
            self.a.name, self.b.name = str(self.a.path), str(self.b.path)
        self._scores: dict[str, Any] | None = None
        self._overlap: dict[str, int] | None = None
        self._lock = threading.Lock()

    def run(self, which: str | None) -> Run:
        if which == "b":
            if self.b is None:
                raise LookupError("no second run: start the viewer with `synthgen view RUN RUN2`")
            return self.b
        return self.a

    def meta(self) -> dict[str, Any]:
        return {"a": self.a.info(), "b": self.b.info() if self.b else None, "filters": list(data.FILTERS)}

    def records(self, params: dict[str, str]) -> dict[str, Any]:
        return data.query(self.run(params.get("run")).df, params)

    def record(self, params: dict[str, str]) -> dict[str, Any] | None:
        return data.record(self.run(params.get("run")).df, params.get("id", ""))

    def neighbours(self, params: dict[str, str]) -> dict[str, Any]:
        r = self.run(params.get("run"))
        hit = r.df.filter(pl.col("id") == params.get("id", ""))
        if hit.is_empty():
            raise LookupError(f"no record {params.get('id')!r}")
        pairs = r.emb.neighbours(int(hit["_row"][0]), k=int(params.get("k") or 10))
        rows = data.summaries(r.rows([p[0] for p in pairs]))
        for row, (_, sim) in zip(rows, pairs):
            row["similarity"] = round(sim, 4)
        return {"id": params["id"], "embedder": r.emb.embedder, "neighbours": rows}

    def clusters(self, params: dict[str, str]) -> dict[str, Any]:
        r = self.run(params.get("run"))
        c = r.emb.clusters()
        out = []
        for cl in c["clusters"]:
            members = r.emb.rows[c["labels"] == cl["cluster"]]
            sub = r.rows(members.tolist())
            top = {dim: [[v, n] for v, n in sub[col].value_counts(sort=True, name="n").head(3).iter_rows()]
                   for dim, col in (("template", "template"), ("topic", "topic_id")) if col in sub.columns}
            out.append({**cl, "examples": data.summaries(r.rows(cl["examples"])), "top": top})
        return {"k": c["k"], "embedded": len(r.emb.rows), "embedder": r.emb.embedder, "clusters": out}

    def compare(self, params: dict[str, str]) -> dict[str, Any]:
        """Run A's filtered page, each record beside the record with the same id in run B."""
        b = self.run("b")
        page = data.query(self.a.df, params)
        ids = [r["id"] for r in page["records"]]
        other = b.df.filter(pl.col("id").is_in(ids))
        by_id = {r["id"]: r for r in data.summaries(other)}
        if self._overlap is None:  # the same for every page: counted once
            a_ids, b_ids = set(self.a.df["id"].to_list()), set(b.df["id"].to_list())
            self._overlap = {"shared": len(a_ids & b_ids), "only_a": len(a_ids - b_ids), "only_b": len(b_ids - a_ids)}
        return {**page, "pairs": [{"a": r, "b": by_id.get(r["id"])} for r in page["records"]], **self._overlap}

    def scores(self) -> dict[str, Any]:
        """Both runs' diversity on the same number of documents and token budget, and B - A."""
        b = self.run("b")
        with self._lock:
            if self._scores is None:
                n = min(SCORE_SAMPLE, *(int((r.df["status"] == "ok").sum()) for r in (self.a, b)))
                budget = min(ok_token_count(r.emb, r.df, n) for r in (self.a, b)) or None
                sa, sb = run_scores(self.a.emb, self.a.df, n, budget), run_scores(b.emb, b.df, n, budget)
                rows = []
                for m, va in sa["metrics"].items():
                    vb = sb["metrics"].get(m, {})
                    x, y = va.get("value"), vb.get("value")
                    diff = None if x is None or y is None else y - x
                    better = None if diff is None or va["higher_is_diverse"] is None or diff == 0 else \
                        ("b" if (diff > 0) == va["higher_is_diverse"] else "a")
                    rows.append({"metric": m, "a": x, "b": y, "diff": diff, "higher_is_diverse": va["higher_is_diverse"],
                                 "more_diverse": better})
                self._scores = {"n_docs": n, "token_budget": budget, "rows": rows,
                                "a": self.a.name, "b": b.name}
            return self._scores

    def usage(self, params: dict[str, str]) -> dict[str, Any]:
        """Model calls, cache hits, tokens, busy time and cost of a run (live while it is generated)."""
        from generator.export.usage import compute_usage

        return compute_usage(self.run(params.get("run")).path)

    def rounds(self, params: dict[str, str]) -> dict[str, Any]:
        from generator.feedback.rounds import load_rounds
        from generator.feedback.rounds_report import allocation_matrix, trajectory_rows, value_rows

        r = self.run(params.get("run"))
        rounds = load_rounds(r.path) if has_rounds(r.path) else []
        if not rounds:
            return {"rounds": [], "trajectory": [], "cells": [], "allocation": {}, "value": []}
        order, mat = allocation_matrix(rounds)
        last = rounds[-1].get("yields", {}).get("cells", {})
        cells = [{"cell": c, "per_round": mat[c], "total": sum(mat[c]),
                  "last_yield": data.plain(last.get(c, {}).get("yield_mean"))} for c in order]
        # per topic cell, then per template: acceptance, tokens and money per accepted record, diversity
        value = [{"kind": kind, "name": r.pop(dim), **r} for kind, dim in (("topic", "cell"), ("template", "template"))
                 for r in value_rows(rounds, dim)]
        return {"rounds": [h["round"] for h in rounds], "trajectory": data.plain(trajectory_rows(rounds)),
                "cells": cells, "value": data.plain(value)}
