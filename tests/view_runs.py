"""Run folders for the viewer's tests and benchmark, written by the real engine with the fake backend
(the same plan and generations Parquet a model run writes), so no model is loaded."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator import run as run_spec
from generator.config.spec import load_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDS = ("apple river stone cloud seven music garden bridge number engine planet silver window forest ocean "
         "candle mirror rabbit violin tower harbor lantern meadow copper falcon pepper quartz saddle thunder "
         "velvet walnut yellow zebra anchor basket cactus dragon").split()
SCRIPT = "<script>window.__injected = 1</script><img src=x onerror=\"window.__injected = 2\"><b>bold?</b> & done"
REPEAT = "Circles are round and every circle has a radius and a diameter that is twice the radius."


def responder(variant: str = "a"):
    """Circles repeat one sentence; the first Subtraction prompt carries markup; the rest vary by seed.
    Variant "b" writes different words, so a second run of the same plan differs record by record."""
    def answer(r) -> str:
        p = r.messages[-1]["content"]
        if "Circles" in p:
            return REPEAT
        rng = random.Random(f"{variant}{r.sampling.seed}")
        words = WORDS if variant == "a" else WORDS[:8]
        body = " ".join(rng.choice(words) for _ in range(30))
        if "Subtraction" in p and r.sampling.seed % 3 == 0:
            return f"{SCRIPT} {body}"
        return body
    return answer


def make_run(dst: Path, variant: str = "a", per_topic: int = 6, rounds: str | None = None,
             shard_size: int = 8, price: dict[str, str] | None = None) -> Path:
    """A finished run of tests/fixtures/proj (5 topic cells x `per_topic`, templates qa and card);
    `price`: the model's {input_per_mtok, output_per_mtok}."""
    proj = dst.parent / f"proj-{dst.name}"
    if not proj.exists():
        shutil.copytree(FIXTURES / "proj", proj)
    over = {"generations_per_topic": str(per_topic), "run.shard_size": str(shard_size)}
    if rounds:
        over["rounds"] = rounds
    for k, v in (price or {}).items():
        over[f"models.0.price.{k}"] = v
    spec = load_spec(proj / "spec.yaml", over)
    fake = FakeBackend(responder=responder(variant))
    run_spec(spec, out=dst, executor=LocalExecutor(backend_factory=lambda cfg, **_: fake))
    return dst
