"""What a cluster-agent run is told: its settings, and the criteria it clusters by (saved and frozen
so that scores of different datasets are comparable)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ClusterAgentConfig:
    K: int = 10              # samples per clustering call (paper: 10). Scores depend on K.
    N: int = 50              # clustering runs (paper: 5000; small default for a CPU)
    J: int = 5               # samples per criteria-generation call (paper: 5)
    M: int = 5               # criteria-generation rounds (paper: 100)
    k_metadata: int = 4      # metadata kept by the summary prompt (paper example: 4)
    k_metrics: int = 4       # metrics kept by the summary prompt
    verify: bool = True
    retries: int = 2         # extra attempts per call after a bad answer
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens_criteria: int = 1024
    max_tokens_cluster: int = 1024
    max_tokens_verify: int = 512
    max_chars: int = 1500    # each sample is cut to this many characters in prompts
    sanity_probes: int = 1   # clustering calls on K copies of one text (should give 1 cluster)
    seed: int = 0


@dataclass
class Criteria:
    metadata: list[dict[str, str]]
    metrics: list[dict[str, str]]
    criteria: list[dict[str, str]]  # [{"name", "kind", "criterion"}], metadata then metrics
    source: dict[str, Any] = field(default_factory=dict)

    def ordered(self) -> list[dict[str, str]]:
        """Metadata and metric criteria interleaved (metadata_1, metric_1, metadata_2, ...)."""
        md = [c for c in self.criteria if c.get("kind") == "metadata"]
        mt = [c for c in self.criteria if c.get("kind") == "metric"]
        out = []
        for i in range(max(len(md), len(mt))):
            out += md[i:i + 1] + mt[i:i + 1]
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"version": 1, **asdict(self)}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Criteria":
        d = json.loads(Path(path).read_text())
        d.pop("version", None)
        return cls(**d)

    @classmethod
    def from_names(cls, metadata: dict[str, str], metrics: dict[str, str]) -> "Criteria":
        """Hand-written criteria (the paper's ablation baseline)."""
        md = [{"name": k, "definition": v} for k, v in metadata.items()]
        mt = [{"name": k, "definition": v} for k, v in metrics.items()]
        crit = ([{"name": k, "kind": "metadata", "criterion": v} for k, v in metadata.items()]
                + [{"name": k, "kind": "metric", "criterion": v} for k, v in metrics.items()])
        return cls(md, mt, crit, {"hand_written": True})
