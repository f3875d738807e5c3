"""`synthgen` with the fake backend standing in for the offline engine, for CLI subprocess tests that
need a model only for control flow (kill and resume, exit codes): no engine is loaded.

    python tests/fake_synthgen.py run SPEC --out RUN ...

SYNTHGEN_TEST_FAKE_DELAY (seconds, default 0) holds each answer, so a test can kill a run mid-way.
SYNTHGEN_TEST_FAKE_HOLD=K:SECONDS holds the answer after the first K for SECONDS more (or until the
run closes its request feed), so a test can stop a run while it writes nothing.
Answers are the fake backend's defaults: deterministic per prompt and seed, minimal JSON for schemas."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.engine.backends import vllm_offline  # noqa: E402
from generator.testing.fake import FakeBackend  # noqa: E402


class FakeOffline(FakeBackend):
    """Built by make_backend wherever a spec names an offline model; the model keeps its name."""

    def __init__(self, model: str, engine: dict | None = None, **_: object):
        super().__init__(model=model)
        self.delay = float(os.environ.get("SYNTHGEN_TEST_FAKE_DELAY", "0"))
        after, _, seconds = os.environ.get("SYNTHGEN_TEST_FAKE_HOLD", "").partition(":")
        self.hold_after, self.hold_s = (int(after), float(seconds)) if after else (None, 0.0)
        self.answered = 0
        self.feed = None

    def stream(self, feed, on_result=None):
        self.feed = feed
        yield from super().stream(feed, on_result)

    def generate(self, requests, on_result=None):
        for r in requests:
            time.sleep(self.delay)
            if self.answered == self.hold_after:
                end = time.monotonic() + self.hold_s
                while time.monotonic() < end and not (self.feed is not None and self.feed.closed):
                    time.sleep(0.05)
            self.answered += 1
            yield from super().generate([r], on_result)


# make_backend imports the offline backend class from this module when it builds one (vLLM itself is
# imported only by the class), so replacing the class is enough.
vllm_offline.VLLMOfflineBackend = FakeOffline

if __name__ == "__main__":
    from generator.cli.main import main

    main()
