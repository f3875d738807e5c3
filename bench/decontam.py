"""Benchmark decontamination: the GSM8K test split as the benchmark, a large deterministic corpus of
~300-word documents with planted GSM8K items as the data.

    python bench/decontam.py [--docs 60000] [--gsm8k ../shared/data/gsm8k] [--alternatives] [--baseline REV]
    taskset -c 1 python bench/decontam.py ...   # pinned to one core (the figure to quote)

Prints the CPU, the cores the process may use and the load average, index build time and memory,
documents/s per core (CPU time of this one thread, no memory tracing) and, in a second pass, peak
traced memory while scanning (the corpus is generated and scanned in chunks, so only the index and
one chunk are held), and recall on planted items: verbatim, lightly reworded (case, punctuation, a
few words changed) and inside longer text; a clean control set must give no hit. Target: >= 30,000
documents/s per core.

With --baseline REV, the matcher as it was at git revision REV is timed on the same chunks,
chunk by chunk in turn with the current one, and the ratio printed: on a shared machine the
absolute figures move with the load, the ratio much less.

With --alternatives, the same data through the other matchers measured side by side:
- `python-tuples`: a set of Python hashes of 13-word tuples (the obvious hand-written matcher);
- `datatrove`: datatrove's NGramsDecontFilter (12-grams by default; run here with n=13), when the
  `datatrove` package is importable (install it in a scratch venv, not the project's);
- `decon` (the `decontaminate` package, allenai/decon's bindings): a directory-to-report batch tool
  whose wheels need Python >= 3.12; reported as unavailable where it cannot be imported.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from generator.core.ngram_index import Item, NgramIndex, normalize  # noqa: E402

N = 13
CHUNK = 2000
FILLER = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
          "have an they you were her she there been one all we their has would when if so no will more can "
          "people time year way day man thing woman life child world school state family student group "
          "country problem hand part place case week company system program question work government number "
          "night point home water room mother area money story fact month lot right study book eye job word "
          "business issue side kind head house service friend father power hour game line end member law car "
          "city community name president team minute idea kid body information back parent face others level "
          "office door health person art war history party result change morning reason research girl guy "
          "moment air teacher force education").split()


def gsm8k_items(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "test.jsonl").read_text().splitlines() if ln.strip()]


def filler(rng: random.Random, words: int, vocab: list[str]) -> str:
    return " ".join(rng.choices(vocab, k=words)).capitalize() + "."


def reword(rng: random.Random, text: str) -> str:
    """Lightly reworded: case and punctuation changed, one word in ~25 replaced."""
    ws = text.split()
    for i in range(len(ws)):
        if i % 25 == 12:
            ws[i] = rng.choice(FILLER)
    out = " ".join(ws).replace(",", "").replace("?", " ?")
    return out.upper() if rng.random() < 0.5 else out


def planted(rows: list[dict], rng: random.Random, vocab: list[str], k: int) -> dict[str, list[tuple[str, str]]]:
    picks = rng.sample(range(len(rows)), 3 * k)
    q = lambda i: rows[i]["question"]  # noqa: E731
    return {
        "verbatim": [(str(i), q(i)) for i in picks[:k]],
        "reworded": [(str(i), reword(rng, q(i))) for i in picks[k:2 * k]],
        "inside": [(str(i), f"{filler(rng, 150, vocab)} {q(i)} {filler(rng, 150, vocab)}") for i in picks[2 * k:]],
        "clean": [("-", filler(rng, 300, vocab)) for _ in range(k)],
    }


def corpus_chunks(seed: int, docs: int, vocab: list[str]):
    rng = random.Random(seed)
    for start in range(0, docs, CHUNK):
        yield [filler(rng, 300, vocab) for _ in range(min(CHUNK, docs - start))]


class PythonTuples:
    """The obvious matcher: Python's hash of every normalised 13-word tuple, in a set."""

    name = "python-tuples"

    def __init__(self, rows: list[dict]):
        self.index: dict[int, str] = {}
        for i, r in enumerate(rows):
            for field in ("question", "answer"):
                w = normalize(r[field]).split()
                for p in range(len(w) - N + 1):
                    self.index.setdefault(hash(tuple(w[p:p + N])), str(i))

    def match_many(self, texts):
        out = []
        for t in texts:
            w = normalize(t).split()
            ix = self.index
            out.append({ix[h] for h in (hash(tuple(w[p:p + N])) for p in range(len(w) - N + 1)) if h in ix})
        return out


