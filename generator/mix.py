"""Real:synthetic training mixes with exact token accounting (`synthgen mix`).

The model follows OLMo-core's source mixtures: a mix is a token budget split between sources
by ratios *of tokens*, apportioned with Hamilton's method (largest remainder), filled with whole
documents, and refused loudly when it cannot be met without repeating data (unless repetition is
asked for, in which case the repetition factor is reported).

Pipeline:
  1. load every source (real files, synthetic run folders), keep the rows that pass the filters;
  2. count tokens per document with the training tokenizer (HF `tokenizers`, batch encoding),
     cached per source file in a `.tokcache.parquet` keyed by file hash + tokenizer hash;
  3. per requested ratio: budget -> (real, synthetic) -> sources (by available tokens) ->
     topics (synthetic side, by available tokens), then select documents without splitting them;
  4. shuffle the selection with the seed, cut it into shards of `shard_tokens`, and write
     JSONL, JSONL.zst, Parquet or Megatron `.bin/.idx`, plus `mix_manifest.json`.

Token counting convention: a document's count is the number of ids its text encodes to with
`add_special_tokens=False`, plus exactly one EOS token. In the messages layout the text is the
conversation rendered with the tokenizer's chat template (or a plain `role: content` rendering
when the tokenizer has none). Megatron `.bin` files hold exactly these ids.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import re
import string
import struct
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError, SynthgenError

MANIFEST_NAME = "mix_manifest.json"
MANIFEST_VERSION = 1
TOKCACHE_VERSION = 1
DEFAULT_TOKENIZER = "smollm2-135m"
DEFAULT_SHARD_TOKENS = 50_000_000
ENCODE_BATCH = 10_000
MEGATRON_HEADER = b"MMIDIDX\x00\x00"
MEGATRON_DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
                        np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float64): 6,
                        np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
REAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson", ".jsonl.zst", ".json.zst", ".ndjson.zst")
FORMAT_SUFFIX = {"jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst", "parquet": ".parquet", "megatron": ".bin"}
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class RepetitionWarning(UserWarning):
    """A mix repeats documents (only with allow_repetition: true)."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmbgt]?)$")
_SIZE_MULT = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


def parse_token_count(value: Any) -> int:
    """2000000, '2M', '2_000_000', '1.5B' -> int."""
    if isinstance(value, bool):
        raise ValueError("expected a token count such as 2000000 or '2M'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "").replace(",", "")
        m = _SIZE_RE.match(text)
        if m:
            return int(Fraction(m.group(1)) * _SIZE_MULT[m.group(2)])
        try:
            as_float = float(text)  # 2e6 (YAML 1.1 reads it as a string)
        except ValueError:
            as_float = None
        if as_float is not None and as_float.is_integer():
            return int(as_float)
    raise ValueError(f"{value!r} is not a token count; write e.g. 2000000 or '2M'")


def parse_ratio(value: Any) -> tuple[Fraction, Fraction]:
    """'4:1' -> (4, 1) real:synthetic. Also undoes YAML 1.1's base-60 reading of 4:1 (= 241)."""
    if isinstance(value, bool):
        raise ValueError("a ratio looks like '4:1' (real:synthetic tokens)")
    if isinstance(value, int):
        if value < 60:
            raise ValueError(f"ratio {value} is a number; write real:synthetic in quotes, e.g. \"4:1\"")
        value = f"{value // 60}:{value % 60}"  # YAML 1.1 read an unquoted a:b as a*60+b
    m = _RATIO_RE.match(str(value))
    if not m:
        raise ValueError(f"ratio {value!r} must look like \"4:1\" (real:synthetic tokens)")
    r, s = Fraction(m.group(1)), Fraction(m.group(2))
    if r == 0 and s == 0:
        raise ValueError("ratio 0:0 selects nothing")
    return r, s


def _fmt_num(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else format(float(x), "g")


def ratio_text(value: Any) -> str:
    r, s = parse_ratio(value)
    return f"{_fmt_num(r)}:{_fmt_num(s)}"


def ratio_folder(value: Any) -> str:
    """'4:1' -> 'ratio-4_1'."""
    return "ratio-" + ratio_text(value).replace(":", "_")


def _is_alias(name: str) -> bool:
    try:
        from .models import is_alias
    except ImportError:
        return False
    return is_alias(name)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
            raise ValueError("set both user_template and assistant_template, or neither")
        for t in (self.text_template, self.user_template, self.assistant_template):
            if t is not None:
                _template_fields(t)
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

    run: Path
    name: str | None = None
    filters: SyntheticFilters = Field(default_factory=SyntheticFilters)

    def display_name(self) -> str:
        return self.name or self.run.name


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
    out: Path | None = None
    overwrite: bool = Field(False, description="replace the files of an earlier mix in `out`")
    cache_dir: Path | None = Field(None, description="where .tokcache files go; default $SYNTHGEN_CACHE/tokcache")

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
            raise ValueError("set ratio or ratios, not both")
        if self.ratio is None and not self.ratios:
            raise ValueError("set ratio (e.g. \"4:1\") or ratios (e.g. [\"1:0\", \"4:1\", \"1:1\"])")
        rs = self.ratio_list()
        if len(set(rs)) != len(rs):
            raise ValueError(f"ratios repeat: {rs}")
        if self.total_tokens is not None and self.total_tokens <= 0:
            raise ValueError("total_tokens must be positive")
        if self.shard_tokens <= 0:
            raise ValueError("shard_tokens must be positive")
        if self.layout == "messages" and self.format == "megatron":
            raise ValueError("format megatron holds token ids for pre-training; use layout: text, "
                             "or format jsonl/jsonl.zst/parquet for messages")
        if any(parse_ratio(r)[0] > 0 for r in rs) and not self.real:
            raise ValueError("the ratios need real tokens but no real sources are listed")
        if any(parse_ratio(r)[1] > 0 for r in rs) and not self.synthetic:
            raise ValueError("the ratios need synthetic tokens but no synthetic sources are listed")
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

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.expanduser().is_absolute() else base / p).expanduser()

        data = self.model_copy(deep=True)
        for s in data.real:
            s.path = fix(s.path)
        for s in data.synthetic:
            s.run = fix(s.run)
        data.out = fix(data.out)
        data.cache_dir = fix(data.cache_dir)
        if data.tokenizer and not _is_alias(data.tokenizer) and not Path(data.tokenizer).expanduser().is_absolute():
            cand = base / data.tokenizer
            if cand.exists():
                data.tokenizer = str(cand)
        return data


def _validation_error(exc: ValidationError, located: Any = None, prefix: tuple = ()) -> SynthgenError:
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    msg = err.get("msg", "invalid value")
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    key = ".".join(str(x) for x in (prefix + loc)) or "mix"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if located is not None:
        return located.error(prefix + loc, f"{key}: {msg}{more}")
    return SpecError(f"{key}: {msg}{more}")


def mix_config_from_dict(data: dict, base_dir: str | Path | None = None) -> MixConfig:
    """Validate a `mix:` mapping; SpecError (one line) on a bad value."""
    try:
        cfg = MixConfig.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    return cfg.resolved(base_dir) if base_dir is not None else cfg


def load_mix_config(path: str | Path) -> MixConfig:
    """Read a mix YAML file: either a bare mix mapping or a spec with a `mix:` section.

    Relative paths inside resolve against the file's folder."""
    from .yamlio import load_yaml

    path = Path(path)
    located = load_yaml(path)
    data, prefix = located.data, ()
    if not isinstance(data, dict):
        raise SpecError("a mix file is a mapping (real:, synthetic:, ratio:, ...)", file=path, line=1, col=1)
    if "mix" not in data and not ({"real", "synthetic", "ratio", "ratios"} & set(data)):
        raise SpecError("no mix: section here (and no real:, synthetic:, ratio: keys); see docs/mix.md",
                        file=path, line=1, col=1)
    if "mix" in data and not ({"real", "synthetic", "ratio", "ratios"} & set(data)):
        data, prefix = data["mix"], ("mix",)
        if not isinstance(data, dict):
            raise located.error(prefix, "mix: must be a mapping")
    try:
        cfg = MixConfig.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, located, prefix) from None
    return cfg.resolved(path.parent)


