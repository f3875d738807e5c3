"""The mix configuration (docs/mix.md): pydantic models, reading a mix file, and one-line validation
errors at the line the key is written on. Checking that the sources hold data is `generator.mix.preflight`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from generator.config.base import data_path, format_error
from generator.config.mix_parsing import parse_ratio, parse_token_count, ratio_text, template_fields
from generator.core import storage
from generator.core.errors import SpecError
from generator.core.yaml_loader import Located, load_yaml


def _is_model_alias(name: str) -> bool:
    from generator.core.model_aliases import is_alias

    return is_alias(name)


DEFAULT_SHARD_TOKENS = 50_000_000
REAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson", ".jsonl.zst", ".json.zst", ".ndjson.zst")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _location(v: Any) -> Any:
    """A folder that may be an fsspec URL: URLs stay strings (a Path folds `s3://` into `s3:/`)."""
    return v if v is None or isinstance(v, Path) or storage.is_url(v) else storage.local_path(v)


class RealSource(_Strict):
    """Real (human) text: a Parquet / JSONL / JSONL.zst file, or a folder of them."""

    path: Path = Field(description="a .parquet, .jsonl, .json, .jsonl.zst file or a folder of them")
    name: str | None = Field(None, description="source name written into each row; default: the file or folder name")
    text_field: str = Field("text", description="column holding the training text (text layout)")
    text_template: str | None = Field(None, description="build the text from columns, e.g. '{question}\\n{answer}'")
    messages_field: str | None = Field(None, description="column holding a chat (list of {role, content}); "
                                       "default 'messages' in the messages layout")
    user_template: str | None = Field(None, description="messages layout without a chat column: the user turn, "
                                      "e.g. '{question}'")
    assistant_template: str | None = Field(None, description="messages layout: the assistant turn, e.g. '{answer}'")

    @model_validator(mode="after")
    def _check(self) -> "RealSource":
        if (self.user_template is None) != (self.assistant_template is None):
            raise ValueError("user_template and assistant_template go together; set both, or neither")
        for t in (self.text_template, self.user_template, self.assistant_template):
            if t is not None:
                template_fields(t)
        return self

    def display_name(self) -> str:
        if self.name:
            return self.name
        n = self.path.name
        for suf in sorted(REAL_SUFFIXES, key=len, reverse=True):
            if n.endswith(suf):
                return n[: -len(suf)]
        return n


class SyntheticFilters(_Strict):
    rounds: list[int] | None = Field(None, description="keep only these rounds (default: all)")
    templates: list[str] | None = Field(None, description="keep only these templates (default: all)")
    statuses: list[str] = Field(default_factory=lambda: ["ok"], description="keep rows with these statuses")
    include_duplicates: bool = Field(False, description="keep rows whose duplicate_of is set")


class SyntheticSource(_Strict):
    """A synthgen run folder (RUN/generations/part-*.parquet)."""

    run: Path | str = Field(description="the run folder: a local path or an fsspec URL (s3://bucket/runs/NAME)")
    name: str | None = None
    filters: SyntheticFilters = Field(default_factory=SyntheticFilters)

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, v: Any) -> Any:
        return _location(v)

    def display_name(self) -> str:
        return self.name or storage.name_of(self.run)


class MixConfig(_Strict):
    """The `mix:` section of a spec, or a mix YAML file of its own."""

    real: list[RealSource] = Field(default_factory=list)
    synthetic: list[SyntheticSource] = Field(default_factory=list)
    ratio: str | None = Field(None, description="real:synthetic by tokens, e.g. '4:1'")
    ratios: list[str] | None = Field(None, description="several mixes in one pass, each in ratio-R_S/")
    total_tokens: int | None = Field(None, description="token budget per mix; default: the largest one every "
                                     "ratio reaches without repetition")
    tokenizer: str | None = Field(None, description="tokenizer folder, tokenizer.json, or a model alias; "
                                  "default: the embedded model's")
    eos_token: str | None = Field(None, description="document separator counted once per document; "
                                  "default <|endoftext|> when the vocabulary has it, else the tokenizer's eos")
    seed: int = 0
    allow_repetition: bool = False
    layout: Literal["text", "messages"] = "text"
    format: Literal["jsonl", "jsonl.zst", "parquet", "megatron"] = "parquet"
    shard_tokens: int = Field(DEFAULT_SHARD_TOKENS, description="tokens per shard (documents are never split)")
    out: Path | str | None = Field(None, description="the output folder: a local path or an fsspec URL (built "
                                   "locally, then uploaded)")
    overwrite: bool = Field(False, description="replace the files of an earlier mix in `out`")
    cache_dir: Path | None = Field(None, description="where .tokcache files go; default $SYNTHGEN_CACHE/tokcache")
    decontaminate: Path | None = Field(None, description="a decontamination config (docs/decontamination.md): "
                                       "every document is matched against its benchmarks before the mix is drawn")
    contaminated: Literal["refuse", "drop"] = Field("refuse", description="with `decontaminate`: refuse a mix "
                                                    "whose sources repeat a benchmark item, or drop those documents")

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, v: Any) -> Any:
        return _location(v)

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio(cls, v: Any) -> Any:
        return None if v is None else ratio_text(v)

    @field_validator("ratios", mode="before")
    @classmethod
    def _ratios(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, (str, int)):
            v = [v]
        return [ratio_text(x) for x in v]

    @field_validator("total_tokens", "shard_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        return None if v is None else parse_token_count(v)

    @model_validator(mode="after")
    def _check(self) -> "MixConfig":
        if self.ratio is not None and self.ratios is not None:
            raise ValueError("set ratio or ratios, not both; remove one")
        if self.ratio is None and not self.ratios:
            raise ValueError("set ratio (e.g. \"4:1\") or ratios (e.g. [\"1:0\", \"4:1\", \"1:1\"])")
        rs = self.ratio_list()
        if len(set(rs)) != len(rs):
            raise ValueError(f"ratios repeat: {rs}; list each ratio once")
        if self.total_tokens is not None and self.total_tokens <= 0:
            raise ValueError("total_tokens must be positive; give a budget such as 2M, or leave it out")
        if self.shard_tokens <= 0:
            raise ValueError("shard_tokens must be positive; give e.g. 50M")
        if self.layout == "messages" and self.format == "megatron":
            raise ValueError("format megatron holds token ids for pre-training; use layout: text, "
                             "or format jsonl/jsonl.zst/parquet for messages")
        if any(parse_ratio(r)[0] > 0 for r in rs) and not self.real:
            raise ValueError("the ratios need real tokens but no real sources are listed; add a real: source "
                             "(- path: data/web) or use a ratio 0:N")
        if any(parse_ratio(r)[1] > 0 for r in rs) and not self.synthetic:
            raise ValueError("the ratios need synthetic tokens but no synthetic sources are listed; add a "
                             "synthetic: source (- run: runs/NAME) or use a ratio N:0")
        names = [s.display_name() for s in self.real] + [s.display_name() for s in self.synthetic]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names repeat ({', '.join(dup)}); give each source a distinct name")
        return self

    def ratio_list(self) -> list[str]:
        return [self.ratio] if self.ratio is not None else list(self.ratios or [])

    def resolved(self, base_dir: str | Path) -> "MixConfig":
        """A copy with relative paths made absolute against `base_dir` (the config file's folder)."""
        base = Path(base_dir)

        def fix(p: Path | str | None) -> Path | str | None:
            if p is None or storage.is_url(p):
                return p
            return (p if p.expanduser().is_absolute() else base / p).expanduser()

        data = self.model_copy(deep=True)
        for s in data.real:
            s.path = fix(s.path)
        for s in data.synthetic:
            s.run = fix(s.run)
        data.out = fix(data.out)
        data.cache_dir = fix(data.cache_dir)
        if data.tokenizer and not _is_model_alias(data.tokenizer) \
                and not Path(data.tokenizer).expanduser().is_absolute():
            cand = base / data.tokenizer
            if cand.exists():
                data.tokenizer = str(cand)
        return data


MIX_KEYS_HINT = "docs/mix.md lists the keys"


def _validation_error(exc: ValidationError, data: Any, located: Located | None = None,
                      prefix: tuple = ()) -> SpecError:
    """The first error, at the key as the user wrote it (with its line when the YAML is known)."""
    errors = exc.errors()
    err = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    path = prefix + data_path(data, err)
    msg = format_error(err, path, MIX_KEYS_HINT)
    if err.get("type") not in ("extra_forbidden", "missing") and not path:
        msg = f"{'.'.join(map(str, prefix)) or 'mix'}: {msg}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if located is not None:
        return located.error(path, msg + more)
    return SpecError(msg + more)


def mix_config_from_dict(data: dict, base_dir: str | Path | None = None, located: Located | None = None,
                         prefix: tuple = ()) -> MixConfig:
    """Validate a `mix:` mapping; SpecError (one line) on a bad value."""
    if not isinstance(data, dict):
        msg = "mix: must be a mapping (real:, synthetic:, ratio:, ...); see docs/mix.md"
        raise located.error(prefix, msg) if located is not None else SpecError(msg)
    try:
        cfg = MixConfig.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, data, located, prefix) from None
    return cfg.resolved(base_dir) if base_dir is not None else cfg


