"""Decontamination in the loop: once every stage of a record's attempt has settled, its texts (the
answer, the prompts, the seed row, a reasoning field; what `decontaminate.check` names) are
matched against the benchmark index on the check workers, and the verdict comes back to the
scheduler like any check's. A hit is kept on the row (`contamination`, JSON: benchmark, item id,
matched n-gram, overlap share, and which text matched) and, by `decontaminate.action`, the record
is kept (flag), ended as rejected (reject), or a stage is re-run through `on_reject` (regenerate),
exactly as a failed verify check would. Records it rejects are `decided_by: decontaminate`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from generator.config.decontaminate import DecontaminateConfig, sources
from generator.config.stages import OnReject
from generator.core.benchmarks import BenchmarkError, count_hits, load_index
from generator.core.errors import SpecError
from generator.core.ngram_index import NgramIndex
from generator.engine.pipeline.dag import Pipeline
from generator.engine.pipeline.state import Rec
from generator.engine.planner import Resolved, spec_error

DECONTAM = "decontaminate"  # `decided_by` of the records it rejects; its waiting label
MAX_HITS = 10                # hits kept on a row (most overlap first)


@dataclass
class Decontaminator:
    cfg: DecontaminateConfig
    index: NgramIndex
    output: str                  # the stage whose text is the row's answer
    rule: OnReject | None        # action: regenerate
    seed_rows: dict[str, dict]   # topic cell id -> its seed row (seed-data sources only)

    def texts(self, rec: Rec) -> list[tuple[str, str]]:
        """(what, text) for each text `check` names, in this attempt."""
        out: list[tuple[str, str]] = []
        want = set(self.cfg.check)
        if "final" in want:
            final = rec.outputs.get(self.output)
            if final is not None and final.view.get("text"):
                out.append(("final", final.view["text"]))
        if "prompts" in want:
            seen: set[str] = set()
            messages = [*(rec.row.get("messages") or []), *(m for o in rec.outputs.values() for m in (o.messages or []))]
            for m in messages:
                c = m.get("content") if isinstance(m, dict) else None
                if c and m.get("role") != "assistant" and c not in seen:
                    seen.add(c)
                    out.append(("prompts", c))
        if "seeds" in want:
            row = self.seed_rows.get(rec.row.get("topic_id"), {})
            out.extend(("seeds", str(v)) for v in row.values() if isinstance(v, str) and v)
        if "reasoning" in want:  # a `reasoning` field, where a row or an answer has one
            for value in (rec.row.get("reasoning"), *(o.view.get("reasoning") for o in rec.outputs.values())):
                if isinstance(value, str) and value:
                    out.append(("reasoning", value))
        return out

    def check(self, texts: list[tuple[str, str]]) -> list[dict]:
        """The hits of `texts` (on a check worker: NumPy releases the GIL for the scan)."""
        hits: list[dict] = []
        for (what, _), found in zip(texts, self.index.match_many([t for _, t in texts])):
            hits.extend({**h.as_dict(), "field": what} for h in found)
        hits.sort(key=lambda h: -h["overlap"])
        return hits[:MAX_HITS]

    @staticmethod
    def reason(hits: list[dict]) -> str:
        h = hits[0]
        return (f"contaminated: {h['field']} shares a {len(h['ngram'].split())}-gram with {h['benchmark']} item "
                f"{h['item_id']} ({h['overlap']:.0%} of its n-grams)")


def prepare(resolved: Resolved, pipeline: Pipeline) -> Decontaminator | None:
    """The spec's decontaminator with its index (built once, then read from the cache), or None."""
    spec = resolved.spec
    cfg = spec.decontaminate
    if cfg is None:
        return None
    where = ("decontaminate",)
    rule = None
    if cfg.action == "regenerate":
        rule = cfg.on_reject or OnReject(regenerate=pipeline.output)
        if rule.regenerate not in pipeline.nodes or pipeline.nodes[rule.regenerate].kind != "generate":
            choices = [n for n, x in pipeline.nodes.items() if x.kind == "generate"]
            raise spec_error(spec, (*where, "on_reject", "regenerate"),
                             f"'{rule.regenerate}' is no generate stage; choose from {', '.join(choices)}")
    if "seeds" in cfg.check and not any(getattr(c, "seed_id", "") for c in resolved.cells):
        raise spec_error(spec, (*where, "check"), "`seeds` checks seed rows, and no topics source is `seeds:`; "
                         "remove `seeds` from `check`")
    srcs = sources(cfg, spec.base_dir or spec.project_root, spec.confinement(), spec._located, where, spec.file)
    try:
        index = load_index(srcs, cfg.ngram)
    except (BenchmarkError, FileNotFoundError) as exc:
        raise spec_error(spec, (*where, "benchmarks"), str(exc)) from None
    except SpecError:
        raise
    seed_rows = {c.id: dict(c.row) for c in resolved.cells if getattr(c, "seed_id", "")}
    return Decontaminator(cfg, index, pipeline.output, rule, seed_rows)


def row_value(rec: Rec) -> str | None:
    return json.dumps(rec.contamination, ensure_ascii=False) if rec.contamination else None


def manifest_section(lf: pl.LazyFrame, cfg: dict[str, Any], single: bool) -> dict[str, Any]:
    """The manifest's `decontamination`: the settings, hits per benchmark over every row written
    (rejected attempts included), and how the final rows stand."""
    frame = lf.select("contamination", "status", *([] if single else ["final", "decided_by"])).collect()
    final = frame if single else frame.filter(pl.col("final"))
    flagged = final.filter(pl.col("contamination").is_not_null())
    if single:
        rejected = flagged.filter(pl.col("status") == "rejected").height
    else:
        rejected = final.filter(pl.col("decided_by") == DECONTAM).height
    return {"ngram": cfg.get("ngram"), "check": cfg.get("check"), "action": cfg.get("action"),
            "benchmarks": [b["name"] for b in cfg.get("benchmarks", [])],
            "hits": count_hits(frame["contamination"]),
            "final": {"records": final.height, "contaminated": flagged.height, "rejected": rejected}}
