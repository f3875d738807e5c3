"""Real:synthetic training mixes with exact token accounting (`synthgen mix`).

The model follows OLMo-core's source mixtures: a mix is a token budget split between sources
by ratios *of tokens*, apportioned with Hamilton's method (largest remainder), filled with whole
documents, and refused loudly when it cannot be met without repeating data (unless repetition is
asked for, in which case the repetition factor is reported).

Pipeline (`build`, configured by `generator.config.mix`):
  0. check every source before anything is read (`preflight`): it exists, is readable, holds data;
  1. load every source (`real` files, `synthetic` run folders), keep the rows that pass the filters;
  2. count tokens per document with the training tokenizer (`tokens`, HF `tokenizers`, batch encoding),
     cached per source file in a `.tokcache.parquet` keyed by file hash + tokenizer hash (`tokcache`);
  3. per requested ratio: budget -> (real, synthetic) -> sources (by available tokens) ->
     topics (synthetic side, by available tokens) (`apportion`, `pool`), then select documents
     without splitting them (`select`);
  4. shuffle the selection with the seed, cut it into shards of `shard_tokens`, and write
     JSONL, JSONL.zst, Parquet or Megatron `.bin/.idx` (`output_shards`, `megatron`), plus
     `mix_manifest.json` (`manifest`).

Token counting convention: a document's count is the number of ids its text encodes to with
`add_special_tokens=False`, plus exactly one EOS token. In the messages layout the text is the
conversation rendered with the tokenizer's chat template (or a plain `role: content` rendering
when the tokenizer has none). Megatron `.bin` files hold exactly these ids.
"""
from __future__ import annotations

from generator.mix.apportion import hamilton
from generator.mix.build import RepetitionWarning, build_mix
from generator.mix.chat import ChatRenderer
from generator.config.mix import (DEFAULT_SHARD_TOKENS, REAL_SUFFIXES, MixConfig, RealSource, SyntheticFilters,
                                  SyntheticSource, load_mix_config, mix_config_from_dict)
from generator.mix.manifest import MANIFEST_NAME, MANIFEST_VERSION, MixResult
from generator.mix.megatron import MEGATRON_DTYPE_CODES, MEGATRON_HEADER, read_megatron, write_megatron
from generator.config.mix_parsing import parse_ratio, parse_token_count, ratio_folder, ratio_text
from generator.mix.select import best_fit, select_documents, swap_refine
from generator.mix.output_shards import load_shard_rows
from generator.mix.tokcache import TOKCACHE_VERSION, default_cache_dir
from generator.mix.tokens import DEFAULT_TOKENIZER, ENCODE_BATCH, TokenizerInfo, count_tokens, encode_documents, load_tokenizer

__all__ = [
    "MixConfig", "RealSource", "SyntheticSource", "SyntheticFilters", "MixResult", "TokenizerInfo",
    "RepetitionWarning", "build_mix", "load_mix_config", "mix_config_from_dict", "load_tokenizer",
    "count_tokens", "encode_documents", "hamilton", "select_documents", "best_fit", "parse_ratio",
    "ratio_folder", "write_megatron", "read_megatron", "load_shard_rows",
]