# --------------------------------------------------------------------------------------------
# Tokenizer and counting
# --------------------------------------------------------------------------------------------

@dataclass
class TokenizerInfo:
    tokenizer: Any  # tokenizers.Tokenizer
    path: Path  # the tokenizer.json
    sha256: str
    eos_token: str
    eos_id: int
    vocab_size: int
    chat_template: str | None = None
    special: dict = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        """Megatron's DType.optimal_dtype: uint16 below 65,500 ids, int32 above."""
        return np.dtype(np.uint16) if self.vocab_size < 65500 else np.dtype(np.int32)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_tokenizer(spec: str | Path | None = None, eos_token: str | None = None) -> TokenizerInfo:
    """A tokenizer folder, a tokenizer.json, or a model alias (default: the embedded model)."""
    from tokenizers import Tokenizer

    name = str(spec) if spec is not None else DEFAULT_TOKENIZER
    p = Path(name).expanduser()
    if not p.exists():
        if _is_alias(name):
            from .models import resolve_tokenizer_path

            p = Path(resolve_tokenizer_path(name))
        else:
            raise SynthgenError(f"tokenizer {name!r} not found; give a folder with tokenizer.json, a "
                                f"tokenizer.json file, or a model alias such as {DEFAULT_TOKENIZER}")
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise SynthgenError(f"{p}: no tokenizer.json (only fast tokenizers are supported)")
    tok = Tokenizer.from_file(str(file))
    folder = file.parent
    cfg: dict = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except ValueError:
            cfg = {}

    def tok_str(v: Any) -> str | None:
        return v.get("content") if isinstance(v, dict) else v

    special = {k: tok_str(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if tok_str(cfg.get(k))}
    if eos_token is None:
        for cand in ("<|endoftext|>", special.get("eos_token"), "</s>", "<eos>", "<|end_of_text|>"):
            if cand and tok.token_to_id(cand) is not None:
                eos_token = cand
                break
        else:
            raise SynthgenError(f"{file}: cannot tell the end-of-document token; set eos_token in the mix config")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise SynthgenError(f"eos_token {eos_token!r} is not in the vocabulary of {file}")
    chat = None
    if (folder / "chat_template.jinja").is_file():
        chat = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(cfg.get("chat_template"), str):
        chat = cfg["chat_template"]
    return TokenizerInfo(tokenizer=tok, path=file.resolve(), sha256=_file_sha256(file), eos_token=eos_token,
                         eos_id=eos_id, vocab_size=tok.get_vocab_size(with_added_tokens=True),
                         chat_template=chat, special=special)


def _encode(tok: Any, texts: list[str]) -> list:
    fn = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    return fn(texts, add_special_tokens=False)


def count_tokens(texts: Sequence[str | None], tokenizer: TokenizerInfo | Any, add_eos: bool = True) -> np.ndarray:
    """Tokens per document (int64), +1 EOS each when add_eos; None entries give -1."""
    tok = tokenizer.tokenizer if isinstance(tokenizer, TokenizerInfo) else tokenizer
    out = np.full(len(texts), -1, dtype=np.int64)
    idx = [i for i, t in enumerate(texts) if t is not None]
    for start in range(0, len(idx), ENCODE_BATCH):
        chunk = idx[start:start + ENCODE_BATCH]
        enc = _encode(tok, [texts[i] for i in chunk])
        out[chunk] = [len(e) for e in enc]
    if add_eos:
        out[out >= 0] += 1
    return out


def encode_documents(texts: Sequence[str], tokenizer: TokenizerInfo) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the documents, each followed by EOS, concatenated; plus per-document lengths."""
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    eos = tokenizer.eos_id
    for start in range(0, len(texts), ENCODE_BATCH):
        enc = _encode(tokenizer.tokenizer, list(texts[start:start + ENCODE_BATCH]))
        flat: list[int] = []
        for e in enc:
            ids = e.ids
            flat += ids
            flat.append(eos)
            lengths.append(len(ids) + 1)
        parts.append(np.array(flat, dtype=tokenizer.dtype))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=tokenizer.dtype)
    return ids, np.asarray(lengths, dtype=np.int64)


class ChatRenderer:
    """Renders a conversation the way the trainer will see it: the tokenizer's chat template."""

    def __init__(self, tokenizer: TokenizerInfo):
        self.source = tokenizer.chat_template
        self.special = tokenizer.special
        self._template = None
        if self.source:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise SynthgenError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.source)

    def describe(self) -> str:
        if self._template is None:
            return "plain 'role: content' lines joined by newlines (the tokenizer has no chat template)"
        return f"the tokenizer's chat template (sha256 {_sha(self.source)[:16]}), add_generation_prompt=False"

    def key(self) -> str:
        return _sha(self.source) if self.source else "plain"

    def __call__(self, messages: list[dict]) -> str:
        if self._template is None:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return self._template.render(messages=messages, add_generation_prompt=False, **self.special)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHGEN_CACHE", Path.home() / ".cache" / "synthgen")).expanduser()


