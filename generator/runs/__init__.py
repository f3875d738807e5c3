"""A run is the engine plus its close-out: `run_spec` plans and generates (generator.engine), then
counts usage, writes the dataset card and scores the run (export, scoring). The rounds loop
(generator.feedback) closes its runs the same way."""
from generator.runs.closeout import close_run, run_spec, run_usage, score_run

__all__ = ["close_run", "run_spec", "run_usage", "score_run"]
