"""Python API behind `synthgen score | compare | dedup`.

Inputs (`load_texts`): a run folder, local or an fsspec URL (its `generations/*.parquet`; rows with
status == "ok" and, if the column exists, a null `duplicate_of`), a Parquet file, a CSV file, or a
JSONL / JSONL.zst file.
`text_column` may join several columns with "+", e.g. "question+answer" (joined by a newline).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from generator.core.run_layout import generation_files, read_generation_files, read_parquet
from generator.core.storage import name_of, write_atomic

from scoring.metrics import DEFAULT_METRICS, EMBEDDING, get, score_texts

BY_COLUMNS = {"persona": "persona_ids", "topic": "topic_id", "template": "template", "model": "model"}


# ------------------------------------------------------------------ loading

def _read_jsonl(path: Path) -> pl.DataFrame:
    if path.name.endswith(".zst"):
        import zstandard

        with open(path, "rb") as f:
            data = zstandard.ZstdDecompressor().stream_reader(f).read()
    else:
        data = path.read_bytes()
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return pl.DataFrame(rows, infer_schema_length=None)


def _read_run(run: Path) -> pl.DataFrame:
    df = read_generation_files(run)
    if df is None:
        raise FileNotFoundError(f"{run}: no generations/part-*.parquet")
    if "status" in df.columns:
        df = df.filter(pl.col("status") == "ok")
    if "duplicate_of" in df.columns:
        df = df.filter(pl.col("duplicate_of").is_null())
    return df


def read_frame(path: str | Path) -> pl.DataFrame:
    from generator.core import storage

    if storage.is_url(path):  # a run folder on object storage
        return _read_run(path)
    p = Path(path)
    if p.is_dir():
        return _read_run(p)
    name = p.name.lower()
    if name.endswith(".parquet"):
        return pl.read_parquet(p)
    if name.endswith((".jsonl", ".jsonl.zst", ".ndjson", ".json.zst")):
        return _read_jsonl(p)
    if name.endswith(".csv"):
        return pl.read_csv(p)
    raise ValueError(f"{p}: expected a run folder, .parquet, .csv, .jsonl or .jsonl.zst")


def _text_series(df: pl.DataFrame, text_column: str) -> list[str]:
    cols = [c.strip() for c in text_column.split("+")]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"no column {', '.join(missing)}; columns: {', '.join(df.columns)}")
    if len(cols) == 1:
        return [("" if t is None else str(t)) for t in df[cols[0]].to_list()]
    parts = [df[c].cast(pl.Utf8).fill_null("").to_list() for c in cols]
    return ["\n".join(x) for x in zip(*parts)]


def load_texts(path_or_paths: str | Path | Sequence[str | Path], text_column: str = "text",
               sample: int | None = None, seed: int = 0) -> tuple[list[str], pl.DataFrame]:
    """Texts and their frame from one path or several (concatenated). `sample` draws rows (seeded)."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    frames = [read_frame(p) for p in paths]
    df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    if sample is not None and sample < df.height:
        idx = np.sort(np.random.default_rng(seed).choice(df.height, size=sample, replace=False))
        df = df[idx.tolist()]
    return _text_series(df, text_column), df


def groups_for(df: pl.DataFrame, by: str | None) -> list[str] | None:
    """Group labels: persona -> first of persona_ids, topic -> topic_id, template, model, or any column."""
    if not by:
        return None
    col = BY_COLUMNS.get(by, by)
    if col not in df.columns:
        raise KeyError(f"--by {by}: no column {col!r}; columns: {', '.join(df.columns)}")
    s = df[col]
    if s.dtype == pl.List(pl.Utf8) or isinstance(s.dtype, pl.List):
        s = s.list.first()
    return ["(none)" if v is None else str(v) for v in s.to_list()]


# ------------------------------------------------------------------ scoring

def _parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    if not metrics:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    names = [m.strip() for m in metrics]
    for n in names:
        get(n)
    return names


