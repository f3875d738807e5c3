"""The allocator: how many generations each topic cell gets in the next round. Pure and deterministic.

Inputs are plain data: the active cells (id, weight), the history of finished rounds (each round's
allocation and the per-cell yields of `generator.feedback.yields`), the round's slice of the budget and the
seed. Outputs are the counts and a list of decisions `{round, cell, action, amount, reason}`.

Rules (docs/feedback.md explains why):

- round 1, and every round under `rule: uniform`: the cells' weights, by exact apportionment (largest
  remainder on the cumulative total, so the counts sum to the slice and no cell is always rounded down);
- later rounds (`ucb`, `thompson`): each cell's yield is a discounted mean of its per-generation yields
  split into P(usable) x novelty of a usable text, each shrunk toward its pooled value
  (`prior_weight` pseudo-generations, by default estimated from how much the cells differ beyond
  sampling noise: empirical Bayes, see `Allocator.expected_yield`). Units of the slice are handed out
  one at a time to the best index, each unit adding a virtual generation to its cell (so a batch spreads
  like sequential pulls). UCB index = mean + exploration * sigma * sqrt(2 ln T / n); Thompson draws
  mean + exploration * sigma / sqrt(n) * z from a generator seeded by (seed, round);
- value (`value: per_token`): the index is multiplied by pooled tokens per record / the cell's
  (discounted, shrunk by one pseudo-record; every attempt's tokens, rejected ones and other stages
  included: the round files' `costs`), so it ranks yield per token, not per generation;
- exploration floor: every active unsaturated cell gets `min_per_cell` first (best index first when the
  slice is short); a cell that got nothing for `reexplore_after` rounds in a row is re-explored;
- saturation: a cell whose within-cell Vendi did not rise (by more than `saturation_tol`) over its
  latest round with generations is capped: it gets nothing until it is re-explored; `max_per_cell` is a
  hard cap on a cell's total;
- template mix (`adapt_templates`): from round 2 on (not under `uniform`), the next round's template
  weights are the spec weights x each template's expected yield per generation spent (usable rate x
  novelty over all rounds, shrunk by `template_prior` pseudo-generations; per token under
  `value: per_token`) ** `template_power`, with no
  share below `template_floor` x its spec share (`Allocator.template_weights`). The per-generation usable rate differs far more between
  templates (one layout is truncated much more often) than between topic cells;
- stall: when the tracked global score rose by less than `rounds.min_gain` (or every cell is saturated or
  capped), grow the pool: `grow_by` more topic cells from tree sources with a `sample:` (stable: a larger
  sample keeps the earlier cells) and `grow_personas_by` more personas. With nothing left to grow the
  decision says `synthgen topics expand` is needed, and a stalled loop stops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from generator.config.spec import AllocatorConfig, RoundsConfig
from generator.core.apportion import apportion
from generator.feedback.shrinkage import floored_shares, shrunk_yield, token_factors


def decision(round: int, cell: str | None, action: str, amount: int | float | None, reason: str) -> dict:
    return {"round": round, "cell": cell, "action": action, "amount": amount, "reason": reason}


def round_slices(budget: int, count: int, first_share: float) -> list[int]:
    """Generations per round: round 1 gets `first_share` of the budget, the rest split evenly."""
    if count <= 1:
        return [budget]
    first = min(budget, max(1, int(round(budget * first_share))))
    return [first] + apportion(budget - first, [1.0] * (count - 1))


def round_share(x: float) -> float:
    return float(f"{x:.6g}")


@dataclass
class CellView:
    """What the history says about one cell."""

    id: str
    weight: float
    total: int = 0            # generations so far
    wsum: float = 0.0         # discounted yield sum (= novelty sum of usable rows)
    wn: float = 0.0           # discounted generation count
    wgood: float = 0.0        # discounted count of usable, non-duplicate generations
    wsq: float = 0.0          # discounted sum of squared yields
    wrec: float = 0.0         # discounted records with a recorded cost
    wtok: float = 0.0         # discounted tokens they spent (every attempt and stage)
    starved: int = 0          # rounds in a row (since it joined) with no allocation
    saturated: bool = False
    sat_reason: str = ""


@dataclass
class Allocation:
    """The allocator's answer for one round."""

    round: int
    counts: dict[str, int] = field(default_factory=dict)
    decisions: list[dict] = field(default_factory=list)
    stop: bool = False
    grow_topics: int = 0
    grow_personas: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "counts": self.counts, "decisions": self.decisions, "stop": self.stop,
                "grow_topics": self.grow_topics, "grow_personas": self.grow_personas}