def _cached_counts(file: Path, file_sha: str, extract_key: dict, texts: Callable[[], list[str | None]],
                   n_rows: int, tok: TokenizerInfo, cache_dir: Path, stats: dict) -> np.ndarray:
    key = _sha(json.dumps({"v": TOKCACHE_VERSION, "tokenizer": tok.sha256, "eos": tok.eos_id, **extract_key},
                          sort_keys=True))
    path = cache_dir / "tokcache" / f"{file_sha[:24]}-{key[:16]}.tokcache.parquet"
    if path.is_file():
        try:
            t = pq.read_table(path)
            if t.num_rows == n_rows:
                stats["cache_hits"] += 1
                return t.column("n_tokens").to_numpy().astype(np.int64)
        except (OSError, pa.ArrowException):
            pass
    counts = count_tokens(texts(), tok)
    stats["cache_misses"] += 1
    stats["tokens_counted"] += int(counts[counts > 0].sum())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {b"synthgen.tokcache": json.dumps({"file": str(file), "file_sha256": file_sha,
                                                   "tokenizer_sha256": tok.sha256, **extract_key}).encode()}
        table = pa.table({"n_tokens": pa.array(counts, type=pa.int32())}).replace_schema_metadata(meta)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs speed
    return counts


# --------------------------------------------------------------------------------------------
# Loading sources
# --------------------------------------------------------------------------------------------

def _template_fields(template: str) -> list[str]:
    fields = []
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is None:
                continue
            if name == "" or not name.isidentifier():
                raise ValueError(f"template {template!r}: use named fields such as {{question}}")
            if name not in fields:
                fields.append(name)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return fields


def _render_template(template: str, columns: dict[str, list]) -> list[str | None]:
    fields = _template_fields(template)
    if not fields:
        n = len(next(iter(columns.values()))) if columns else 0
        return [template] * n
    rows = zip(*(columns[f] for f in fields))
    return [None if any(v is None for v in vals) else template.format_map(dict(zip(fields, vals)))
            for vals in rows]


def _real_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(REAL_SUFFIXES)
                       and not p.name.startswith("."))
        if not files:
            raise SynthgenError(f"{path}: no {', '.join(REAL_SUFFIXES)} files in this folder")
        return files
    raise SynthgenError(f"{path}: real source not found")


def _read_real_file(path: Path) -> pl.DataFrame:
    name = path.name
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
        if name.endswith(".zst"):
            with pa.input_stream(str(path), compression="zstd") as f:
                data = f.read()
            return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None) if data.strip() else pl.DataFrame()
        if path.stat().st_size == 0:
            return pl.DataFrame()
        return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
        raise SynthgenError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None


def _normalize_messages(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list):
        return None
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") is None or m.get("content") is None:
            return None
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out or None


def _fields_error(file: Path, missing: list[str], columns: list[str], hint: str) -> SynthgenError:
    have = ", ".join(columns) if columns else "none"
    miss = ", ".join(repr(m) for m in missing)
    return SynthgenError(f"{file}: no field {miss} (fields: {have}); {hint}")


@dataclass
class _Source:
    name: str
    kind: str  # real | synthetic
    description: dict
    payload: list  # text strings or message lists, kept rows only
    lineage: list[str]
    n_tokens: np.ndarray
    topic_codes: np.ndarray  # int32 per kept row
    topics: list[str]
    files: list[dict] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)

    @property
    def available_tokens(self) -> int:
        return int(self.n_tokens.sum())


