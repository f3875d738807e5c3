"""The LLM cluster-agent diversity score (Chen et al., arXiv 2410.15226, section 2.1).

Steps
1. Criteria (`generate_criteria`): M rounds, each showing J random samples and asking for 3-5
   metadata and 3-5 metrics (1-5 rubric); the answers are gathered into name -> [definitions]
   dicts, one summary prompt per kind merges them into k items, and a criteria-summary prompt turns
   every item into a one-sentence clustering criterion. Criteria can be saved and loaded (JSON) and
   frozen, so that scores of different datasets are comparable.
2. Clustering (`score`): N runs, each drawing K random samples (or, in within-group mode, K samples
   of one group); the judge answers an assignment vector of exactly K cluster labels (the JSON schema
   has minItems = maxItems = K and integer labels 1..K, so under structured decoding the answer is
   always a partition) plus a reasoning per cluster. Labels are canonicalized (first appearance ->
   1, 2, ...). An answer in the paper's shape (clusters with "sample indices") is also accepted and
   repaired (an index in two clusters keeps its first, a missing index becomes a singleton, an
   out-of-range index is dropped), each fix counted as a repair.
3. Self-verification: the clusters with two or more members are shown with their reasoning and
   judged valid/invalid; singletons are valid by definition (not asked). Members of an invalid
   cluster become singletons (the paper does not say; splitting matches its Table 10c).
4. Score: D_i = C_i / S_i with S_i = K / C_i the mean cluster size, i.e. D_i = C_i^2 / K;
   D = mean over runs, reported with its standard error. D ranges from 1/K (one cluster) to K.

Every answer is parsed and validated; a bad answer is retried (`retries` times, new seed) and then
counted as failed: a failed run is never scored. Cost (calls, tokens, seconds), repairs and
failures are reported. Scores depend strongly on K and on the judge: never compare across them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from generator.core.backend import Request, Result, Sampling
from scoring.cluster_agent.settings import ClusterAgentConfig, Criteria
from scoring.cluster_agent.answers import (InvalidAnswer, aggregate, cluster_schema, generation_schema,
                                          parse_clustering, parse_json, parse_verification, sentences_schema,
                                          split_invalid, summary_schema, verify_schema)

log = logging.getLogger(__name__)

PROMPTS = Path(__file__).parent / "prompts"
WEAK_JUDGES = ("smollm2-135m", "smollm2_135m", "smollm2-135m-instruct")
WEAK_WARNING = "judge too weak: scores carry no signal"

_env = Environment(loader=FileSystemLoader(str(PROMPTS)), undefined=StrictUndefined,
                   keep_trailing_newline=False, autoescape=False)


def render(name: str, **kw: Any) -> str:
    return _env.get_template(name).render(**kw).strip()


class ClusterAgentError(RuntimeError):
    pass


@dataclass
class Cost:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, r: Result) -> None:
        self.calls += 1
        self.prompt_tokens += int(r.prompt_tokens or 0)
        self.completion_tokens += int(r.completion_tokens or 0)


@dataclass
class ClusterAgentResult:
    score: float | None
    stderr: float | None
    n_runs: int
    n_scored: int
    n_failed: int
    K: int
    cluster_counts: list[int]
    per_group: dict[str, float]
    per_group_stderr: dict[str, float]
    cost: dict[str, dict[str, float]]
    repairs: dict[str, int]
    failures: dict[str, int]
    invalid_clusters: int
    signal: bool
    warnings: list[str]
    judge: str
    sanity_passed: bool | None = None  # None: no sanity probe was run (or it failed to answer)
    criteria: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_metric_result(self):
        from scoring.metrics.base import MetricResult

        d = self.to_dict()
        d.pop("runs")
        return MetricResult("cluster_agent", float("nan") if self.score is None else self.score,
                            self.stderr, dict(self.per_group), d)


# ------------------------------------------------------------------ schemas

def is_weak_judge(backend: Any) -> bool:
    name = str(getattr(backend, "model", "") or "").lower()
    return any(w in name for w in WEAK_JUDGES) or ("smollm2" in name and "135m" in name)


# ------------------------------------------------------------------ the agent

class ClusterAgent:
    def __init__(self, backend: Any, config: ClusterAgentConfig | None = None, **overrides: Any):
        self.backend = backend
        self.config = config or ClusterAgentConfig()
        for k, v in overrides.items():
            if not hasattr(self.config, k):
                raise TypeError(f"unknown cluster-agent setting {k!r}")
            setattr(self.config, k, v)
        self.cost: dict[str, Cost] = {}
        self.repairs: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._n = 0

    # -------------------------------------------------------------- calling the backend

    def _messages(self, user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": render("system.j2")}, {"role": "user", "content": user}]

    def _call(self, phase: str, jobs: list[tuple[str, str, dict, int]], parse) -> dict[str, Any]:
        """Run jobs (key, prompt, schema, max_tokens); parse each answer; retry bad ones.

        Returns {key: parsed} for the jobs that succeeded; failures are counted in self.failures.
        """
        cfg = self.config
        cost = self.cost.setdefault(phase, Cost())
        pending = {key: (prompt, schema, mt) for key, prompt, schema, mt in jobs}
        done: dict[str, Any] = {}
        for attempt in range(cfg.retries + 1):
            if not pending:
                break
            reqs, by_id = [], {}
            for key, (prompt, schema, mt) in pending.items():
                self._n += 1
                rid = f"{phase}-{self._n}"
                by_id[rid] = key
                reqs.append(Request(id=rid, messages=self._messages(prompt), json_schema=schema,
                                    sampling=Sampling(temperature=cfg.temperature, top_p=cfg.top_p,
                                                      max_tokens=mt, seed=cfg.seed * 100003 + self._n)))
            t0 = time.perf_counter()
            results = list(self.backend.generate(reqs))
            cost.seconds += time.perf_counter() - t0
            got = set()
            for r in results:
                key = by_id.get(r.id)
                if key is None or key in got:
                    continue
                got.add(key)
                cost.add(r)
                try:
                    if r.error or r.finish_reason == "error":
                        raise InvalidAnswer(f"backend error: {r.error}")
                    if r.finish_reason == "length":
                        raise InvalidAnswer("answer truncated")
                    done[key] = parse(key, parse_json(r.text))
                    del pending[key]
                except InvalidAnswer:
                    self.failures[f"{phase}_bad_answers"] = self.failures.get(f"{phase}_bad_answers", 0) + 1
            missing = set(by_id.values()) - got
            if missing:
                self.failures[f"{phase}_missing_results"] = self.failures.get(f"{phase}_missing_results", 0) + len(missing)
            if attempt < cfg.retries and pending:
                self.failures[f"{phase}_retries"] = self.failures.get(f"{phase}_retries", 0) + len(pending)
        if pending:
            self.failures[f"{phase}_failed"] = self.failures.get(f"{phase}_failed", 0) + len(pending)
        return done

    def _repair(self, names: Iterable[str]) -> None:
        for n in names:
            self.repairs[n] = self.repairs.get(n, 0) + 1

    def _cut(self, t: str) -> str:
        t = str(t)
        return t if len(t) <= self.config.max_chars else t[: self.config.max_chars] + " [...]"

    # -------------------------------------------------------------- step A: criteria

    def generate_criteria(self, texts: Sequence[str], seed: int | None = None) -> Criteria:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed if seed is None else seed)
        texts = list(texts)
        if len(texts) < cfg.J:
            raise ClusterAgentError(f"criteria generation needs at least J={cfg.J} texts")
        jobs = []
        for m in range(cfg.M):
            idx = rng.choice(len(texts), size=cfg.J, replace=False)
            jobs.append((f"gen{m}", render("criteria_generate.j2", samples=[self._cut(texts[i]) for i in idx]),
                         generation_schema(), cfg.max_tokens_criteria))

        def parse_gen(_k, obj):
            if not isinstance(obj, dict):
                raise InvalidAnswer("not an object")
            out = {}
            for kind in ("metadata", "metrics"):
                items = obj.get(kind) if kind in obj else obj.get("metric")
                if isinstance(items, dict):  # {name: definition}, the paper's shape
                    items = [{"name": k, "definition": v} for k, v in items.items()]
                if not isinstance(items, list) or not items:
                    raise InvalidAnswer(f"no {kind}")
                out[kind] = []
                for it in items:
                    if not isinstance(it, dict) or not str(it.get("name", "")).strip():
                        raise InvalidAnswer(f"bad {kind} item")
                    d = str(it.get("definition", ""))
                    if it.get("rubric"):
                        d += f" Scoring: {it['rubric']}"
                    out[kind].append((str(it["name"]).strip(), d))
            return out

        rounds = self._call("criteria", jobs, parse_gen)
        if not rounds:
            raise ClusterAgentError("every criteria-generation call failed")
        gathered: dict[str, dict[str, list[str]]] = {"metadata": {}, "metrics": {}}
        for r in rounds.values():
            for kind in ("metadata", "metrics"):
                for name, d in r[kind]:
                    gathered[kind].setdefault(name.lower(), []).append(d)

        def parse_items(k):
            def p(_key, obj):
                items = obj.get("items") if isinstance(obj, dict) else None
                if not isinstance(items, list) or len(items) != k:
                    raise InvalidAnswer(f"need exactly {k} items")
                out = []
                for it in items:
                    if not isinstance(it, dict) or not str(it.get("name", "")).strip():
                        raise InvalidAnswer("bad item")
                    out.append({"name": str(it["name"]).strip(), "definition": str(it.get("definition", ""))})
                return out
            return p

        summaries = {}
        for kind, k in (("metadata", cfg.k_metadata), ("metrics", cfg.k_metrics)):
            k = min(k, len(gathered[kind]))
            res = self._call("criteria", [(kind, render("criteria_summarize.j2", kind=kind, items=gathered[kind], k=k),
                                           summary_schema(k), cfg.max_tokens_criteria)], parse_items(k))
            if kind not in res:
                raise ClusterAgentError(f"the {kind} summary failed after retries")
            summaries[kind] = res[kind]
        md, mt = summaries["metadata"], summaries["metrics"]
        n = len(md) + len(mt)

        def parse_sent(_k, obj):
            cs = obj.get("criteria") if isinstance(obj, dict) else None
            if not isinstance(cs, list) or len(cs) != n:
                raise InvalidAnswer(f"need exactly {n} criteria")
            return [str(c.get("criterion", "")) if isinstance(c, dict) else "" for c in cs]

        res = self._call("criteria", [("sent", render("criteria_sentences.j2", metadata=md, metrics=mt),
                                       sentences_schema(n), cfg.max_tokens_criteria)], parse_sent)
        if "sent" not in res:
            raise ClusterAgentError("the criteria-summary prompt failed after retries")
        crit = ([{"name": m["name"], "kind": "metadata", "criterion": s} for m, s in zip(md, res["sent"][:len(md)])]
                + [{"name": m["name"], "kind": "metric", "criterion": s} for m, s in zip(mt, res["sent"][len(md):])])
        return Criteria(md, mt, crit, {"M": cfg.M, "J": cfg.J, "rounds_ok": len(rounds), "judge": self.judge,
                                       "n_texts": len(texts), "seed": cfg.seed})

    @property
    def judge(self) -> str:
        return str(getattr(self.backend, "model", "unknown"))

    # -------------------------------------------------------------- step B: clustering + verification

    def _cluster(self, draws: dict[str, list[str]], criteria: Criteria, phase: str = "cluster") -> dict[str, Any]:
        cfg = self.config
        crit = criteria.ordered()
        n_metrics = sum(1 for c in criteria.criteria if c.get("kind") == "metric")
        jobs = [(key, render("cluster.j2", criteria=crit, samples=[self._cut(t) for t in s], n_metrics=n_metrics),
                 cluster_schema(len(s), n_metrics), cfg.max_tokens_cluster) for key, s in draws.items()]

        def p(key, obj):
            labels, reasons, repairs = parse_clustering(obj, len(draws[key]))
            return labels, reasons, repairs

        out = self._call(phase, jobs, p)
        for labels, reasons, repairs in out.values():
            self._repair(repairs)
        return out

    def _verify(self, draws: dict[str, list[str]], clustered: dict[str, Any]) -> dict[str, dict[int, bool]]:
        cfg = self.config
        jobs, asked_by = [], {}
        verdicts: dict[str, dict[int, bool]] = {}
        for key, (labels, reasons, _r) in clustered.items():
            members = {}
            for i, c in enumerate(labels, start=1):
                members.setdefault(c, []).append(i)
            asked = [c for c, m in members.items() if len(m) > 1]
            if not asked:
                verdicts[key] = {}
                continue
            asked_by[key] = asked
            cl = [{"cluster": c, "members": members[c], "reasoning": reasons.get(c, "")} for c in asked]
            jobs.append((key, render("verify.j2", samples=[self._cut(t) for t in draws[key]], clusters=cl),
                         verify_schema(len(asked)), cfg.max_tokens_verify))
        res = self._call("verify", jobs, lambda key, obj: parse_verification(obj, asked_by[key]))
        verdicts.update(res)
        return verdicts

    def _draws(self, texts: list[str], groups: list[str] | None, within_group: bool, rng) -> dict[str, tuple[str | None, list[int]]]:
        K, N = self.config.K, self.config.N
        draws: dict[str, tuple[str | None, list[int]]] = {}
        if within_group and groups is not None:
            by: dict[str, list[int]] = {}
            for i, g in enumerate(groups):
                by.setdefault(str(g), []).append(i)
            small = sorted(g for g, ix in by.items() if len(ix) < K)
            if small:
                self._warn(f"groups with fewer than K={K} texts are skipped: {', '.join(small[:10])}")
            for g in sorted(by):
                if len(by[g]) < K:
                    continue
                for r in range(N):
                    draws[f"{g}\x00{r}"] = (g, list(rng.choice(by[g], size=K, replace=False)))
        else:
            if len(texts) < K:
                raise ClusterAgentError(f"need at least K={K} texts, got {len(texts)}")
            for r in range(N):
                draws[str(r)] = (None, list(rng.choice(len(texts), size=K, replace=False)))
        return draws

    def _warn(self, msg: str) -> None:
        """Kept with the result, and logged: a score that comes with a caveat says so where it is made."""
        self._warnings.append(msg)
        log.warning("cluster-agent: %s", msg)

    def score(self, texts: Sequence[str], groups: Sequence[str] | None = None, criteria: Criteria | None = None,
              within_group: bool = False, keep_runs: bool = True) -> ClusterAgentResult:
        cfg = self.config
        texts = [str(t) for t in texts]
        self._warnings: list[str] = []
        self.cost, self.repairs, self.failures = {}, {}, {}
        rng = np.random.default_rng(cfg.seed)
        weak = is_weak_judge(self.backend)
        if weak:
            self._warn(WEAK_WARNING + " (the embedded 135M model cannot cluster; use a capable model "
                       "behind an OpenAI-compatible server)")
        if criteria is None:
            criteria = self.generate_criteria(texts)
        draws = self._draws(texts, list(groups) if groups is not None else None, within_group, rng)
        sample_texts = {k: [texts[i] for i in ix] for k, (_g, ix) in draws.items()}
        clustered = self._cluster(sample_texts, criteria)
        verdicts = self._verify(sample_texts, clustered) if cfg.verify else {k: {} for k in clustered}
        counts: list[int] = []
        counts_by: dict[str, list[int]] = {}
        runs = []
        invalid = 0
        for key, (g, ix) in draws.items():
            if key not in clustered:
                runs.append({"key": key, "group": g, "status": "failed_clustering"})
                continue
            if key not in verdicts:
                runs.append({"key": key, "group": g, "status": "failed_verification"})
                continue
            labels = clustered[key][0]
            invalid += sum(1 for v in verdicts[key].values() if not v)
            final = split_invalid(labels, verdicts[key])
            c = max(final)
            counts.append(c)
            if g is not None:
                counts_by.setdefault(g, []).append(c)
            runs.append({"key": key, "group": g, "status": "ok", "indices": [int(i) for i in ix],
                         "labels": labels, "final_labels": final, "clusters": c})
        n_failed = len(draws) - len(counts)
        if n_failed:
            self._warn(f"{n_failed} of {len(draws)} runs failed validation after retries and are not scored")
        score, se = aggregate(counts, cfg.K)
        per_group, per_group_se = {}, {}
        for g, cs in counts_by.items():
            s, e = aggregate(cs, cfg.K)
            per_group[g] = s
            if e is not None:
                per_group_se[g] = e
        sane = self._sanity(texts, criteria, rng) if cfg.sanity_probes else None
        signal = not weak and sane is not False
        if sane is None and cfg.sanity_probes:
            self._warn("the sanity probe got no valid answer: judge quality unchecked")
        if sane is False and not weak:
            self._warn(WEAK_WARNING + " (sanity check failed: identical samples were split into many clusters)")
        cost = {k: asdict(v) for k, v in self.cost.items()}
        cost["total"] = {f: sum(v[f] for v in cost.values()) for f in ("calls", "prompt_tokens", "completion_tokens", "seconds")}
        return ClusterAgentResult(
            score=score, stderr=se, n_runs=len(draws), n_scored=len(counts), n_failed=n_failed, K=cfg.K,
            cluster_counts=counts, per_group=per_group, per_group_stderr=per_group_se, cost=cost,
            repairs=dict(self.repairs), failures=dict(self.failures), invalid_clusters=invalid,
            signal=signal, warnings=list(self._warnings), judge=self.judge, sanity_passed=sane,
            criteria=asdict(criteria),
            runs=runs if keep_runs else [])

    def _sanity(self, texts: list[str], criteria: Criteria, rng) -> bool | None:
        """K copies of one text should form one cluster; a judge answering > K/2 clusters fails.
        None when no probe could be parsed (counted in failures)."""
        K = self.config.K
        probes = {f"sanity{i}": [texts[int(rng.integers(len(texts)))]] * K for i in range(self.config.sanity_probes)}
        res = self._cluster(probes, criteria, phase="sanity")
        if not res:
            return None
        mean_c = float(np.mean([max(v[0]) for v in res.values()]))
        return mean_c <= max(2.0, K / 2)