def _map(emb: np.ndarray, groups: list[str] | None, seed: int, max_points: int = 2000) -> dict[str, Any]:
    keep = np.arange(len(emb))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(emb), size=max_points, replace=False))
    x = emb[keep].astype(np.float64)
    x = x - x.mean(0)
    if len(x) < 2:
        xy = np.zeros((len(x), 2))
    else:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        xy = x @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return {"x": [round(float(v), 5) for v in xy[:, 0]], "y": [round(float(v), 5) for v in xy[:, 1]],
            "group": [groups[i] for i in keep] if groups else None}


def score_one(texts: list[str], metrics: Sequence[str], groups: list[str] | None = None, seed: int = 0,
              token_budget: int | None = None, embedder: str = "static", with_map: bool = False,
              options: dict | None = None) -> dict[str, Any]:
    names = _parse_metrics(metrics)
    emb = None
    if with_map or any(get(n).kind == EMBEDDING for n in names):
        from scoring.embed import embed
        emb = embed(texts, embedder=embedder)
    res = score_texts(texts, names, groups=groups, seed=seed, token_budget=token_budget, embedder=embedder,
                      embeddings=emb, options=options)
    out: dict[str, Any] = {"n_texts": len(texts), "embedder": embedder,
                           "metrics": {k: v.to_dict() for k, v in res.items()},
                           "direction": {k: get(k).higher_is_diverse for k in res}}
    if groups is not None:
        counts: dict[str, int] = {}
        for g in groups:
            counts[g] = counts.get(g, 0) + 1
        out["groups"] = counts
    if with_map and emb is not None:  # the report's view of the data: map, examples, closest pairs
        from scoring.examples import examples_by_group, similar_pairs

        out["map"] = _map(emb, groups, seed)
        out["examples"] = examples_by_group(texts, groups, seed=seed)
        out["similar_pairs"] = similar_pairs(emb, texts, groups, seed=seed)
    return out


