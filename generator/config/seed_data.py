"""Seed data as a topics source: the user's own rows (documents, problems, conversations) as cells,
or procedural problems drawn from a reasoning-gym task."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from generator.config.base import Strict


class ReasoningGymTask(Strict):
    task: str = Field(description="A reasoning-gym task name (e.g. basic_arithmetic, chain_sum, leg_counting).")
    size: int = Field(ge=1, le=1_000_000, description="Problems generated (rows of the source).")
    seed: int | None = Field(None, description="The task's seed (default: the spec's): the same seed and "
                             "config give the same problems.")
    config: dict[str, Any] = Field(default_factory=dict, description="The task's own settings (its config "
                                   "class's fields, e.g. min_terms, max_terms).")


class ReasoningGymSeeds(Strict):
    reasoning_gym: ReasoningGymTask = Field(description="Problems of a reasoning-gym task as seed rows: "
                                            "`question`, `answer`, `metadata` (the `reasoning` extra).")


class SeedTopics(Strict):
    seeds: str | ReasoningGymSeeds = Field(
        description="A Parquet, JSONL or CSV file, a folder of them, or a `datasets` save_to_disk folder "
        "(relative paths resolve against the spec's folder); or {reasoning_gym: {task, size, seed, config}}.")
    sample: int | None = Field(None, ge=1, description="Rows drawn (deterministically from the spec seed); "
                               "default: every row once.")
    replace: bool = Field(False, description="Draw with replacement (a row may be drawn again).")
    stratify: str | None = Field(None, description="Draw the same number of rows from each value of this "
                                 "column (as far as each has rows); the value becomes the cell's topic.")
    id_column: str | None = Field(None, description="Column holding each row's id (default: its row number).")
    columns: list[str] | None = Field(None, description="Columns offered to templates (default: all).")
    weight: float = Field(1.0, gt=0)
    license: str | None = Field(None, description="The seed data's licence id (e.g. cc-by-4.0), for the "
                                "dataset card; default: what a LICENSE file or README front matter beside "
                                "the data states.")

    @property
    def label(self) -> str:
        """How the source is named in messages and the manifest."""
        if isinstance(self.seeds, str):
            return self.seeds
        g = self.seeds.reasoning_gym
        return f"reasoning_gym:{g.task}"
