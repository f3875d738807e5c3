"""The `decontaminate:` section: benchmark sets whose items generated data must not repeat, how
texts are compared with them (word n-grams), what is checked and what happens to a hit
(docs/decontamination.md). The same section, alone in a YAML file, configures
`synthgen decontaminate` and `synthgen mix --decontaminate`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from generator.config.base import Strict, data_path, format_error
from generator.config.stages import OnReject
from generator.core.benchmarks import BenchmarkSource
from generator.core.confine import Confinement
from generator.core.errors import SpecError
from generator.core.yaml_loader import Located, load_yaml

CHECKS = ("final", "prompts", "seeds", "reasoning")


class BenchmarkSet(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The benchmark's name in rows and reports.")
    path: str = Field(description="A JSONL, JSON, Parquet or CSV file, a folder of them, or a `datasets` "
                      "save_to_disk folder; relative to the spec's folder, inside the project (or an allowed folder).")
    fields: list[str] = Field(min_length=1, description="Columns whose text is indexed (e.g. question, answer).")
    id_field: str | None = Field(None, description="Column holding each item's id (default: `<file>:<row>`).")


class DecontaminateConfig(Strict):
    benchmarks: list[BenchmarkSet] = Field(min_length=1, description="Benchmark sets to check against.")
    ngram: int = Field(13, ge=5, le=64, description="Words per n-gram (normalised: NFKC, lowercase, punctuation "
                       "removed); one shared n-gram is a hit.")
    check: list[Literal["final", "prompts", "seeds", "reasoning"]] = Field(
        default_factory=lambda: ["final"], min_length=1, description="What is checked: final (the row's answer "
        "text), prompts (every prompt sent), seeds (the seed row's text values), reasoning (a `reasoning` "
        "field, where the row has one).")
    action: Literal["flag", "reject", "regenerate"] = Field(
        "flag", description="flag: keep the row, with its `contamination`; reject: end the record as rejected; "
        "regenerate: re-run a stage (`on_reject`) and check again.")
    on_reject: OnReject | None = Field(None, description="action: regenerate: the stage to re-run and the "
                                       "attempts in all (default: the output stage, 3 attempts).")

    @model_validator(mode="after")
    def _shape(self):
        names = [b.name for b in self.benchmarks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"benchmark '{twice[0]}' is named twice; give each benchmark its own name")
        if len(set(self.check)) != len(self.check):
            raise ValueError("`check` lists an entry twice; list each once")
        if self.on_reject is not None and self.action != "regenerate":
            raise ValueError("`on_reject` goes with `action: regenerate`; set the action or remove `on_reject`")
        return self


def sources(cfg: DecontaminateConfig, base: Path, confine: Confinement | None = None,
            located: Located | None = None, prefix: tuple = ("decontaminate",),
            file: Path | None = None) -> list[BenchmarkSource]:
    """The benchmark sets as files: relative paths against `base`; with `confine`, each must lie in
    the project or an allowed folder (a benchmark is read like a spec's other files)."""
    out = []
    for i, b in enumerate(cfg.benchmarks):
        path = Path(b.path).expanduser()
        path = path if path.is_absolute() else base / path

        def fail(msg: str) -> SpecError:
            if located is not None:
                return located.error((*prefix, "benchmarks", i, "path"), msg)
            return SpecError(msg, file=file)

        if not path.exists():
            raise fail(f"benchmark '{b.name}': {path} not found; fix `path:`")
        if confine is not None and not confine.permits(path):
            try:
                confine.check(path, "benchmark", b.path)
            except SpecError as exc:
                raise fail(str(exc)) from None
        out.append(BenchmarkSource(b.name, path.resolve(), tuple(b.fields), b.id_field))
    return out


def parse_decontaminate(data: Any, located: Located, prefix: tuple = ()) -> DecontaminateConfig:
    """Validate a `decontaminate:` mapping, errors at `file:line:col` of the key as written."""
    try:
        return DecontaminateConfig.model_validate(data)
    except ValidationError as exc:
        err = next((e for e in exc.errors() if e.get("type") == "extra_forbidden"), exc.errors()[0])
        path = data_path(data, err)
        raise located.error((*prefix, *path), format_error(err, path, "docs/decontamination.md lists the keys")) \
            from None


def load_decontaminate(path: str | Path) -> tuple[DecontaminateConfig, list[BenchmarkSource]]:
    """A YAML file holding the section (at its top level or under `decontaminate:`, so a spec works
    too); its benchmark paths resolve against the file's folder and stay inside its project."""
    from generator.core.confine import project_root

    doc = load_yaml(Path(path))
    data, prefix = doc.data, ()
    if isinstance(data, dict) and "decontaminate" in data:
        data, prefix = data["decontaminate"], ("decontaminate",)
    if not isinstance(data, dict):
        raise doc.error(prefix, "a decontamination config is a mapping with `benchmarks:` (and `ngram:`, "
                        "`check:`, `action:`); see docs/decontamination.md")
    cfg = parse_decontaminate(data, doc, prefix)
    root = project_root(doc.file)
    confine = Confinement(project=root)
    return cfg, sources(cfg, doc.file.parent, confine, doc, prefix)
