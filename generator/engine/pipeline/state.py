"""A record's state while the scheduler runs it, and one request in flight (shared by the
scheduler core and the dialogue driver)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generator.core.backend import Request, Result
from generator.engine.pipeline.context import StageOut
from generator.engine.requests import Answer


@dataclass
class Rec:
    row: dict
    seed_id: str | None
    attempt: int = 1
    outputs: dict[str, StageOut] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    samples: dict[str, dict[int, tuple[Request, Result, Answer]]] = field(default_factory=dict)
    epoch: dict[str, int] = field(default_factory=dict)  # stage -> how often a rejection reset it
    busy: int = 0          # requests in flight + cached answers queued + checks running
    parked: int = 0        # of them, requests the budget gate did not send (the record waits for a resume)
    waiting: dict[str, str] = field(default_factory=dict)  # stage -> what it waits on (for a stall)
    final: bool = False
    # conversation/agent stage -> its run (a dialogue_driver.Dialog; typed Any so this module
    # needs nothing from the driver)
    dialogs: dict[str, Any] = field(default_factory=dict)
    contamination: list[dict] | None = None  # this attempt's decontamination hits
    decon_attempt: int = 0                   # the attempt whose texts were last checked


@dataclass
class Pending:
    rec: Rec
    stage: str
    epoch: int
    sample: int
    tries: int
    model: str
    request: Request
    extra: dict = field(default_factory=dict)
    sent: float = 0.0
    key: str = ""          # the request's cache key (computed once)
    reserve: Any = None    # what the budget gate counted it as while in flight (engine.budget.Reserve)
