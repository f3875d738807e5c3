"""What the scheduler says when a record cannot go on: the reason it ends a record left with
nothing in flight (the liveness guard; it should never fire), and the one line a silent stall
(no event for `stall_timeout` seconds) raises, naming a waiting record and stage.
"""
from __future__ import annotations

import time
from typing import Iterable

from generator.core.errors import SynthgenError
from generator.engine.pipeline.dag import Pipeline
from generator.engine.pipeline.state import Pending, Rec


class StallError(SynthgenError):
    """No answer and no check result for `stall_timeout` seconds while records wait on them."""


def stuck_reason(p: Pipeline, rec: Rec) -> tuple[str, str]:
    """(the stage to blame, the reason) for ending `rec`, which has nothing in flight and is not final."""
    unstarted = [n for n in p.nodes if n not in rec.started]
    waits = {n: sorted(p.waits_for(n) - set(rec.outputs)) for n in unstarted}
    detail = "; ".join(f"{n} waits for {', '.join(w) or 'nothing'}" for n, w in waits.items()) or "no stage left"
    return (unstarted[0] if unstarted else p.output,
            f"scheduler: record has nothing in flight and is not finished ({detail})")


def stall_error(stall_timeout: float | None, pending: dict[str, Pending], open_records: Iterable[Rec]) -> StallError:
    """The stall, named: the oldest request in flight, else the first open record's check."""
    now = time.time()
    oldest = min(pending.values(), key=lambda p: p.sent, default=None)
    if oldest is not None:
        return StallError(
            f"no answer for {stall_timeout:g}s: record {oldest.rec.row['id']} waits on stage "
            f"'{oldest.stage}' (model {oldest.model}, sent {now - oldest.sent:.0f}s ago; "
            f"{len(pending)} requests in flight); check the model backend, or raise run.stall_timeout")
    rec = next(iter(open_records))
    stage = next(iter(rec.waiting), "?")
    return StallError(f"no progress for {stall_timeout:g}s: record {rec.row['id']} waits on "
                      f"{rec.waiting.get(stage, 'a check')} in stage '{stage}'; raise run.stall_timeout "
                      f"or fix that check")