def score(paths: str | Path | Sequence[str | Path], metrics: str | Sequence[str] | None = None,
          by: str | None = None, sample: int | None = None, seed: int = 0, text_column: str = "text",
          token_budget: int | None = None, embedder: str = "static", with_map: bool = False,
          options: dict | None = None) -> dict[str, Any]:
    """Score each path separately. Returns a JSON-serializable dict; writes nothing."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    names = _parse_metrics(metrics)
    datasets = {}
    for p in paths:
        texts, df = load_texts(p, text_column=text_column, sample=sample, seed=seed)
        groups = groups_for(df, by)
        datasets[str(p)] = score_one(texts, names, groups, seed, token_budget, embedder, with_map, options)
    return {"metrics": names, "by": by, "sample": sample, "seed": seed, "text_column": text_column,
            "embedder": embedder, "token_budget": token_budget, "datasets": datasets}


def _bootstrap_spread(texts: list[str], name: str, seed: int, embedder: str, rounds: int = 10,
                      token_budget: int | None = None) -> float | None:
    """Std of the metric over bootstrap resamples of the documents (no-spread metrics only)."""
    m = get(name)
    if len(texts) < 2 or m.kind not in ("lexical", "embedding"):
        return None
    rng = np.random.default_rng(seed + 7919)
    emb = None
    if m.kind == EMBEDDING:
        from scoring.embed import embed
        emb = embed(texts, embedder=embedder)
    vals = []
    for r in range(rounds):
        idx = rng.choice(len(texts), size=len(texts), replace=True)
        if name in ("exact_dup_rate", "near_dup_rate"):  # resampling with replacement makes duplicates
            idx = rng.choice(len(texts), size=max(2, len(texts) // 2), replace=False)
        sub = [texts[i] for i in idx]
        r_ = m(sub, seed=seed + r, token_budget=token_budget, embeddings=None if emb is None else emb[idx],
               embedder=embedder)
        vals.append(r_.value)
    v = np.array([x for x in vals if x is not None and math.isfinite(x)])
    return float(v.std(ddof=1)) if len(v) > 1 else None


def compare(paths: Sequence[str | Path], metrics: str | Sequence[str] | None = None, by: str | None = None,
            sample: int | None = None, seed: int = 0, text_column: str = "text", token_budget: int | None = None,
            embedder: str = "static", bootstrap: int = 10, with_map: bool = False) -> dict[str, Any]:
    """Metrics side by side. Each dataset after the first is compared with the first.

    Lexical metrics are computed at a common token budget (the smallest dataset's token count unless
    `token_budget` is given) so that corpus size does not decide the comparison; embedding metrics at
    a common number of documents. A difference is `significant` when |diff| > 2 * sqrt(s_a^2 + s_b^2),
    s the metric's own spread or, for metrics without one, a bootstrap std over `bootstrap` resamples.
    """
    paths = [str(p) for p in paths]
    if len(paths) < 2:
        raise ValueError("compare needs at least two datasets")
    names = _parse_metrics(metrics)
    loaded = {p: load_texts(p, text_column=text_column, sample=sample, seed=seed) for p in paths}
    n_docs = min(len(t) for t, _ in loaded.values())
    budget = token_budget or min(sum(len(x.split()) for x in t) for t, _ in loaded.values())
    datasets, spreads = {}, {}
    for p, (texts, df) in loaded.items():
        if len(texts) > n_docs:  # the same number of documents for the embedding metrics
            keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=n_docs, replace=False))
            df = df[keep.tolist()]
            texts = [texts[i] for i in keep]
        groups = groups_for(df, by)
        lex = [n for n in names if get(n).kind == "lexical"]
        other = [n for n in names if get(n).kind != "lexical"]
        d = score_one(texts, other, groups, seed, None, embedder, with_map) if other else {"metrics": {}}
        if lex:
            dl = score_one(texts, lex, groups, seed, budget, embedder, False)
            d.setdefault("n_texts", dl["n_texts"])
            d["metrics"].update(dl["metrics"])
            if "groups" in dl:
                d["groups"] = dl["groups"]
        d["direction"] = {k: get(k).higher_is_diverse for k in names}
        datasets[p] = d
        spreads[p] = {}
        for n in names:
            s = d["metrics"][n]["spread"]
            if s is None and bootstrap:
                s = _bootstrap_spread(texts, n, seed, embedder, bootstrap,
                                      budget if get(n).kind == "lexical" else None)
                d["metrics"][n]["details"]["bootstrap_std"] = s
            spreads[p][n] = s
    base = paths[0]
    rows = []
    for n in names:
        row = {"metric": n, "higher_is_diverse": get(n).higher_is_diverse,
               "values": {p: datasets[p]["metrics"][n]["value"] for p in paths},
               "spreads": {p: spreads[p][n] for p in paths}, "diffs": {}}
        for p in paths[1:]:
            a, b = row["values"][base], row["values"][p]
            if a is None or b is None:
                continue
            sa, sb = spreads[base][n], spreads[p][n]
            comb = math.sqrt((sa or 0) ** 2 + (sb or 0) ** 2) if (sa is not None or sb is not None) else None
            diff = b - a
            row["diffs"][p] = {"diff": diff, "combined_spread": comb,
                               "significant": bool(comb is not None and abs(diff) > 2 * comb)}
        rows.append(row)
    return {"metrics": names, "baseline": base, "by": by, "sample": sample, "seed": seed,
            "token_budget": budget, "n_docs": n_docs, "embedder": embedder, "table": rows, "datasets": datasets}


# ------------------------------------------------------------------ dedup

def dedup_run(run_dir: str | Path, threshold: float = 0.8, embeddings: bool = False,
              text_column: str = "text", semantic_threshold: float = 0.95,
              embedder: str = "static") -> dict[str, Any]:
    """Mark duplicates in a run (a local folder or an fsspec URL): a `duplicate_of` column (id of
    the earlier row) in every generations/*.parquet, each file replaced atomically (tmp file +
    os.replace; one PUT on an object store). Rows are never dropped.

    Only rows with status == "ok" take part (others get null). Order = file order then row order.
    Exact and MinHash near duplicates (Jaccard >= `threshold`); with `embeddings`, also texts whose
    embeddings have cosine >= `semantic_threshold`.
    """
    from scoring.metrics.duplicates import UnionFind, exact_duplicates, find_duplicates, semantic_duplicates

    files = generation_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no generations/*.parquet")
    frames = [read_parquet(f) for f in files]
    refs: list[tuple[int, int]] = []  # (file index, row index) of each ok row
    texts, ids = [], []
    for fi, df in enumerate(frames):
        ok = df["status"].to_list() if "status" in df.columns else ["ok"] * df.height
        tx = _text_series(df, text_column)
        idc = df["id"].to_list() if "id" in df.columns else [f"{name_of(files[fi])}:{r}" for r in range(df.height)]
        for r in range(df.height):
            if ok[r] == "ok":
                refs.append((fi, r))
                texts.append(tx[r])
                ids.append(idc[r])
    exact = exact_duplicates(texts)
    near = find_duplicates(texts, threshold)
    dup = list(near)
    n_sem = 0
    if embeddings and texts:
        from scoring.embed import embed
        sem = semantic_duplicates(embed(texts, embedder=embedder), semantic_threshold)
        uf = UnionFind(len(texts))
        for i, (a, b) in enumerate(zip(near, sem)):
            for j in (a, b):
                if j is not None:
                    uf.union(i, j)
        dup = [None if uf.find(i) == i else uf.find(i) for i in range(len(texts))]
        n_sem = sum(1 for a, b in zip(dup, near) if a is not None and b is None)
    marks: list[list[Any]] = [[None] * df.height for df in frames]
    for k, (fi, r) in enumerate(refs):
        if dup[k] is not None:
            marks[fi][r] = ids[dup[k]]
    for fi, (f, df) in enumerate(zip(files, frames)):
        col = pl.Series("duplicate_of", marks[fi], dtype=pl.Utf8) if df.height else pl.Series("duplicate_of", [], dtype=pl.Utf8)
        if "id" in df.columns and df["id"].dtype != pl.Utf8:
            col = pl.Series("duplicate_of", marks[fi], dtype=df["id"].dtype)
        marked = df.with_columns(col)
        # as the engine writes a shard: atomic locally, one PUT (whole or absent) on an object store
        write_atomic(f, lambda tmp, m=marked: m.write_parquet(tmp, compression="zstd", statistics=True))
    n_dup = sum(d is not None for d in dup)
    return {"files": len(files), "rows": sum(df.height for df in frames), "ok_rows": len(texts),
            "duplicates": n_dup, "exact": sum(e is not None for e in exact),
            "near": sum(1 for a, e in zip(near, exact) if a is not None and e is None), "semantic": n_sem,
            "duplicate_rate": n_dup / len(texts) if texts else 0.0, "threshold": threshold}


def write_report(scores: dict[str, Any], path: str | Path) -> Path:
    """Write an HTML report of `score(...)` or `compare(...)` output (see scoring.report)."""
    from scoring.report import render_html

    p = Path(path)
    p.write_text(render_html(scores), encoding="utf-8")
    return p


def data_sections(path: str, by: str | None, embedder: str = "static", seed: int = 0, sample: int = 5000) -> str:
    """Map, examples and closest pairs of a run folder or file, as HTML (for other reports)."""
    from scoring.embed import embed
    from scoring.examples import examples_by_group, similar_pairs
    from scoring.report import examples_html, map_html, pairs_html

    texts, df = load_texts(path, sample=sample, seed=seed)
    if not texts:
        return ""
    groups = groups_for(df, by) if by else None
    emb = embed(texts, embedder=embedder)
    parts = [map_html(_map(emb, groups, seed), embedder, by),
             examples_html(examples_by_group(texts, groups, seed=seed), by),
             pairs_html(similar_pairs(emb, texts, groups, seed=seed))]
    return "\n".join(p for p in parts if p)