def _load_real(src: RealSource, layout: str, tok: TokenizerInfo, chat: ChatRenderer, cache: Path,
               stats: dict) -> _Source:
    name = src.display_name()
    payload: list = []
    lineage: list[str] = []
    counts: list[np.ndarray] = []
    files_info: list[dict] = []
    skipped: dict[str, int] = {}
    row_offset = 0
    msgs_field = src.messages_field or ("messages" if layout == "messages" and not src.user_template else None)
    for file in _real_files(src.path):
        df = _read_real_file(file)
        cols = df.columns
        n = df.height
        hint = (f"set text_field, text_template or messages_field for real source '{name}'")
        if layout == "text" and src.text_template:
            need = _template_fields(src.text_template)
            kind = {"text_template": src.text_template}
        elif layout == "text" and src.messages_field:
            need = [src.messages_field]
            kind = {"messages_field": src.messages_field, "chat": chat.key()}
        elif layout == "text":
            need = [src.text_field]
            kind = {"text_field": src.text_field}
        elif src.user_template:
            need = _template_fields(src.user_template) + [f for f in _template_fields(src.assistant_template)
                                                         if f not in _template_fields(src.user_template)]
            kind = {"user_template": src.user_template, "assistant_template": src.assistant_template,
                    "chat": chat.key()}
            hint = f"set messages_field, or user_template and assistant_template, for real source '{name}'"
        else:
            need = [msgs_field]
            kind = {"messages_field": msgs_field, "chat": chat.key()}
            hint = f"set messages_field, or user_template and assistant_template, for real source '{name}'"
        missing = [c for c in need if c not in cols]
        if n and missing:
            raise _fields_error(file, missing, cols, hint)
        if n == 0:
            files_info.append({"path": str(file), "sha256": _file_sha256(file), "rows": 0, "docs": 0})
            continue
        colvals = {c: df.get_column(c).to_list() for c in need}
        rendered: list[str | None]
        if layout == "text":
            if "text_template" in kind:
                texts = _render_template(src.text_template, colvals)
            elif "messages_field" in kind:
                texts = [None if m is None else chat(m) for m in map(_normalize_messages, colvals[need[0]])]
            else:
                texts = [t if isinstance(t, str) else (None if t is None else str(t)) for t in colvals[need[0]]]
            items = texts
            rendered = texts
        else:
            if src.user_template:
                users = _render_template(src.user_template, colvals)
                assistants = _render_template(src.assistant_template, colvals)
                items = [None if u is None or a is None else
                         [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
                         for u, a in zip(users, assistants)]
            else:
                items = [_normalize_messages(m) for m in colvals[need[0]]]
            rendered = None  # rendered lazily, only on a cache miss
        file_sha = _file_sha256(file)

        def texts_fn(items=items, rendered=rendered) -> list[str | None]:
            if rendered is not None:
                return rendered
            return [None if m is None else chat(m) for m in items]

        n_tok = _cached_counts(file, file_sha, {"layout": layout, **kind}, texts_fn, n, tok, cache, stats)
        keep = np.zeros(n, dtype=bool)
        docs = 0
        for i, item in enumerate(items):
            if item is None or (isinstance(item, str) and not item.strip()):
                skipped["no text" if layout == "text" else "no messages"] = \
                    skipped.get("no text" if layout == "text" else "no messages", 0) + 1
                continue
            keep[i] = True
            payload.append(item)
            lineage.append(f"{name}:{row_offset + i}")
            docs += 1
        counts.append(n_tok[keep])
        files_info.append({"path": str(file), "sha256": file_sha, "rows": n, "docs": docs,
                           "first_row": row_offset})
        row_offset += n
    n_tokens = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    desc = {"path": str(src.path), **{k: v for k, v in src.model_dump(exclude={"path", "name"}).items()
                                      if v is not None}}
    if layout == "messages" and msgs_field and not src.user_template:
        desc["messages_field"] = msgs_field
    return _Source(name=name, kind="real", description=desc, payload=payload, lineage=lineage,
                   n_tokens=n_tokens, topic_codes=np.zeros(len(payload), dtype=np.int32), topics=["*"],
                   files=files_info, skipped=skipped)


def _load_synthetic(src: SyntheticSource, layout: str, tok: TokenizerInfo, chat: ChatRenderer, cache: Path,
                    stats: dict) -> _Source:
    name = src.display_name()
    run = src.run
    if not run.is_dir():
        raise SynthgenError(f"{run}: synthetic run folder not found (synthetic source '{name}')")
    files = sorted((run / "generations").glob("part-*.parquet"))
    if not files:
        raise SynthgenError(f"{run / 'generations'}: no part-*.parquet files; is {run} a synthgen run folder?")
    flt = src.filters
    payload: list = []
    lineage: list[str] = []
    counts: list[np.ndarray] = []
    topic_vals: list[str] = []
    files_info: list[dict] = []
    skipped: dict[str, int] = {}
    hint = f"synthetic source '{name}' needs synthgen's generations columns"
    for file in files:
        cols = pq.read_schema(file).names
        content = ["text"] if layout == "text" else ["messages", "completion"]
        need = ["id"] + content + ["status"] * (flt.statuses is not None) + ["round"] * bool(flt.rounds) + \
            ["template"] * bool(flt.templates)
        missing = [c for c in dict.fromkeys(need) if c not in cols]
        if missing:
            raise _fields_error(file, missing, cols, hint)
        topic_col = "topic_id" if "topic_id" in cols else ("topic" if "topic" in cols else None)
        extra = [c for c in (topic_col, "duplicate_of") if c and c in cols]
        df = pl.read_parquet(file, columns=list(dict.fromkeys(need + extra)))
        n = df.height
        if layout == "text":
            texts = df.get_column("text").to_list()
            items: list = texts
            rendered: list | None = texts
        else:
            prompts = df.get_column("messages").to_list()
            comps = df.get_column("completion").to_list()
            items = []
            for p, c in zip(prompts, comps):
                msgs = _normalize_messages(p)
                items.append(None if msgs is None or c is None else msgs + [{"role": "assistant", "content": str(c)}])
            rendered = None
        file_sha = _file_sha256(file)

        def texts_fn(items=items, rendered=rendered) -> list[str | None]:
            if rendered is not None:
                return rendered
            return [None if m is None else chat(m) for m in items]

        key = {"layout": layout, "synthetic": "text" if layout == "text" else "messages+completion",
               "chat": chat.key() if layout == "messages" else None}
        n_tok = _cached_counts(file, file_sha, key, texts_fn, n, tok, cache, stats)

        # filters, in a fixed order so that each skipped row is counted under one reason
        reasons = np.full(n, "", dtype=object)

        def mark(mask: np.ndarray, why: str) -> None:
            sel = mask & (reasons == "")
            reasons[sel] = why

        if flt.statuses is not None:
            mark(~df.get_column("status").is_in(flt.statuses).fill_null(False).to_numpy(), "status")
        if flt.rounds:
            mark(~df.get_column("round").is_in(flt.rounds).fill_null(False).to_numpy(), "round")
        if flt.templates:
            mark(~df.get_column("template").cast(pl.String).is_in(flt.templates).fill_null(False).to_numpy(),
                 "template")
        if not flt.include_duplicates and "duplicate_of" in df.columns:
            mark(df.get_column("duplicate_of").is_not_null().to_numpy(), "duplicate")
        empty = np.array([it is None or (isinstance(it, str) and not it.strip()) for it in items], dtype=bool)
        mark(empty, "no text" if layout == "text" else "no messages")
        keep = reasons == ""
        for why in reasons[~keep]:
            skipped[why] = skipped.get(why, 0) + 1
        ids = df.get_column("id").cast(pl.String).to_list()
        tcol = df.get_column(topic_col).cast(pl.String).to_list() if topic_col else ["*"] * n
        idx = np.flatnonzero(keep)
        for i in idx:
            payload.append(items[i])
            lineage.append(ids[i] if ids[i] is not None else f"{name}:{file.name}:{i}")
            topic_vals.append(tcol[i] if tcol[i] is not None else "*")
        counts.append(n_tok[keep])
        files_info.append({"path": str(file), "sha256": file_sha, "rows": n, "docs": int(len(idx))})
    n_tokens = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    topics = sorted(set(topic_vals), key=_natural_key)
    code = {t: i for i, t in enumerate(topics)}
    topic_codes = np.array([code[t] for t in topic_vals], dtype=np.int32)
    desc = {"run": str(run), "filters": flt.model_dump()}
    return _Source(name=name, kind="synthetic", description=desc, payload=payload, lineage=lineage,
                   n_tokens=n_tokens, topic_codes=topic_codes, topics=topics or ["*"], files=files_info,
                   skipped=skipped)


def _natural_key(s: str) -> tuple:
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


# --------------------------------------------------------------------------------------------
# Apportionment and selection
# --------------------------------------------------------------------------------------------

def hamilton(total: int, weights: Sequence[Any]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; ties -> lower index)."""
    ws = [Fraction(int(w)) if isinstance(w, (int, np.integer)) else Fraction(w) for w in weights]
    if total < 0 or any(w < 0 for w in ws):
        raise ValueError("hamilton: negative total or weight")
    wsum = sum(ws)
    if wsum == 0 or total == 0:
        return [0] * len(ws)
    quotas = [total * w / wsum for w in ws]
    floors = [q.numerator // q.denominator for q in quotas]
    rest = total - sum(floors)
    order = sorted(range(len(ws)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:rest]:
        floors[i] += 1
    return floors


def _rng(seed: int, *key: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256("\x1f".join(key).encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, h]))


def best_fit(lengths: np.ndarray, candidates: np.ndarray, deficit: int) -> tuple[np.ndarray, int]:
    """Fill `deficit` tokens with the largest remaining documents that still fit; returns (picked, left)."""
    if deficit <= 0 or len(candidates) == 0:
        return np.zeros(0, dtype=np.int64), deficit
    cl = lengths[candidates]
    fits = cl <= deficit
    cand, cl = candidates[fits], cl[fits]
    if len(cand) == 0:
        return np.zeros(0, dtype=np.int64), deficit
    order = np.argsort(cl, kind="stable")
    cand_l, cl_l = cand[order].tolist(), cl[order].tolist()
    picked = []
    while deficit > 0 and cl_l:
        i = bisect.bisect_right(cl_l, deficit) - 1
        if i < 0:
            break
        picked.append(cand_l[i])
        deficit -= cl_l[i]
        del cl_l[i], cand_l[i]
    return np.asarray(picked, dtype=np.int64), deficit


def swap_refine(lengths: np.ndarray, chosen: np.ndarray, rest: np.ndarray, deficit: int, rounds: int = 8
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Close a remaining gap by swapping a chosen document for a longer unchosen one.

    Each round makes the single swap that gains the most tokens without overshooting."""
    chosen, rest = np.array(chosen, dtype=np.int64), np.array(rest, dtype=np.int64)
    for _ in range(rounds):
        if deficit <= 0 or len(chosen) == 0 or len(rest) == 0:
            break
        rl = lengths[rest]
        order = np.argsort(rl, kind="stable")
        rs = rl[order]
        cl = lengths[chosen]
        pos = np.searchsorted(rs, cl + deficit, side="right") - 1
        gain = np.where(pos >= 0, rs[np.maximum(pos, 0)] - cl, -1)
        j = int(np.argmax(gain))
        g = int(gain[j])
        if g <= 0:
            break
        ri = int(order[pos[j]])
        chosen[j], rest[ri] = rest[ri], chosen[j]
        deficit -= g
    return chosen, rest, deficit


def select_documents(lengths: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of documents (no repeats) whose lengths sum to at most `target`, as close as possible.

    Shuffle with `rng`, take documents in order until the next one would overshoot, then fill the
    rest with the best-fitting remaining documents. Documents are never split."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    perm = rng.permutation(n)
    if target <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    cs = np.cumsum(lengths[perm])
    if target >= cs[-1]:
        return np.sort(perm)
    k = int(np.searchsorted(cs, target, side="right"))
    deficit = target - (int(cs[k - 1]) if k else 0)
    extra, deficit = best_fit(lengths, perm[k:], deficit)
    chosen = np.concatenate([perm[:k], extra])
    if deficit > 0:
        mask = np.ones(n, dtype=bool)
        mask[chosen] = False
        chosen, _, _ = swap_refine(lengths, chosen, np.flatnonzero(mask), deficit)
    return chosen


@dataclass
class _Stratum:
    source: int
    topic: int
    docs: np.ndarray  # global doc ids
    available: int
    target: int = 0


class _Pool:
    """All kept documents of all sources, with global ids."""

    def __init__(self, sources: list[_Source]):
        self.sources = sources
        self.offsets = np.cumsum([0] + [len(s.payload) for s in sources])
        self.n_tokens = np.concatenate([s.n_tokens for s in sources]) if sources else np.zeros(0, np.int64)
        self.source_idx = np.concatenate([np.full(len(s.payload), i, dtype=np.int32)
                                          for i, s in enumerate(sources)]) if sources else np.zeros(0, np.int32)
        self.topic_codes = np.concatenate([s.topic_codes for s in sources]) if sources else np.zeros(0, np.int32)
        self.strata: list[_Stratum] = []
        for si, s in enumerate(sources):
            base = self.offsets[si]
            order = np.argsort(s.topic_codes, kind="stable")
            bounds = np.searchsorted(s.topic_codes[order], np.arange(len(s.topics) + 1))
            for t in range(len(s.topics)):
                ids = order[bounds[t]:bounds[t + 1]] + base
                self.strata.append(_Stratum(si, t, ids.astype(np.int64), int(self.n_tokens[ids].sum())))
        self._payload: pa.Array | None = None
        self._lineage: pa.Array | None = None

    def kind_sources(self, kind: str) -> list[int]:
        return [i for i, s in enumerate(self.sources) if s.kind == kind]

    def available(self, kind: str) -> int:
        return sum(self.sources[i].available_tokens for i in self.kind_sources(kind))

    def arrays(self, layout: str) -> tuple[pa.Array, pa.Array]:
        if self._payload is None:
            items = [x for s in self.sources for x in s.payload]
            typ = pa.large_string() if layout == "text" else MESSAGE_TYPE
            self._payload = pa.array(items, type=typ)
            self._lineage = pa.array([x for s in self.sources for x in s.lineage], type=pa.string())
        return self._payload, self._lineage


def _max_budget(pool: _Pool, ratio: str) -> int:
    """The largest budget this ratio reaches without repeating a document."""
    r, s = parse_ratio(ratio)
    ar, as_ = pool.available("real"), pool.available("synthetic")
    caps = []
    if r > 0:
        caps.append(Fraction(ar) * (r + s) / r)
    if s > 0:
        caps.append(Fraction(as_) * (r + s) / s)
    b = int(min(caps))
    while b > 0:
        br, bs = hamilton(b, [r, s])
        if br <= ar and bs <= as_:
            return b
        b -= 1
    return 0


def _select_kind(pool: _Pool, kind: str, budget: int, seed: int, allow_repetition: bool
                 ) -> tuple[np.ndarray, list[dict]]:
    """Documents for one side (real or synthetic): sources by available tokens, then topics."""
    srcs = pool.kind_sources(kind)
    src_budgets = hamilton(budget, [pool.sources[i].available_tokens for i in srcs])
    strata: list[_Stratum] = []
    for si, b in zip(srcs, src_budgets):
        mine = [st for st in pool.strata if st.source == si]
        for st, t in zip(mine, hamilton(b, [st.available for st in mine])):
            st.target = t
            strata.append(st)
    chosen: list[np.ndarray] = []  # whole epochs (only with allow_repetition)
    picked: list[np.ndarray] = []  # documents drawn without replacement
    leftovers: list[np.ndarray] = []
    carry = 0
    for st in strata:
        src = pool.sources[st.source]
        rng = _rng(seed, "select", kind, src.name, src.topics[st.topic])
        lens = pool.n_tokens[st.docs]
        want = st.target + carry
        epochs = 0
        if allow_repetition and st.available > 0 and want > st.available:
            epochs = want // st.available
        rest = min(want - epochs * st.available, st.available)
        local = select_documents(lens, rest, rng)
        if epochs:
            chosen.append(np.tile(st.docs, epochs))
        picked.append(st.docs[local])
        got = epochs * st.available + int(lens[local].sum())
        carry = want - got
        mask = np.ones(len(st.docs), dtype=bool)
        mask[local] = False
        leftovers.append(st.docs[mask])
    if carry > 0 and leftovers:
        # the last strata could not absorb the carried gap: fill it from all of this side's documents
        rest_ids = np.concatenate(leftovers)
        extra, carry = best_fit(pool.n_tokens, rest_ids, carry)
        got = np.concatenate(picked + [extra])
        if carry > 0:
            mask = np.ones(len(pool.n_tokens), dtype=bool)
            mask[got] = False
            rest_ids = rest_ids[mask[rest_ids]]
            got, _, carry = swap_refine(pool.n_tokens, got, rest_ids, carry)
        picked = [got]
    sel = np.concatenate(chosen + picked) if chosen or picked else np.zeros(0, dtype=np.int64)
    targets = [{"source": pool.sources[st.source].name, "topic": pool.sources[st.source].topics[st.topic],
                "target": st.target} for st in strata]
    return sel.astype(np.int64), targets


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _shard_bounds(lengths: np.ndarray, shard_tokens: int) -> list[tuple[int, int]]:
    """Cut a sequence of documents into runs of at most shard_tokens (one oversize doc = one shard)."""
    bounds = []
    cs = np.concatenate([[0], np.cumsum(lengths)])
    start, n = 0, len(lengths)
    while start < n:
        end = int(np.searchsorted(cs, cs[start] + shard_tokens, side="right")) - 1
        end = max(end, start + 1)
        bounds.append((start, end))
        start = end
    return bounds


def write_megatron(prefix: str | Path, ids: np.ndarray, lengths: np.ndarray) -> None:
    """Megatron-Core IndexedDataset: prefix.bin (token ids) and prefix.idx (one sequence per document)."""
    prefix = Path(prefix)
    ids = np.ascontiguousarray(ids)
    with open(prefix.with_suffix(".bin"), "wb") as f:
        f.write(ids.tobytes(order="C"))
    lengths32 = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths32), dtype=np.int64)
    if len(lengths32) > 1:
        pointers[1:] = np.cumsum(lengths32[:-1], dtype=np.int64) * ids.dtype.itemsize
    doc_idx = np.arange(len(lengths32) + 1, dtype=np.int64)
    with open(prefix.with_suffix(".idx"), "wb") as f:
        f.write(MEGATRON_HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_DTYPE_CODES[ids.dtype]))
        f.write(struct.pack("<Q", len(lengths32)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(lengths32.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_idx.tobytes(order="C"))


def read_megatron(prefix: str | Path) -> list[np.ndarray]:
    """Documents (token id arrays) of a Megatron .bin/.idx pair written by write_megatron."""
    prefix = Path(prefix)
    code_to_dtype = {v: k for k, v in MEGATRON_DTYPE_CODES.items()}
    with open(prefix.with_suffix(".idx"), "rb") as f:
        if f.read(9) != MEGATRON_HEADER:
            raise SynthgenError(f"{prefix}.idx: not a Megatron index (bad header)")
        (version,) = struct.unpack("<Q", f.read(8))
        (code,) = struct.unpack("<B", f.read(1))
        (seqs,) = struct.unpack("<Q", f.read(8))
        (docs,) = struct.unpack("<Q", f.read(8))
        lengths = np.frombuffer(f.read(4 * seqs), dtype=np.int32)
        pointers = np.frombuffer(f.read(8 * seqs), dtype=np.int64)
        doc_idx = np.frombuffer(f.read(8 * docs), dtype=np.int64)
    if version != 1:
        raise SynthgenError(f"{prefix}.idx: unsupported version {version}")
    dtype = code_to_dtype[code]
    data = np.fromfile(prefix.with_suffix(".bin"), dtype=dtype)
    out = []
    for d in range(len(doc_idx) - 1):
        for s in range(doc_idx[d], doc_idx[d + 1]):
            start = pointers[s] // dtype.itemsize
            out.append(data[start:start + lengths[s]])
    return out


def _write_shard(path_stem: Path, fmt: str, table: pa.Table, lengths: np.ndarray, tok: TokenizerInfo
                 ) -> list[Path]:
    if fmt == "parquet":
        path = path_stem.with_name(path_stem.name + ".parquet")
        pq.write_table(table, path, compression="zstd", row_group_size=10_000)
        return [path]
    if fmt in ("jsonl", "jsonl.zst"):
        buf = io.BytesIO()
        pl.from_arrow(table).write_ndjson(buf)
        data = buf.getvalue()
        if fmt == "jsonl":
            path = path_stem.with_name(path_stem.name + ".jsonl")
            path.write_bytes(data)
        else:
            path = path_stem.with_name(path_stem.name + ".jsonl.zst")
            with pa.output_stream(str(path), compression="zstd") as f:
                f.write(data)
        return [path]
    # megatron: token ids + a sidecar with the row metadata
    texts = table.column("text").to_pylist()
    ids, lens = encode_documents(texts, tok)
    if not np.array_equal(lens, lengths):
        bad = int(np.flatnonzero(lens != lengths)[0])
        raise SynthgenError(f"token count drift in {path_stem.name}: document {bad} encodes to {lens[bad]} tokens, "
                            f"counted {lengths[bad]}; clear the .tokcache files and rerun")
    write_megatron(path_stem, ids, lens)
    meta = table.drop_columns(["text"]).append_column("n_tokens", pa.array(lens, type=pa.int32()))
    side = path_stem.with_name(path_stem.name + ".docs.parquet")
    pq.write_table(meta, side, compression="zstd")
    return [path_stem.with_suffix(".bin"), path_stem.with_suffix(".idx"), side]


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthgenError(f"out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / MANIFEST_NAME
        if not overwrite:
            raise SynthgenError(f"out folder {out} is not empty; choose another out, or set overwrite: true "
                                f"(--overwrite) to replace an earlier mix there")
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
            for mix in old.get("mixes", []):
                for shard in mix.get("shards", []):
                    for f in shard.get("files", []):
                        p = (out / f).resolve()
                        if p.is_file() and out.resolve() in p.parents:
                            p.unlink()
                folder = out / mix.get("folder", ".")
                if folder != out and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            manifest.unlink()
    out.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

@dataclass
class MixResult:
    out: Path
    manifest: dict

    @property
    def manifest_path(self) -> Path:
        return self.out / MANIFEST_NAME

    def folder(self, ratio: str) -> Path:
        """The folder holding the shards of one ratio."""
        want = ratio_text(ratio)
        for m in self.manifest["mixes"]:
            if m["ratio"] == want:
                return self.out / m["folder"]
        raise KeyError(ratio)


def _ratio_value(real: int, syn: int) -> float | None:
    return None if syn == 0 else real / syn


def build_mix(config: MixConfig | dict, *, out: str | Path | None = None, base_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> MixResult:
    """Build every ratio of `config` into `out` (default config.out); returns the manifest.

    Relative paths in a dict config resolve against `base_dir` (default: the working directory).
    Raises SynthgenError when a ratio cannot be met; warns (RepetitionWarning) when it repeats data."""
    if isinstance(config, dict):
        config = mix_config_from_dict(config, base_dir)
    elif base_dir is not None:
        config = config.resolved(base_dir)
    cfg = config
    say = log or (lambda _msg: None)
    out_dir = Path(out) if out is not None else cfg.out
    if out_dir is None:
        raise SynthgenError("set out: the folder the mix is written to (--out)")
    out_dir = out_dir.expanduser()

    tok = load_tokenizer(cfg.tokenizer, cfg.eos_token)
    chat = ChatRenderer(tok)
    cache = (cfg.cache_dir or default_cache_dir()).expanduser()
    stats = {"cache_hits": 0, "cache_misses": 0, "tokens_counted": 0}
    sources: list[_Source] = []
    for rs in cfg.real:
        say(f"loading real source {rs.display_name()} ({rs.path})")
        sources.append(_load_real(rs, cfg.layout, tok, chat, cache, stats))
    for ss in cfg.synthetic:
        say(f"loading synthetic source {ss.display_name()} ({ss.run})")
        sources.append(_load_synthetic(ss, cfg.layout, tok, chat, cache, stats))
    pool = _Pool(sources)
    avail = {"real": pool.available("real"), "synthetic": pool.available("synthetic")}
    say(f"available: {avail['real']:,} real tokens, {avail['synthetic']:,} synthetic tokens "
        f"({stats['cache_hits']} files from the token cache, {stats['cache_misses']} counted)")

    ratios = cfg.ratio_list()
    if cfg.total_tokens is not None:
        budget = cfg.total_tokens
    else:
        budget = min(_max_budget(pool, r) for r in ratios)
        if budget <= 0:
            raise SynthgenError(f"no tokens to mix: real sources have {avail['real']:,} tokens, synthetic "
                                f"sources {avail['synthetic']:,} after filters")
    # check every ratio before writing anything
    warn_msgs: list[str] = []
    for r in ratios:
        rw, sw = parse_ratio(r)
        need = dict(zip(("real", "synthetic"), hamilton(budget, [rw, sw])))
        for kind in ("real", "synthetic"):
            if need[kind] > avail[kind]:
                if not cfg.allow_repetition or avail[kind] == 0:
                    cap = _max_budget(pool, r)
                    fix = (f"lower total_tokens to {cap:,}, or set allow_repetition: true" if avail[kind]
                           else f"add {kind} data or change the ratio")
                    raise SynthgenError(
                        f"ratio {r} with total_tokens {budget:,} needs {need[kind]:,} {kind} tokens but the "
                        f"{kind} sources have {avail[kind]:,}; {fix}")
                factor = need[kind] / avail[kind]
                msg = (f"ratio {r}: {kind} tokens repeated {factor:.3f}x ({need[kind]:,} needed, "
                       f"{avail[kind]:,} unique) because allow_repetition is true")
                warn_msgs.append(msg)
                warnings.warn(msg, RepetitionWarning, stacklevel=2)
                say("warning: " + msg)

    _prepare_out(out_dir, cfg.overwrite)
    payload, lineage = pool.arrays(cfg.layout)
    names = pa.array([s.name for s in sources], type=pa.string())
    kinds = pa.array([s.kind for s in sources], type=pa.string())
    col = "text" if cfg.layout == "text" else "messages"
    mixes = []
    for r in ratios:
        rw, sw = parse_ratio(r)
        kind_budget = dict(zip(("real", "synthetic"), hamilton(budget, [rw, sw])))
        say(f"ratio {r}: selecting {kind_budget['real']:,} real + {kind_budget['synthetic']:,} synthetic tokens")
        sel_parts, targets = [], []
        for kind in ("real", "synthetic"):
            if kind_budget[kind] > 0:
                ids, t = _select_kind(pool, kind, kind_budget[kind], cfg.seed, cfg.allow_repetition)
                sel_parts.append(ids)
                targets += t
        sel = np.concatenate(sel_parts) if sel_parts else np.zeros(0, dtype=np.int64)
        sel = np.sort(sel, kind="stable")  # canonical order before the seeded shuffle
        sel = sel[_rng(cfg.seed, "shuffle", r).permutation(len(sel))]
        lengths = pool.n_tokens[sel]
        folder = out_dir if len(ratios) == 1 and cfg.ratio is not None else out_dir / ratio_folder(r)
        folder.mkdir(parents=True, exist_ok=True)
        shards = []
        sel_src = pool.source_idx[sel]
        for k, (a, b) in enumerate(_shard_bounds(lengths, cfg.shard_tokens)):
            ids = sel[a:b]
            src_idx = pa.array(sel_src[a:b])
            table = pa.table({col: payload.take(pa.array(ids)), "source": names.take(src_idx),
                              "kind": kinds.take(src_idx), "lineage_id": lineage.take(pa.array(ids))})
            files = _write_shard(folder / f"part-{k:05d}", cfg.format, table, lengths[a:b], tok)
            is_real = np.array([sources[i].kind == "real" for i in sel_src[a:b]], dtype=bool)
            shards.append({
                "file": str(files[0].relative_to(out_dir)),
                "files": [str(f.relative_to(out_dir)) for f in files],
                "docs": int(b - a), "tokens": int(lengths[a:b].sum()),
                "real_tokens": int(lengths[a:b][is_real].sum()),
                "synthetic_tokens": int(lengths[a:b][~is_real].sum()),
                "sha256": [_file_sha256(f) for f in files],
            })
        say(f"ratio {r}: wrote {len(shards)} shard(s) to {folder}")
        # accounting
        per_source = []
        tok_by_src = np.bincount(pool.source_idx[sel], weights=lengths, minlength=len(sources)).astype(np.int64)
        docs_by_src = np.bincount(pool.source_idx[sel], minlength=len(sources))
        reps = np.bincount(sel, minlength=len(pool.n_tokens)) if len(sel) else np.zeros(len(pool.n_tokens), int)
        for i, s in enumerate(sources):
            lo, hi = pool.offsets[i], pool.offsets[i + 1]
            entry = {"name": s.name, "kind": s.kind,
                     "target_tokens": sum(t["target"] for t in targets if t["source"] == s.name),
                     "tokens": int(tok_by_src[i]), "docs": int(docs_by_src[i]),
                     "available_tokens": s.available_tokens, "available_docs": len(s.payload),
                     "unique_tokens": int(pool.n_tokens[lo:hi][reps[lo:hi] > 0].sum()),
                     "max_doc_repeats": int(reps[lo:hi].max()) if hi > lo else 0}
            # tokens per distinct token used (1.0 = nothing repeated), and the share of the source used
            entry["repetition_factor"] = round(entry["tokens"] / entry["unique_tokens"], 6) \
                if entry["unique_tokens"] else 1.0
            entry["fraction_of_available"] = round(entry["unique_tokens"] / s.available_tokens, 6) \
                if s.available_tokens else 0.0
            if s.kind == "synthetic":
                mine = pool.source_idx[sel] == i
                t_tok = np.bincount(pool.topic_codes[sel][mine], weights=lengths[mine],
                                    minlength=len(s.topics)).astype(np.int64)
                t_avail = np.bincount(s.topic_codes, weights=s.n_tokens, minlength=len(s.topics)).astype(np.int64)
                tgt = {t["topic"]: t["target"] for t in targets if t["source"] == s.name}
                entry["topics"] = {name: {"available_tokens": int(t_avail[j]), "target_tokens": tgt.get(name, 0),
                                          "tokens": int(t_tok[j])} for j, name in enumerate(s.topics)}
            per_source.append(entry)
        real_tok = sum(e["tokens"] for e in per_source if e["kind"] == "real")
        syn_tok = sum(e["tokens"] for e in per_source if e["kind"] == "synthetic")
        total = real_tok + syn_tok
        mix = {
            "ratio": r, "folder": str(folder.relative_to(out_dir)) if folder != out_dir else ".",
            "budget_tokens": budget, "target_tokens": kind_budget,
            "tokens": {"total": total, "real": real_tok, "synthetic": syn_tok},
            "docs": {"total": int(len(sel)), "real": int(sum(e["docs"] for e in per_source if e["kind"] == "real")),
                     "synthetic": int(sum(e["docs"] for e in per_source if e["kind"] == "synthetic"))},
            "requested_ratio": None if sw == 0 else float(rw / sw),
            "achieved_ratio": _ratio_value(real_tok, syn_tok),
            "achieved_synthetic_fraction": syn_tok / total if total else 0.0,
            "budget_shortfall_tokens": budget - total,
            "sources": per_source,
            "shards": shards,
        }
        if cfg.format == "megatron":
            mix["megatron_data_path"] = [x for sh in shards
                                         for x in (str(sh["tokens"]), sh["file"][: -len(".bin")])]
        mixes.append(mix)

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "layout": cfg.layout, "format": cfg.format, "shard_tokens": cfg.shard_tokens,
        "total_tokens": {"requested": cfg.total_tokens, "budget": budget,
                         "rule": "as requested" if cfg.total_tokens is not None else
                         "largest budget every ratio reaches without repetition"},
        "allow_repetition": cfg.allow_repetition,
        "tokenizer": {"path": str(tok.path), "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                      "eos_token": tok.eos_token, "eos_id": tok.eos_id,
                      "megatron_dtype": tok.dtype.name if cfg.format == "megatron" else None},
        "token_count": {
            "rule": "ids of the document text encoded with add_special_tokens=False, plus 1 EOS per document",
            "eos_per_document": 1, "eos_token": tok.eos_token,
            "messages_rendering": chat.describe() if cfg.layout == "messages" or any(
                s.messages_field for s in cfg.real) else None,
            "counted_this_run": stats["tokens_counted"], "files_from_cache": stats["cache_hits"],
            "files_counted": stats["cache_misses"]},
        "seeds": {"seed": cfg.seed,
                  "selection": "numpy SeedSequence([seed, sha256('select|kind|source|topic')]) per stratum; "
                               "independent of the ratio, so selections of different ratios nest",
                  "shuffle": "numpy SeedSequence([seed, sha256('shuffle|ratio')]) over the selected documents"},
        "apportionment": "Hamilton (largest remainder): budget -> real/synthetic by the ratio -> sources by "
                         "available tokens -> topic_id (synthetic) by available tokens; documents are whole, "
                         "chosen by seeded shuffle + greedy prefix + best fit, leftover carried to the next "
                         "stratum",
        "sources": [{"name": s.name, "kind": s.kind, **s.description, "available_docs": len(s.payload),
                     "available_tokens": s.available_tokens, "topics": len(s.topics) if s.kind == "synthetic"
                     else None, "skipped_rows": s.skipped, "files": s.files} for s in sources],
        "mixes": mixes,
        "warnings": warn_msgs,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    return MixResult(out=out_dir, manifest=manifest)


def load_shard_rows(path: str | Path) -> list[dict]:
    """Rows of one JSONL / JSONL.zst / Parquet shard (a convenience for checks and tests)."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if path.name.endswith(".zst"):
        with pa.input_stream(str(path), compression="zstd") as f:
            data = f.read()
    else:
        data = path.read_bytes()
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]


__all__ = [
    "MixConfig", "RealSource", "SyntheticSource", "SyntheticFilters", "MixResult", "TokenizerInfo",
    "RepetitionWarning", "build_mix", "load_mix_config", "mix_config_from_dict", "load_tokenizer",
    "count_tokens", "encode_documents", "hamilton", "select_documents", "best_fit", "parse_ratio",
    "ratio_folder", "write_megatron", "read_megatron", "load_shard_rows",
]