class Allocator:
    def __init__(self, rounds: RoundsConfig, seed: int = 0):
        self.rounds = rounds
        self.cfg: AllocatorConfig = rounds.allocator
        self.seed = seed

    # ------------------------------------------------------------ history
    def views(self, cells: Sequence[tuple[str, float]], history: Sequence[dict], round: int) -> dict[str, CellView]:
        cfg = self.cfg
        out = {c: CellView(c, w) for c, w in cells}
        for h in history:
            r = int(h["round"])
            alloc = h.get("allocation", {})
            ycells = h.get("yields", {}).get("cells", {})
            ccells = (h.get("costs") or {}).get("cells", {})
            disc = cfg.discount ** (round - 1 - r)
            for c, v in out.items():
                cost = ccells.get(c)
                if cost and cost.get("records"):
                    v.wrec += disc * cost["records"]
                    v.wtok += disc * cost["tokens"]
                y = ycells.get(c)
                if y is not None:
                    v.total = int(y.get("total", v.total))
                    if y.get("n"):
                        v.wsum += disc * y["yield_sum"]
                        v.wsq += disc * y.get("yield_sq", 0.0)
                        v.wn += disc * y["n"]
                        v.wgood += disc * max(0, y.get("ok", y["n"]) - y.get("near_dup", 0))
                        before, after = y.get("within_vendi_before"), y.get("within_vendi")
                        if before is not None and after is not None and y.get("total_ok", 0) - y.get("ok", 0) >= 2:
                            rose = after > before + cfg.saturation_tol + 1e-6 * max(1.0, before)
                            v.saturated = not rose
                            v.sat_reason = "" if rose else (
                                f"within-cell Vendi {before:.3f} -> {after:.3f} from G={y['total'] - y['n']} to "
                                f"G={y['total']}, not above +{cfg.saturation_tol:g}")
                in_pool = c in (h.get("active") or alloc)
                if alloc.get(c, 0) > 0:
                    v.starved = 0
                elif in_pool:
                    v.starved += 1
        return out

    def pooled(self, history: Sequence[dict]) -> tuple[float, float]:
        """Pooled mean and standard deviation of per-generation yield over all rounds."""
        s = sq = n = 0.0
        for h in history:
            for y in h.get("yields", {}).get("cells", {}).values():
                s += y.get("yield_sum", 0.0)
                sq += y.get("yield_sq", 0.0)
                n += y.get("n", 0)
        if n == 0:
            return 0.0, 1.0
        mu = s / n
        var = max(sq / n - mu * mu, 0.0)
        return mu, max(math.sqrt(var), 1e-3)

    def expected_yield(self, views: dict[str, "CellView"]) -> tuple[dict[str, float], str]:
        """Each cell's expected yield per generation = P(usable) x novelty of a usable generation.

        The two factors are estimated apart because their noise differs: whether a generation is
        usable (not flagged, not a near duplicate) is a coin flip per generation (a small model that is
        truncated 70% of the time makes the raw yield mostly that noise), while the novelty of usable
        texts varies less. Each factor is shrunk toward its pooled value by k pseudo-generations; `prior_weight`
        fixes k, unset it is estimated each round (empirical Bayes, method of moments): k = noise
        variance / between-cell variance, where the between-cell variance is the variance of the cell
        estimates minus what their sampling noise alone explains. Without between-cell signal (k large)
        every cell gets the pooled value and the allocation spreads like the uniform rule instead of
        chasing one lucky round."""
        return shrunk_yield({c: (v.wn, v.wgood, v.wsum, v.wsq) for c, v in views.items()}, self.cfg.prior_weight)

    def value_factors(self, views: dict[str, "CellView"]) -> tuple[dict[str, float], str]:
        """What an expected yield per generation is multiplied by: 1 under `value: per_generation`;
        pooled tokens per record / the cell's under `per_token` (`shrinkage.token_factors`)."""
        if self.cfg.value != "per_token":
            return {c: 1.0 for c in views}, ""
        return token_factors({c: (v.wrec, v.wtok) for c, v in views.items()})

    def template_weights(self, round: int, history: Sequence[dict], templates: Sequence[tuple[str, float]]
                         ) -> tuple[dict[str, float] | None, list[dict]]:
        """The template mix for round `round`: None (the spec's weights) in round 1, under the uniform
        rule and with `adapt_templates: false`; otherwise {name: share}.

        Per template, the usable rate and novelty of all its generations so far (every generation
        spent counts: a truncated or duplicate one yields zero; not discounted) give the expected yield
        per generation, shrunk toward the pooled values by `template_prior` pseudo-generations (unset:
        empirical Bayes, as for the cells; `shrunk_yield`). The new weight is the spec
        weight x expected yield ** `template_power`, normalised, and no share falls below
        `template_floor` x its spec share. Deterministic: a function of the round files only."""
        cfg = self.cfg
        if round == 1 or not history or cfg.rule == "uniform" or not cfg.adapt_templates or len(templates) < 2:
            return None, []
        stats: dict[str, list[float]] = {t: [0.0, 0.0, 0.0, 0.0] for t, _ in templates}
        spend: dict[str, tuple[float, float]] = {t: (0.0, 0.0) for t, _ in templates}
        for h in history:
            for t, c in ((h.get("costs") or {}).get("by", {}).get("template", {})).items():
                if t in spend and c.get("records"):
                    spend[t] = (spend[t][0] + c["records"], spend[t][1] + c["tokens"])
            disc = 1.0  # not discounted: the usable rate is the template's and the model's, not the round's
            for t, y in h.get("yields", {}).get("by", {}).get("template", {}).items():
                if t not in stats or not y.get("n"):
                    continue
                st = stats[t]
                st[0] += disc * y["n"]
                st[1] += disc * max(0, y.get("ok", y["n"]) - y.get("near_dup", 0))
                st[2] += disc * y["yield_sum"]
                st[3] += disc * y.get("yield_sq", 0.0)
        if not any(st[0] for st in stats.values()):
            return None, []
        mean, info = shrunk_yield({t: tuple(st) for t, st in stats.items()}, cfg.template_prior)
        per, how = ("per generation", "")
        if cfg.value == "per_token":
            factor, tinfo = token_factors(spend)
            mean = {t: mean[t] * factor[t] for t in mean}
            per, how = "per pooled record's tokens", f"; {tinfo}"
        spec_w = {t: float(w) for t, w in templates}
        raw = {t: spec_w[t] * max(mean[t], 1e-9) ** cfg.template_power for t in spec_w}
        shares = floored_shares(raw, spec_w, cfg.template_floor)
        tot = sum(spec_w.values())
        out = []
        for t, _ in templates:
            n, good = stats[t][0], stats[t][1]
            out.append(decision(round, None, "template_weight", round_share(shares[t]),
                                f"template {t}: share {shares[t]:.3f} (spec {spec_w[t] / tot:.3f}); expected "
                                f"yield {mean[t]:.3f} {per} ({good:g} usable of {n:g} generations"
                                + (f", {spend[t][1] / spend[t][0]:.0f} tokens each" if spend[t][0] else "")
                                + f"); {info}{how}; floor {cfg.template_floor:g} x spec share"))
        return shares, out

    # ------------------------------------------------------------ stop / grow
    def before_round(self, round: int, history: Sequence[dict], cells: Sequence[tuple[str, float]],
                     growable_topics: int, growable_personas: int) -> Allocation:
        """Stop or grow the pool before allocating round `round` (>= 2)."""
        alloc = Allocation(round)
        if not history:
            return alloc
        last = history[-1]
        tracked, gain = last.get("tracked"), last.get("gain")
        rc = self.rounds
        if rc.target is not None and tracked is not None and tracked >= rc.target:
            alloc.stop = True
            alloc.decisions.append(decision(round, None, "stop", None,
                                           f"target reached: {rc.score} {tracked:.4f} >= {rc.target:g}"))
            return alloc
        if self.cfg.rule == "uniform":
            if rc.min_gain is not None and gain is not None and gain < rc.min_gain:
                alloc.stop = True
                alloc.decisions.append(decision(round, None, "stop", None, f"stall: {rc.score} gained {gain:.4f} < "
                                               f"min_gain {rc.min_gain:g} (uniform rule: no pool growth)"))
            return alloc
        stalled = rc.min_gain is not None and gain is not None and gain < rc.min_gain
        views = self.views(cells, history, round)
        cap = self.cfg.max_per_cell
        open_cells = [v for v in views.values()
                      if not (self.cfg.saturation and v.saturated) and (cap is None or v.total < cap)]
        why = None
        if stalled:
            why = f"stall: {rc.score} gained {gain:.4f} < min_gain {rc.min_gain:g}"
        elif not open_cells:
            why = "every active cell is saturated or at max_per_cell"
        if why is None:
            return alloc
        grew = False
        if self.cfg.grow_topics:
            if growable_topics > 0:
                alloc.grow_topics = min(self.cfg.grow_by, growable_topics)
                alloc.decisions.append(decision(round, None, "grow_topics", alloc.grow_topics,
                                               f"{why}: add topic cells (raise the tree sources' `sample`)"))
                grew = True
            else:
                alloc.decisions.append(decision(round, None, "needs_topics_expand", 0,
                                               f"{why}, and every cell of the topic sources is active: "
                                               "`synthgen topics expand` would be needed for new cells"))
        if self.cfg.grow_personas and growable_personas > 0:
            alloc.grow_personas = min(self.cfg.grow_personas_by, growable_personas)
            alloc.decisions.append(decision(round, None, "grow_personas", alloc.grow_personas,
                                           f"{why}: add personas to the pool (raise `personas.sample`)"))
            grew = True
        if stalled and not grew:
            alloc.stop = True
            alloc.decisions.append(decision(round, None, "stop", None, f"{why}, and the pool cannot grow"))
        return alloc

    # ------------------------------------------------------------ allocation
    def allocate(self, round: int, slice_: int, cells: Sequence[tuple[str, float]],
                 history: Sequence[dict]) -> Allocation:
        """Counts for round `round` over `cells` that sum to at most `slice_` (exactly, unless every cell is
        at `max_per_cell`)."""
        cfg = self.cfg
        ids = [c for c, _ in cells]
        views = self.views(cells, history, round)
        cap = cfg.max_per_cell
        room = {c: (slice_ if cap is None else max(0, cap - views[c].total)) for c in ids}
        if round == 1 or not history or cfg.rule == "uniform":
            return self._by_weight(round, slice_, ids, views, room, first=round == 1 or not history)
        return self._by_index(round, slice_, ids, views, room, history)

    def _by_weight(self, round: int, slice_: int, ids: list[str], views: dict[str, CellView],
                   room: dict[str, int], first: bool) -> Allocation:
        """Round 1 and the uniform rule: exact apportionment by topic weight, re-apportioning what caps refuse."""
        cfg = self.cfg
        alloc = Allocation(round)
        counts = {c: 0 for c in ids}
        given = [views[c].total for c in ids] if cfg.rule == "uniform" else None
        left = slice_
        active = [c for c in ids if room[c] > 0]
        while left > 0 and active:  # apportion, re-apportion what caps refuse
            share = apportion(left, [views[c].weight for c in active],
                              [views[c].total + counts[c] for c in active] if given is not None else None)
            moved = 0
            for c, k in zip(active, share):
                k = min(k, room[c] - counts[c])
                counts[c] += k
                moved += k
            left -= moved
            active = [c for c in active if room[c] - counts[c] > 0]
            if moved == 0:
                break
        why = "round 1: by topic weight" if first else "uniform rule: by topic weight"
        for c in ids:
            if counts[c]:
                alloc.decisions.append(decision(round, c, "allocate", counts[c], why))
        if left:
            alloc.decisions.append(decision(round, None, "unspent", left, "every cell is at max_per_cell"))
        alloc.counts = counts
        return alloc

    # Kept whole: the floor, re-exploration and index passes hand out the same units and reasons.
    def _by_index(self, round: int, slice_: int, ids: list[str], views: dict[str, CellView],
                  room: dict[str, int], history: Sequence[dict]) -> Allocation:
        """Later rounds: units handed out one at a time to the best UCB / Thompson index (module docstring)."""
        cfg = self.cfg
        cap = cfg.max_per_cell
        alloc = Allocation(round)
        counts = {c: 0 for c in ids}
        _, sigma = self.pooled(history)
        mean, shrink_info = self.expected_yield(views)
        value, value_info = self.value_factors(views)
        n_eff = {c: views[c].wn + 1.0 for c in ids}  # data (+1): the bonus spreads units over the cells
        reasons: dict[str, list[str]] = {c: [] for c in ids}
        left = slice_

        def give(c: str, k: int, why: str) -> int:
            nonlocal left
            k = max(0, min(k, left, room[c] - counts[c]))
            if k:
                counts[c] += k
                n_eff[c] += k
                left -= k
                reasons[c].append(f"{why} +{k}")
            return k

        for c in ids:
            v = views[c]
            if cap is not None and v.total >= cap:
                alloc.decisions.append(decision(round, c, "cap", 0, f"max_per_cell {cap} reached ({v.total})"))
            elif cfg.saturation and v.saturated and v.starved < cfg.reexplore_after:
                alloc.decisions.append(decision(round, c, "cap", 0, f"saturated: {v.sat_reason}"))
        saturated = {c for c in ids if cfg.saturation and views[c].saturated}
        open_ids = [c for c in ids if room[c] > 0 and c not in saturated]

        # re-explore cells starved for `reexplore_after` rounds (longest starved first)
        for c in sorted(ids, key=lambda c: (-views[c].starved, ids.index(c))):
            if views[c].starved >= cfg.reexplore_after and room[c] > 0:
                give(c, max(1, cfg.min_per_cell), f"re-explore after {views[c].starved} rounds without generations")

        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, round, 0x5EED])
        total_n = sum(n_eff.values())

        def index(c: str) -> float:
            if cfg.rule == "thompson":
                y = mean[c] + cfg.exploration * sigma / math.sqrt(n_eff[c]) * float(rng.standard_normal())
            else:
                y = mean[c] + cfg.exploration * sigma * math.sqrt(2 * math.log(max(total_n, 2.0)) / n_eff[c])
            return y * value[c]  # per_token: yield per pooled record's worth of tokens

        # exploration floor, best index first when the slice is short
        if cfg.min_per_cell:
            for c in sorted(open_ids, key=lambda c: (-index(c), ids.index(c))):
                need = cfg.min_per_cell - counts[c]
                if need > 0:
                    give(c, need, "min_per_cell")

        pool = [c for c in open_ids if room[c] - counts[c] > 0]
        fallback = False
        if not pool and left:
            pool = [c for c in ids if room[c] - counts[c] > 0]
            fallback = bool(pool)
        label = "thompson draw" if cfg.rule == "thompson" else "ucb index"
        while left > 0 and pool:
            scores = [(index(c), -ids.index(c), c) for c in pool]
            _, _, best = max(scores)
            give(best, 1, label)
            total_n += 1
            pool = [c for c in pool if room[c] - counts[c] > 0]
        for c in ids:
            if not counts[c]:
                continue
            merged: dict[str, int] = {}
            for r in reasons[c]:
                what, k = r.rsplit(" +", 1)
                merged[what] = merged.get(what, 0) + int(k)
            why = ", ".join(f"{w} +{k}" for w, k in merged.items())
            v = views[c]
            stat = (f"expected yield {mean[c]:.3f} ({v.wgood:.1f} usable of {v.wn:.1f} discounted gens; "
                    f"{shrink_info}; yield sd {sigma:.3f})")
            if value_info:
                stat += (f"; value per token x{value[c]:.2f} ({v.wtok / v.wrec:.0f} tokens per record, "
                         if v.wrec else "; value per token x1.00 (no cost recorded, ") + f"{value_info})"
            if fallback and c in saturated:
                stat += "; every open cell is saturated or capped, so saturated cells take the rest"
            alloc.decisions.append(decision(round, c, "allocate", counts[c], f"{why}; {stat}"))
        if left:
            alloc.decisions.append(decision(round, None, "unspent", left, "every cell is at max_per_cell"))
        alloc.counts = counts
        return alloc


def grow_samples(sources: Sequence[tuple[int, int]], k: int) -> list[int]:
    """New `sample` sizes for growable sources given as (current, available): `k` more, round robin."""
    cur = [c for c, _ in sources]
    avail = [a for _, a in sources]
    while k > 0 and any(c < a for c, a in zip(cur, avail)):
        for i in range(len(cur)):
            if k and cur[i] < avail[i]:
                cur[i] += 1
                k -= 1
    return cur
