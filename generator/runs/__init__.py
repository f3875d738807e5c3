"""A run is the engine plus its close-out: `run_spec` plans and generates (generator.engine), then
counts usage, writes the dataset card and scores the run (export, scoring). The rounds loop
(generator.feedback) closes its runs the same way. Model calls made outside a spec's run (library
growth, a cluster-agent judge) go through `request_session`: the same request path, in a run-like
folder."""
from generator.runs.closeout import close_run, run_spec, run_usage, score_run
from generator.runs.request_session import request_session

__all__ = ["close_run", "request_session", "run_spec", "run_usage", "score_run"]
