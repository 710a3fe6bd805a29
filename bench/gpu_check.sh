#!/usr/bin/env bash
# One-call GPU verification of illada_rt, run from the repository root on a GPU machine:
#
#   bash bench/gpu_check.sh [OUT_DIR]      # default: $OUT, else ./gpu_check_out
#
# 1. environment: nvidia-smi, python, torch, nvcc, cmake, ninja, pybind11 (and wheels from .whl/ when
#    something is missing: `pip install --no-index .whl/*.whl`; the machine may have no internet);
#    nvidia-ml-py from .whl/ when pynvml is missing (optional: clocks and power in the results)
# 2. build: pip install --no-build-isolation --no-deps -e .   (ILLADA_CUDA_ARCHS=90a, MAX_JOBS=16)
# 3. CUDA tests: pytest python_tests/test_cuda_*.py
# 4. bench, in groups (GPU_CHECK_BENCH, default "kernels,quant,generate,serve"): bench_kernels.py;
#    bench_quant_matmul.py and quant_load.py; bench_generate.py on the iLLaDA-8B and LLaDA-8B shapes
#    (random weights, bfloat16; a subset of the matrix sized to the budget), then iLLaDA-8B quantized
#    to int8, int4 and fp8 (with quant or generate); load_test.py
# 5. the rest of the suite (-k "not cuda"), last: the CPU CI runs it too
# 6. summary: one table, also in OUT_DIR/summary.md
#
# OUT_DIR gets at most 8 flat files: summary.md, env.log, build.log, test_cuda.log, test_rest.log,
# bench.log and results.json (every result JSON of the run, packed; unpack with
# `python bench/results.py unpack OUT_DIR/results.json`). Every phase has a time cap and the whole
# script a budget (GPU_CHECK_BUDGET_S, default 560 s), so it ends within 10 minutes; a phase without
# time left is reported as skipped. Exit status: 0 when every phase passed, 1 otherwise.
set -u -o pipefail

OUT_DIR="${1:-${OUT:-./gpu_check_out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
BUDGET_S="${GPU_CHECK_BUDGET_S:-560}"
BENCH="${GPU_CHECK_BENCH:-kernels,quant,generate,serve}"   # which benchmark groups, in this order
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export ILLADA_CUDA_ARCHS="${ILLADA_CUDA_ARCHS:-90a}" MAX_JOBS="${MAX_JOBS:-16}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" PYTHONUNBUFFERED=1
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi

SUMMARY=()   # "phase|status|seconds|log"
FAILED=0

left() { echo $((BUDGET_S - SECONDS)); }

# run_phase NAME CAP_S LOG CMD...: run CMD with its output teed to LOG, capped at min(CAP_S, budget left - 15).
run_phase() {
  local name="$1" cap="$2" log="$3"; shift 3
  local limit=$(( $(left) - 15 < cap ? $(left) - 15 : cap ))
  if [ "$limit" -lt 20 ]; then
    SUMMARY+=("$name|SKIPPED (no time left)|0|-"); FAILED=1; return 1
  fi
  local start=$SECONDS rc
  { echo "### $name: $*  (time cap ${limit}s)"; } | tee -a "$OUT_DIR/$log"
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT_DIR/$log"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start)) status="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT after ${limit}s"; elif [ "$rc" -ne 0 ]; then status="FAILED (exit $rc)"; fi
  [ "$status" = ok ] || FAILED=1
  SUMMARY+=("$name|$status|$took|$log")
  [ "$status" = ok ]
}

# ------------------------------------------------------------------ 1. environment
ENV_LOG="$OUT_DIR/env.log"
{
  echo "### gpu_check $(date -u +%FT%TZ) in $(pwd), output $OUT_DIR, budget ${BUDGET_S}s"
  echo "### phase caps (each also capped by the budget left): build 300 s, CUDA tests 170, bench_kernels 90,"
  echo "### bench_quant_matmul 60, quant_load 45, bench_generate 110 + 70 + 80 + 80, load_test 60, rest of the suite 170"
  echo "### git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi || echo "nvidia-smi: not available"
  echo "### python: $PY ($("$PY" --version 2>&1))"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
  echo "### nvcc: $(command -v nvcc || echo missing)"; nvcc --version 2>&1 | tail -2
  echo "### cmake: $(cmake --version 2>/dev/null | head -1 || echo missing); ninja: $(ninja --version 2>/dev/null || echo missing)"
} 2>&1 | tee "$ENV_LOG"

