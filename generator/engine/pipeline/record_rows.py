"""The rows a record hands out: one per rejected attempt of a pipeline, then its final rows (a
stage with `n` samples expanded), or for a single-stage run only its last attempt's row, each
with the record's contamination when decontamination is on. They are kept until the record ends
and then given to `on_rows` together, with the plan row.
"""
from __future__ import annotations

from typing import Callable

from generator.core.redact import scrub_text
from generator.engine.pipeline.dag import Pipeline
from generator.engine.pipeline.decontam import row_value
from generator.engine.pipeline.lineage import attempt_row, single_row
from generator.engine.pipeline.samples import expand
from generator.engine.pipeline.state import Rec


class RecordRows:
    def __init__(self, pipeline: Pipeline, on_rows: Callable[[dict, list[dict]], None], open_records: dict[str, Rec]):
        self.p = pipeline
        self.single = pipeline.single
        self.decon = pipeline.decontam
        self.on_rows = on_rows  # (plan row, every attempt row of the record) once it is final
        self._open = open_records  # the scheduler's open records: a record leaves it as it ends
        self._rows: dict[str, list[dict]] = {}

    def emit(self, rec: Rec, status: str, decided_by: str, reason: str | None, final: bool) -> None:
        rid = rec.row["id"]
        if self.single:
            if not final:
                return  # a single-stage run keeps one row per record: its last attempt
            row = single_row(rec.row, rec.outputs.get(self.p.output), status, reason)
        else:
            row = attempt_row(self.p, rec.row, rec.outputs, rec.attempt, status, decided_by,
                              scrub_text(reason) if reason else reason, final, rec.seed_id)
        if self.decon is not None:
            row["contamination"] = row_value(rec)
        self._rows.setdefault(rid, []).extend(expand(self.p, row, rec.outputs) if final and not self.single else [row])
        if final:
            rec.final = True
            del self._open[rid]
            self.on_rows(rec.row, self._rows.pop(rid))