class Datatrove:
    name = "datatrove"

    def __init__(self, rows: list[dict], workdir: Path):
        import numpy as np
        from datatrove.data import Document
        from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
        from datatrove.utils.hashing import create_hash_func
        from datatrove.utils.text import simplify_text
        from datatrove.utils.word_tokenizers import load_word_tokenizer

        cfg = NGramsDecontConfig(n_grams=N, find_query_ngrams=True)
        tok, hf = load_word_tokenizer("en"), create_hash_func(cfg.hash_config)
        hashes = set()
        for r in rows:  # the indexer's own steps (its class needs lighteval to load tasks)
            for field in ("question", "answer"):
                w = tok.word_tokenize(simplify_text(r[field], cfg.norm_config))
                hashes.update(hf(" ".join(w[p:p + N])) for p in range(len(w) - N + 1))
        workdir.mkdir(parents=True, exist_ok=True)
        np.array(sorted(hashes), dtype=cfg.hash_config.np_descr).tofile(workdir / "gsm8k.index.hashes")
        self.filter = NGramsDecontFilter(str(workdir), config=cfg, language="en")
        self.Document = Document

    def match_many(self, texts):
        out = []
        for i, t in enumerate(texts):
            r = self.filter.filter(self.Document(text=t, id=str(i)))
            out.append(set() if r is True else {"?"})
        return out


def recall(name: str, matcher, sets: dict, by_item: bool) -> str:
    parts = []
    for kind, pairs in sets.items():
        res = matcher.match_many([t for _, t in pairs])
        if kind == "clean":
            parts.append(f"clean flagged {sum(bool(r) for r in res)}/{len(pairs)}")
            continue
        ids = [{h.item_id for h in r} if isinstance(r, list) else r for r in res]
        # datatrove says only that a document matched ("?"), not which item
        ok = sum(i in found or (not by_item and bool(found)) for (i, _), found in zip(pairs, ids))
        parts.append(f"{kind} {ok}/{len(pairs)}")
    return f"{name:>14}: recall " + ", ".join(parts)


def scan(name: str, match_many, seed: int, docs: int, vocab: list[str]) -> tuple[float, int, int]:
    """docs/s (CPU time of this process, one thread), peak traced bytes while scanning, hits."""
    rates, hits = timed({name: match_many}, seed, docs, vocab)
    return rates[name], peak_memory(match_many, seed, docs, vocab), hits[name]


def timed(matchers: dict, seed: int, docs: int, vocab: list[str]) -> tuple[dict[str, float], dict[str, int]]:
    """docs/s of each matcher (CPU time of this thread; no memory tracing, which slows every
    allocation) and the documents each flagged; the matchers take each chunk in turn, first one
    then the other going first."""
    spent, hits = dict.fromkeys(matchers, 0.0), dict.fromkeys(matchers, 0)
    for c, chunk in enumerate(corpus_chunks(seed, docs, vocab)):
        for name, match_many in list(matchers.items())[::1 if c % 2 == 0 else -1]:
            t0 = time.process_time()
            res = match_many(chunk)
            spent[name] += time.process_time() - t0
            hits[name] += sum(bool(r) for r in res)
    return {k: docs / v for k, v in spent.items()}, hits


