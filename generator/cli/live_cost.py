"""The run progress bar's cost column: what this run has cost so far (every session, read from the
live usage ledger) and what it will cost at this rate once every pending record is done."""
from __future__ import annotations

import time
from pathlib import Path


class LiveCost:
    """Reads the ledger at most every `every` seconds; shown only when a model declares a price."""

    def __init__(self, run_dir: str | Path, session: str, prices: dict[str, dict | None], pending: int,
                 every: float = 2.0):
        from generator.export.usage import sessions_cost

        self.run_dir, self.session, self.prices, self.pending, self.every = run_dir, session, prices, pending, every
        self.enabled = any(prices.values())
        self.before = sessions_cost(run_dir, prices, but=session) if self.enabled else 0.0
        self._at = 0.0
        self._text = ""

    def _cost(self, models: dict[str, dict]) -> float:
        from generator.export.usage import cost_of

        return sum(cost_of(r["prompt_tokens"], r["completion_tokens"], self.prices.get(r["model"])) or 0.0
                   for r in models.values())

    def text(self, done: int) -> str:
        """`cost 0.0123 so far · ≈0.0456 at this rate` (done: records finished by this `synthgen run`)."""
        if not self.enabled or time.time() - self._at < self.every:
            return self._text
        from generator.export.usage import money, session_totals

        self._at = time.time()
        now = self._cost(session_totals(self.run_dir, self.session))
        so_far = self.before + now
        self._text = f"cost {money(so_far)} so far"
        if 0 < done < self.pending:
            self._text += f" · ≈{money(self.before + now * self.pending / done)} at this rate"
        return self._text