missing_tools() {  # what the build and the tests need that is not importable / on the PATH
  local m=()
  "$PY" -c "import pybind11" 2>/dev/null || m+=(pybind11)
  command -v cmake >/dev/null || m+=(cmake)
  command -v ninja >/dev/null || m+=(ninja)
  for mod in torch safetensors tokenizers jinja2 pytest numpy; do "$PY" -c "import $mod" 2>/dev/null || m+=("$mod"); done
  echo "${m[@]:-}"
}
MISSING="$(missing_tools)"
if [ -n "$MISSING" ]; then
  echo "### missing: $MISSING" | tee -a "$ENV_LOG"
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "### installing the carried wheels: pip install --no-index .whl/*.whl" | tee -a "$ENV_LOG"
    "$PY" -m pip install --no-index .whl/*.whl 2>&1 | tail -5 | tee -a "$ENV_LOG"
  else
    echo "### no .whl/ folder: trying the package index for the build tools (fails without internet)" | tee -a "$ENV_LOG"
    "$PY" -m pip install pybind11 ninja cmake 2>&1 | tail -3 | tee -a "$ENV_LOG"
  fi
  hash -r
  MISSING="$(missing_tools)"
fi
if ! "$PY" -c "import pynvml" 2>/dev/null; then
  if compgen -G ".whl/nvidia_ml_py*.whl" >/dev/null; then
    "$PY" -m pip install --no-index --no-deps .whl/nvidia_ml_py*.whl 2>&1 | tail -1 | tee -a "$ENV_LOG"
  else
    echo "### pynvml missing (optional): results record GPU clocks and power as unavailable" | tee -a "$ENV_LOG"
  fi
fi
if [ -n "$MISSING" ]; then
  echo "### FATAL: still missing: $MISSING. Carry wheels for them in .whl/ (see bench/README.md)." | tee -a "$ENV_LOG"
  SUMMARY+=("environment|FAILED (missing: $MISSING)|$SECONDS|env.log"); FAILED=1
else
  SUMMARY+=("environment|ok|$SECONDS|env.log")
fi

# ------------------------------------------------------------------ 2. build
BUILT=0
if [ "$FAILED" -eq 0 ]; then
  if ! command -v nvcc >/dev/null; then
    echo "### FATAL: nvcc not found (PATH or /usr/local/cuda/bin): the build would have no CUDA kernels" | tee -a "$ENV_LOG"
    SUMMARY+=("build|FAILED (no nvcc)|0|env.log"); FAILED=1
  elif run_phase "build (archs $ILLADA_CUDA_ARCHS)" 300 build.log \
        "$PY" -m pip install --no-build-isolation --no-deps -v -e . ; then
    run_phase "extension sees the GPU" 60 build.log "$PY" -c "
from illada_rt import ops
info, (count, why) = ops.build_info(), ops.cuda_devices()
print('build_info', info); print('cuda_devices', count, why)
assert info['cuda'], 'the extension was built without CUDA kernels'
assert count > 0, 'the extension CUDA runtime sees no device: ' + why
" && BUILT=1
  fi
fi

# ------------------------------------------------------------------ 3. CUDA tests
# Up to 25 failures before stopping: one lease should list every broken kernel, not the first.
if [ "$BUILT" -eq 1 ]; then
  run_phase "pytest test_cuda_*.py" 170 test_cuda.log \
    "$PY" -m pytest python_tests/test_cuda_*.py -q --maxfail=25 -rPs -p no:cacheprovider
else
  SUMMARY+=("CUDA tests|SKIPPED (no CUDA build)|0|-")
fi

# ------------------------------------------------------------------ 4. bench
RESULTS_TMP="$(mktemp -d)"
if [ "$BUILT" -eq 1 ]; then
  echo "### bench: $(left)s of the budget left" | tee -a "$OUT_DIR/bench.log"
  wants() { [[ ",$BENCH," == *",$1,"* ]]; }
  wants kernels && run_phase "bench_kernels" 90 bench.log "$PY" bench/bench_kernels.py --device cuda --out "$RESULTS_TMP"
  if wants quant; then  # short: before the long generation runs
    run_phase "bench_quant_matmul" 60 bench.log "$PY" bench/bench_quant_matmul.py --out "$RESULTS_TMP/bench_quant_matmul.json"
    run_phase "quant_load" 45 bench.log "$PY" bench/quant_load.py --device cuda --layers 4 --out "$RESULTS_TMP"
  fi
  # bench_generate: whole generations timed with CUDA events (1 warm-up + --repeats); the exact
  # mode's one-token-a-step schedule is timed on 1 step a block (--max-steps 8) and scaled; the
  # reference on 1 step a block, 1 timed run. --time-budget stops starting runs; the cap kills.
  GEN=("$PY" bench/bench_generate.py --device cuda --dtype bfloat16 --block-length 32 --out "$RESULTS_TMP")
  if wants generate; then
    run_phase "bench_generate iLLaDA-8B exact" 110 bench.log "${GEN[@]}" --synthetic illada-8b --suffix exact \
      --prompt-len 256,512 --gen-length 256,512 --batch 1,8,32 --max-steps 8 --repeats 2 --time-budget 85
    run_phase "bench_generate iLLaDA-8B threshold, caches" 70 bench.log "${GEN[@]}" --synthetic illada-8b \
      --suffix modes --prompt-len 256 --gen-length 256 --batch 1 --schedules steps,threshold \
      --modes exact,prefix,dual --paths engine --repeats 1 --time-budget 50
    run_phase "bench_generate LLaDA-8B exact" 80 bench.log "${GEN[@]}" --synthetic llada-8b --suffix exact \
      --prompt-len 256,512 --gen-length 256,512 --batch 1,8 --max-steps 8 --repeats 2 --time-budget 55
  fi
  if wants quant || wants generate; then
    run_phase "bench_generate iLLaDA-8B quantized" 80 bench.log "${GEN[@]}" --synthetic illada-8b --suffix quant \
      --quant int8,int4,fp8 --paths engine --prompt-len 256 --gen-length 256 --batch 1,8 --max-steps 8 \
      --repeats 2 --time-budget 55
  fi
  wants serve && run_phase "load_test" 60 bench.log "$PY" bench/load_test.py --json "$RESULTS_TMP/load_test.json"
  compgen -G "$RESULTS_TMP/*.json" >/dev/null && \
    "$PY" bench/results.py pack "$OUT_DIR/results.json" "$RESULTS_TMP"/*.json
else
  SUMMARY+=("bench|SKIPPED (no CUDA build)|0|-")
fi
rm -rf "$RESULTS_TMP"

# ------------------------------------------------------------------ 5. the rest of the suite
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)
if [ "$BUILT" -eq 1 ]; then
  run_phase "pytest (rest of the suite)" 170 test_rest.log \
    "$PY" -m pytest python_tests -q -k "not cuda" -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"}
else
  SUMMARY+=("rest of the suite|SKIPPED (no CUDA build)|0|-")
fi

# ------------------------------------------------------------------ 5. summary
{
  echo
  echo "## gpu_check summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1), ${SECONDS}s)"
  echo
  echo "| phase | status | seconds | log |"
  echo "|---|---|---|---|"
  for row in "${SUMMARY[@]}"; do IFS='|' read -r a b c d <<<"$row"; echo "| $a | $b | $c | $d |"; done
  if [ -f "$OUT_DIR/test_cuda.log" ]; then
    echo; echo "tests (test_cuda_*.py): $(grep -E '[0-9]+ (passed|failed)' "$OUT_DIR/test_cuda.log" | tail -1)"
    grep -h "bf16 vs float32" "$OUT_DIR/test_cuda.log" | sed 's/^/  /'
  fi
  [ -f "$OUT_DIR/test_rest.log" ] && echo "tests (rest): $(grep -E '[0-9]+ (passed|failed)' "$OUT_DIR/test_rest.log" | tail -1)"
  if [ -f "$OUT_DIR/bench.log" ]; then  # the markdown tables the benchmarks print last
    echo; echo "bench (random weights of the real shapes, bfloat16; all rows in results.json):"
    grep -E '^\|' "$OUT_DIR/bench.log"
  fi
  echo; [ "$FAILED" -eq 0 ] && echo "RESULT: all phases passed" || echo "RESULT: some phases FAILED or were skipped"
} | tee "$OUT_DIR/summary.md"
exit "$FAILED"
