"""Seed data as a topics source: the user's own rows (documents, problems, conversations) as cells."""
from __future__ import annotations

from pydantic import Field

from generator.config.base import Strict


class SeedTopics(Strict):
    seeds: str = Field(description="A Parquet, JSONL or CSV file, a folder of them, or a `datasets` "
                       "save_to_disk folder; relative paths resolve against the spec's folder.")
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