def peak_memory(match_many, seed: int, docs: int, vocab: list[str]) -> int:
    """Peak traced bytes while scanning the corpus chunk by chunk (the chunk itself included)."""
    tracemalloc.start()
    for chunk in corpus_chunks(seed, docs, vocab):
        match_many(chunk)
        del chunk
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def baseline_module(rev: str):
    """generator/core/ngram_index.py as it was at git revision `rev`, imported under another name."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:generator/core/ngram_index.py"],
                         capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"ngram_index_{rev}", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    exec(compile(src, f"{rev}:generator/core/ngram_index.py", "exec"), mod.__dict__)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsm8k", type=Path, default=ROOT.parent / "shared" / "data" / "gsm8k")
    ap.add_argument("--docs", type=int, default=60000)
    ap.add_argument("--planted", type=int, default=200, help="Items planted per kind.")
    ap.add_argument("--alternatives", action="store_true")
    ap.add_argument("--alt-docs", type=int, default=10000, help="Corpus size for the slower alternatives.")
    ap.add_argument("--baseline", metavar="REV", help="Also time the matcher of this git revision, in turn.")
    args = ap.parse_args()
    if not (args.gsm8k / "test.jsonl").is_file():
        sys.exit(f"bench/decontam.py: {args.gsm8k}/test.jsonl not found; pass --gsm8k FOLDER")
    print(describe())
    print(f"Python {platform.python_version()}; one thread; may run on {len(os.sched_getaffinity(0))} "
          f"core(s); load average {os.getloadavg()[0]:.1f}")
    rows = gsm8k_items(args.gsm8k)
    vocab = sorted({w for r in rows for w in re.findall(r"[a-z]+", r["question"].lower())} | set(FILLER))
    rng = random.Random(7)
    sets = planted(rows, rng, vocab, args.planted)

    tracemalloc.start()
    t0 = time.perf_counter()
    index = NgramIndex.build([Item("gsm8k", str(i), (r["question"], r["answer"])) for i, r in enumerate(rows)], N)
    build_s = time.perf_counter() - t0
    index_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    st = index.stats()
    print(f"index: {sum(st.items.values())} GSM8K test items, {st.ngrams:,} distinct {N}-grams, "
          f"{st.bytes / 2**20:.1f} MiB held, built in {build_s:.2f} s (peak {index_peak / 2**20:.1f} MiB while "
          f"building)")
    print(recall("synthgen", index, sets, by_item=True))
    matchers = {"synthgen": index.match_many}
    if args.baseline:
        old = baseline_module(args.baseline)
        base = old.NgramIndex.build([old.Item("gsm8k", str(i), (r["question"], r["answer"]))
                                     for i, r in enumerate(rows)], N)
        print(recall(f"@{args.baseline}", base, sets, by_item=True))
        matchers[f"@{args.baseline}"] = base.match_many
    rates, hits = timed(matchers, 11, args.docs, vocab)
    peak = peak_memory(index.match_many, 11, args.docs, vocab)
    rate = rates["synthgen"]
    print(f"{'synthgen':>14}: {rate:,.0f} docs/s per core over {args.docs:,} ~300-word docs "
          f"({'meets' if rate >= 30000 else 'BELOW'} the 30,000 target); scan peak {peak / 2**20:.1f} MiB "
          f"(chunks of {CHUNK}, traced in a second pass); false hits {hits['synthgen']}")
    if args.baseline:
        name = f"@{args.baseline}"
        print(f"{name:>14}: {rates[name]:,.0f} docs/s per core on the same chunks, in turn; false hits "
              f"{hits[name]}; current/baseline {rate / rates[name]:.2f}x")
    if args.alternatives:
        alts = [("python-tuples", lambda: PythonTuples(rows)),
                ("datatrove", lambda: Datatrove(rows, Path("/tmp/synthgen-bench-decontam")))]
        for name, make in alts:
            try:
                tracemalloc.start()
                m = make()
                ipeak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            except (ImportError, TypeError) as exc:  # an optional comparison: say so and go on
                tracemalloc.stop()  # (datatrove's xxhash helper raises TypeError with xxhash >= 3.5)
                print(f"{name:>14}: unavailable ({type(exc).__name__}: {exc})")
                continue
            print(recall(name, m, sets, by_item=name == "python-tuples"))
            rate, peak, hits = scan(name, m.match_many, 11, args.alt_docs, vocab)
            print(f"{name:>14}: {rate:,.0f} docs/s per core over {args.alt_docs:,} docs; index peak "
                  f"{ipeak / 2**20:.1f} MiB, scan peak {peak / 2**20:.1f} MiB; false hits {hits}")
        try:
            import decon  # noqa: F401  (the `decontaminate` package)
            print(f"{'decon':>14}: importable, but it scans a training folder into a report folder (no "
                  f"per-text call); not measured here")
        except ImportError:
            print(f"{'decon':>14}: unavailable (the `decontaminate` package has wheels for Python >= 3.12 only; "
                  f"this is {platform.python_version()})")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