MIX_KEYS = {"real", "synthetic", "ratio", "ratios"}


def is_mix_file(data: Any) -> bool:
    """A bare mix mapping (real:, synthetic:, ratio:) rather than a spec."""
    return isinstance(data, dict) and bool(MIX_KEYS & set(data)) and "topics" not in data


def load_mix_file(path: str | Path) -> tuple[MixConfig, Located, tuple]:
    """Read a mix YAML file, a bare mix mapping or a spec with a `mix:` section: (config with paths
    resolved against the file's folder, the parsed YAML for positions, the mix's path in it)."""
    path = Path(path)
    located = load_yaml(path)
    data, prefix = located.data, ()
    if not isinstance(data, dict):
        raise SpecError("a mix file is a mapping (real:, synthetic:, ratio:, ...); see docs/mix.md",
                        file=path, line=1, col=1)
    if not is_mix_file(data):
        if "mix" not in data:
            raise SpecError("no mix: section here (and no real:, synthetic:, ratio: keys); add them (see "
                            "docs/mix.md)", file=path, line=1, col=1)
        data, prefix = data["mix"], ("mix",)
    cfg = mix_config_from_dict(data, path.parent, located, prefix)
    return cfg, located, prefix


def load_mix_config(path: str | Path) -> MixConfig:
    """Read a mix YAML file: either a bare mix mapping or a spec with a `mix:` section.

    Relative paths inside resolve against the file's folder."""
    return load_mix_file(path)[0]
