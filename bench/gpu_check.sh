#!/usr/bin/env bash
# One-call GPU verification of illada_rt: build, every CUDA test file, the engine, serving, benchmarks.
#
#   bash bench/gpu_check.sh --first-contact OUT_DIR   # build + every CUDA test + short benches: ~6 min on an H100/H200
#   bash bench/gpu_check.sh OUT_DIR                   # full: longer benches, then the rest of the suite: ~9 min
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh --first-contact OUT_DIR   # dry run on the CPU (what CI runs)
#
# OUT_DIR defaults to $OUT, else ./gpu_check_out. Phases, in the order a first contact must learn them
# (bench/README.md has the caps and how they were estimated):
#   environment, build, extension check, collect; kernel tests, engine tests, serving tests, load test;
#   benchmarks (bench_kernels, bench_quant_matmul, quant_load, bench_generate custom vs torch, ...);
#   the rest of the suite (full mode only; CPU CI runs it too).
# After EVERY phase summary.md is rewritten and results.json repacked, so a run cut short returns what it
# learned. Each phase has a cap, and all share a budget (GPU_CHECK_BUDGET_S: first-contact 330 s, full
# 540 s); a phase without time left is SKIPPED (no time left), one cut by the budget CUT SHORT: neither is
# a failure. Exit status: 1 when a phase FAILED or hit its own cap (TIMEOUT), else 0.
# OUT_DIR gets 8 flat files at most: summary.md, results.json, setup.log, test_kernels.log,
# test_engine.log, test_serving.log, bench.log, test_rest.log.
#
# Environment: GPU_CHECK_DEVICE (cuda | cpu), GPU_CHECK_BUDGET_S, GPU_CHECK_BENCH (benchmark groups, default
# kernels,quant,generate,serve), ILLADA_CUDA_ARCHS (default 90a on cuda), MAX_JOBS (default nproc), PYTHON.
# shellcheck disable=SC2054  # comma lists are single arguments here (--batch 1,8,32)
set -u -o pipefail

# ------------------------------------------------------------------ which tests each phase runs
# By folder and marker, never by file name: a GPU phase runs the tests marked GPU_MARK (pyproject.toml's
# `cuda`) in its folders, one pytest process per test file the collect phase finds there; the rest of the
# suite is every test without the marker. The only place that names them: change these when
# python_tests/ is reorganised.
GPU_MARK=cuda
KERNEL_TESTS=(python_tests/ops)
ENGINE_TESTS=(python_tests/decoding)
SERVING_TESTS=(python_tests/serving)
REST_TESTS=(python_tests)   # full mode: this, less the GPU_MARK tests (-m "not $GPU_MARK")
GPU_TESTS=("${KERNEL_TESTS[@]}" "${ENGINE_TESTS[@]}" "${SERVING_TESTS[@]}")

# ------------------------------------------------------------------ arguments and settings
MODE=full OUT_ARG=""
for arg in "$@"; do
  case "$arg" in
    --first-contact) MODE=first-contact ;;
    --full) MODE=full ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg (--first-contact, --full, OUT_DIR)" >&2; exit 2 ;;
    *) OUT_ARG="$arg" ;;
  esac
done
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac
OUT_DIR="${OUT_ARG:-${OUT:-./gpu_check_out}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)" || exit 2
cd "$(dirname "$0")/.." || exit 2   # the repository root

BUDGET_S="${GPU_CHECK_BUDGET_S:-$([ "$MODE" = first-contact ] && echo 330 || echo 540)}"
RESERVE_S=10       # kept back from every cap for the last summary
MIN_PHASE_S=15     # a phase that would get less is skipped
BENCH="${GPU_CHECK_BENCH:-kernels,quant,generate,serve}"
NPROC="$(nproc 2>/dev/null || echo 4)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
PY_DIR="$(dirname "$PY")"
export PATH="$PY_DIR:$PATH"   # cmake / ninja installed beside the interpreter (a venv not activated)
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
export MAX_JOBS="${MAX_JOBS:-$NPROC}" PYTHONUNBUFFERED=1 COLUMNS=240
[ "$DEVICE" = cuda ] && export ILLADA_CUDA_ARCHS="${ILLADA_CUDA_ARCHS:-90a}"   # dry run: the build's own default

STATE="$(mktemp -d)"          # phases.tsv, run.txt, per-file pytest logs, result JSONs, carried wheels
RESULTS="$STATE/results"
mkdir -p "$RESULTS"
trap 'rm -rf "$STATE"' EXIT
for f in summary.md results.json setup.log test_kernels.log test_engine.log test_serving.log bench.log test_rest.log; do
  rm -f "$OUT_DIR/$f"
done
: >"$STATE/phases.tsv"
FAILED=0
BUILT=0 SEES_DEVICE=0

# ------------------------------------------------------------------ bookkeeping
cap() { [ "$MODE" = first-contact ] && echo "$1" || echo "$2"; }   # cap FIRST_CONTACT FULL ("-": not in that mode)
left() { echo $((BUDGET_S - SECONDS)); }

write_summary() {
  "$PY" bench/results.py gpu-summary "$STATE" "$OUT_DIR" "$SECONDS" 2>>"$OUT_DIR/setup.log" || {
    { echo "# gpu_check $MODE (plain summary: bench/results.py failed, see setup.log)"; echo
      echo "phase | status | seconds | cap | log"; cut -f1-5 "$STATE/phases.tsv" | tr '\t' '|'; } >"$OUT_DIR/summary.md"
  }
}

pack_results() {
  compgen -G "$RESULTS/*.json" >/dev/null || return 0
  "$PY" bench/results.py pack "$OUT_DIR/results.json" "$RESULTS"/*.json >>"$OUT_DIR/bench.log" 2>&1 || true
}

# record NAME STATUS SECONDS CAP LOG [PYTEST_LOGS]: one row of the summary, rewritten with results.json now
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$STATE/phases.tsv"
  case "$2" in FAILED*|TIMEOUT*) FAILED=1 ;; esac
  echo "### $1: $2 (${3}s)"
  pack_results
  write_summary
}

# limit_for CAP: the seconds a phase may run now, capped by the budget left
limit_for() {
  local room=$(( $(left) - RESERVE_S ))
  echo $(( room < $1 ? room : $1 ))
}

# status_of RC LIMIT CAP
status_of() {
  case "$1" in
    0) echo ok ;;
    124|137) if [ "$2" -lt "$3" ]; then echo "CUT SHORT (budget left ${2}s)"; else echo "TIMEOUT (cap ${3}s)"; fi ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}

# should_run NAME CAP LOG [WHY_NOT]: records the skip and returns 1 when the phase does not run
should_run() {
  if [ "$2" = - ]; then record "$1" "SKIPPED (full mode only)" 0 - "$3"; return 1; fi
  if [ "$(limit_for "$2")" -lt "$MIN_PHASE_S" ]; then record "$1" "SKIPPED (no time left)" 0 "$2" "$3"; return 1; fi
  if [ -n "${4:-}" ]; then record "$1" "SKIPPED ($4)" 0 "$2" "$3"; return 1; fi
}

# phase NAME CAP LOG CMD...: CMD with its output in LOG (and on stdout unless QUIET is set), within
# min(CAP, budget left); an argument {time_budget} becomes the phase's limit less 20 s (the benchmarks'
# --time-budget: they stop starting runs in time to print their tables)
phase() {
  local name="$1" cap="$2" log="$3"; shift 3
  local limit start=$SECONDS rc args=()
  limit=$(limit_for "$cap")
  for a in "$@"; do args+=("${a//\{time_budget\}/$((limit > 40 ? limit - 20 : limit / 2))}"); done
  echo "### $name ($(date -u +%T), limit ${limit}s of cap ${cap}s): ${args[*]}" | tee -a "$OUT_DIR/$log"
  if [ -n "${QUIET:-}" ]; then  # the output in the log only
    timeout -s INT -k 15 "$limit" "${args[@]}" >>"$OUT_DIR/$log" 2>&1
    rc=$?
  else
    timeout -s INT -k 15 "$limit" "${args[@]}" 2>&1 | tee -a "$OUT_DIR/$log"
    rc=${PIPESTATUS[0]}
  fi
  record "$name" "$(status_of "$rc" "$limit" "$cap")" $((SECONDS - start)) "$cap" "$log"
  return "$rc"
}

# workers_for TARGET TOTAL NTARGETS: pytest-xdist workers for one target (a file or folder): its share of
# the phase's collected tests (the collect phase) with at least 8 tests a worker, or, not collected,
# an equal share of the cores; 1 means no xdist
workers_for() {
  local n total="$2" w
  n=$(grep -c "^$1::" "$STATE/collected.txt" 2>/dev/null) || n=0
  [ "$XDIST" -eq 1 ] || { echo 1; return; }
  if [ "$total" -gt 0 ]; then
    w=$(( (2 * NPROC * n + total) / (2 * total) ))
    [ "$w" -gt $((n / 8)) ] && w=$((n / 8))
  else
    w=$((NPROC / $3))
  fi
  echo $(( w < 1 ? 1 : w ))
}

# pytest_phase NAME CAP LOG PER_TEST_TIMEOUT_S PYTEST_ARG... -- TARGET...: one pytest process per target,
# all at once (a CUDA error that poisons a process stays within its file), each with its share of the
# cores; a target's log joins LOG as soon as it ends, and the summary counts its tests.
pytest_phase() {
  local name="$1" cap="$2" log="$3" per_test="$4"; shift 4
  local extra=() targets=() limit start=$SECONDS total=0 sum_w=0 i n
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do extra+=("$1"); shift; done
  shift
  targets=("$@")
  limit=$(limit_for "$cap")
  local workers=() stems=() plogs=() collected=()
  for f in "${targets[@]}"; do
    n=$(grep -c "^$f::" "$STATE/collected.txt" 2>/dev/null) || n=0
    total=$((total + n))
  done
  for f in "${targets[@]}"; do
    workers+=("$(workers_for "$f" "$total" "${#targets[@]}")")
    sum_w=$((sum_w + workers[-1]))
  done
  local omp=$(( NPROC / sum_w > 1 ? NPROC / sum_w : 1 ))
  echo "### $name ($(date -u +%T), limit ${limit}s of cap ${cap}s): ${#targets[@]} targets, $total tests" \
       "collected, workers ${workers[*]}, OMP_NUM_THREADS=$omp" | tee -a "$OUT_DIR/$log"
  for i in "${!targets[@]}"; do
    local f="${targets[$i]}" stem
    stem="$(echo "$f" | tr '/' '_')"; stem="${stem%.py}"
    stems+=("$stem"); plogs+=("$STATE/$stem.log"); collected+=("")
    local args=(-v --tb=short -p no:cacheprovider "${extra[@]}")
    [ "${workers[$i]}" -gt 1 ] && args+=(-n "${workers[$i]}")
    [ "$TIMEOUT_PLUGIN" -eq 1 ] && args+=(--timeout "$per_test" -o timeout_method=thread)
    (
      echo "### $f: pytest ${args[*]}"
      timeout -s INT -k 15 "$limit" env OMP_NUM_THREADS="$omp" "$PY" -m pytest "$f" "${args[@]}" 2>&1
      echo $? >"$STATE/$stem.rc"
    ) >"$STATE/$stem.log" 2>&1 &
  done
  local remaining=${#targets[@]} worst=0 file_rc rc
  while [ "$remaining" -gt 0 ]; do
    wait -n 2>/dev/null; rc=$?
    for i in "${!targets[@]}"; do
      if [ -z "${collected[$i]}" ] && { [ -f "$STATE/${stems[$i]}.rc" ] || [ "$rc" -eq 127 ]; }; then
        collected[i]=1; remaining=$((remaining - 1))
        file_rc=$(cat "$STATE/${stems[$i]}.rc" 2>/dev/null || echo 1)
        cat "${plogs[$i]}" >>"$OUT_DIR/$log"
        echo "### ${targets[$i]}: exit $file_rc, $(tail -1 "${plogs[$i]}" | tr -d '=' | sed 's/^ *//')"
        # the phase's status: a timeout first, then a failure
        case "$file_rc" in 0) ;; 124|137) worst=$file_rc ;; *) [ "$worst" -eq 0 ] && worst=$file_rc ;; esac
      fi
    done
    [ "$rc" -eq 127 ] && break   # no child left
  done
  record "$name" "$(status_of "$worst" "$limit" "$cap")" $((SECONDS - start)) "$cap" "$log" "${plogs[*]}"
}

wants() { [[ ",$BENCH," == *",$1,"* ]]; }

# files_in FOLDER...: the test files the collect phase found GPU_MARK tests in, under each folder (one
# pytest process each); a folder with none collected (no collect phase) is one target itself
files_in() {
  local d found
  for d in "$@"; do
    found="$(grep -o "^$d/[^:]*\.py" "$STATE/collected.txt" 2>/dev/null | sort -u)"
    if [ -n "$found" ]; then echo "$found"; else echo "$d"; fi
  done
}

# ------------------------------------------------------------------ 1. environment (setup.log)
start=$SECONDS
{
  echo "### gpu_check $MODE on $DEVICE, $(date -u +%FT%TZ), in $(pwd), output $OUT_DIR, budget ${BUDGET_S}s, $NPROC CPUs"
  echo "### git: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(git status --porcelain 2>/dev/null | wc -l) changed files"
  if [ "$DEVICE" = cuda ]; then nvidia-smi || echo "nvidia-smi: not available"; else echo "### dry run: no GPU expected"; fi
  echo "### python: $PY ($("$PY" --version 2>&1))"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
  echo "### nvcc: $(command -v nvcc || echo missing) $(nvcc --version 2>/dev/null | tail -1)"
  echo "### cmake: $(cmake --version 2>/dev/null | head -1 || echo missing); ninja: $(ninja --version 2>/dev/null || echo missing)"
  echo "### memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB, " $7 " GiB available"}'); disk: $(df -h . | awk 'NR==2 {print $4 " free"}')"
} 2>&1 | tee "$OUT_DIR/setup.log"

# Carried wheels (.whl/, see bench/gpu_wheels.sh): those whose distribution is not installed go to a
# folder of their own on PYTHONPATH (no index, no dependencies resolved: carry what is missing).
if compgen -G ".whl/*.whl" >/dev/null; then
  mapfile -t TO_INSTALL < <("$PY" - .whl/*.whl <<'EOF'
import importlib.metadata as md, os, sys
for path in sys.argv[1:]:
    try:
        md.version(os.path.basename(path).split("-")[0])
    except md.PackageNotFoundError:
        print(path)
EOF
  )
  if [ "${#TO_INSTALL[@]}" -gt 0 ]; then
    echo "### installing carried wheels: ${TO_INSTALL[*]}" | tee -a "$OUT_DIR/setup.log"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$STATE/site" "${TO_INSTALL[@]}" \
      2>&1 | tail -5 | tee -a "$OUT_DIR/setup.log"
    export PYTHONPATH="$STATE/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "### carried wheels: all already installed" | tee -a "$OUT_DIR/setup.log"
  fi
fi

# missing_modules NAME...: those not importable (found, not imported: one quick interpreter start)
missing_modules() {
  "$PY" -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' \
    "$@" 2>/dev/null || echo "$@"
}
read -r -a MISSING <<<"$(missing_modules torch pybind11 safetensors tokenizers jinja2 pytest numpy)"
for tool in cmake ninja; do command -v "$tool" >/dev/null || MISSING+=("$tool"); done
[ "$DEVICE" = cuda ] && ! command -v nvcc >/dev/null && MISSING+=(nvcc)
read -r -a OPTIONAL_MISSING <<<"$(missing_modules httpx starlette uvicorn xdist pytest_timeout pynvml)"
read -r -a SERVE_MISSING <<<"$(missing_modules httpx starlette uvicorn)"
XDIST=1 TIMEOUT_PLUGIN=1
[[ " ${OPTIONAL_MISSING[*]} " == *" xdist "* ]] && XDIST=0
[[ " ${OPTIONAL_MISSING[*]} " == *" pytest_timeout "* ]] && TIMEOUT_PLUGIN=0

GPU_NAME="$([ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
cat >"$STATE/run.txt" <<EOF
mode=$MODE
device=${GPU_NAME:-$([ "$DEVICE" = cuda ] && echo "a GPU nvidia-smi does not name" || echo "the CPU (dry run, GPU_CHECK_DEVICE=cpu)")}
budget=$BUDGET_S
started=$(date -u +%FT%TZ)
git=$(git rev-parse --short HEAD 2>/dev/null || echo '?') + $(git status --porcelain 2>/dev/null | wc -l) changed files
python=python $("$PY" -c 'import platform; print(platform.python_version())' 2>/dev/null)
torch=torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)
cpus=$NPROC
workers=$([ "$XDIST" -eq 1 ] && echo "$NPROC (pytest-xdist)" || echo "1 (no pytest-xdist)")
EOF

if [ "${#OPTIONAL_MISSING[@]}" -gt 0 ]; then
  echo "### optional, missing: ${OPTIONAL_MISSING[*]} (httpx/starlette/uvicorn: the load test; xdist: parallel" \
       "tests; pytest_timeout: per-test timeouts; pynvml: clocks in the results)" | tee -a "$OUT_DIR/setup.log"
fi
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "### missing: ${MISSING[*]}: carry their wheels in .whl/ (bench/gpu_wheels.sh, bench/README.md)" | tee -a "$OUT_DIR/setup.log"
  record environment "FAILED (missing: ${MISSING[*]})" $((SECONDS - start)) - setup.log
else
  record environment "ok" $((SECONDS - start)) - setup.log
fi

# ------------------------------------------------------------------ 2. build, 3. extension check, 4. collect
BUILD_CMD=("$PY" -m pip install --no-build-isolation --no-deps -v -e .)
if should_run "build (archs ${ILLADA_CUDA_ARCHS:-default}, $MAX_JOBS jobs)" "$(cap 240 240)" setup.log \
     "$([ "${#MISSING[@]}" -gt 0 ] && echo "environment incomplete")"; then
  QUIET=1 phase "build (archs ${ILLADA_CUDA_ARCHS:-default}, $MAX_JOBS jobs)" "$(cap 240 240)" setup.log \
    "${BUILD_CMD[@]}" && BUILT=1
  [ "$BUILT" -eq 1 ] || tail -40 "$OUT_DIR/setup.log"
fi

if should_run "extension check" "$(cap 60 60)" setup.log "$([ "$BUILT" -eq 1 ] || echo "no build")"; then
  phase "extension check" "$(cap 60 60)" setup.log "$PY" -c "
import torch
from illada_rt import ops
info, (count, why) = ops.build_info(), ops.cuda_devices()
print('build_info', info)
print('extension CUDA devices', count, why)
print('torch sees', [torch.cuda.get_device_name(i) + ' capability ' + str(torch.cuda.get_device_capability(i))
                     for i in range(torch.cuda.device_count())])
if '$DEVICE' == 'cuda':
    assert info['cuda'], 'the extension was built without CUDA kernels'
    assert count > 0, 'the extension CUDA runtime sees no device: ' + why
" && SEES_DEVICE=1
fi
NO_DEVICE="$([ "$SEES_DEVICE" -eq 1 ] || echo "no build that sees the $DEVICE")"

# The CUDA test files' tests, counted once: the test phases share the cores by these counts.
if should_run "collect" "$(cap 60 60)" setup.log "$NO_DEVICE"; then
  phase "collect" "$(cap 60 60)" setup.log "$PY" -m pytest --collect-only -q -p no:cacheprovider -m "$GPU_MARK" \
    "${GPU_TESTS[@]}" >"$STATE/collected.txt"
  for f in "${GPU_TESTS[@]}"; do echo "  $f: $(grep -c "^$f/" "$STATE/collected.txt") tests"; done | tee -a "$OUT_DIR/setup.log"
fi

# ------------------------------------------------------------------ 5.-8. the CUDA test files
# every kernel family on the device against its reference; no --maxfail: one run lists every broken kernel
C=$(cap 120 150)
mapfile -t TARGETS < <(files_in "${KERNEL_TESTS[@]}")
should_run "kernel tests" "$C" test_kernels.log "$NO_DEVICE" &&
  pytest_phase "kernel tests" "$C" test_kernels.log 60 -rfEs -m "$GPU_MARK" -- "${TARGETS[@]}"
# the engine: custom kernels against the reference (float32 token for token), bf16 agreement, graphs vs
# eager; -rP keeps what passing tests print (the bf16 agreement lines)
C=$(cap 120 150)
mapfile -t TARGETS < <(files_in "${ENGINE_TESTS[@]}")
should_run "engine tests" "$C" test_engine.log "$NO_DEVICE" &&
  pytest_phase "engine tests" "$C" test_engine.log 120 -rfEsP -m "$GPU_MARK" -- "${TARGETS[@]}"
C=$(cap 90 90)
mapfile -t TARGETS < <(files_in "${SERVING_TESTS[@]}")
should_run "serving tests" "$C" test_serving.log "$NO_DEVICE" &&
  pytest_phase "serving tests" "$C" test_serving.log 120 -rfEs -m "$GPU_MARK" -- "${TARGETS[@]}"

# load test: the HTTP server on the device; on a GPU a batched answer may round differently from the
# same request alone (see test_cuda_serving.py), so 97% of the tokens must agree there, all on the CPU
LOAD=("$PY" bench/load_test.py --device "$DEVICE" --json "$RESULTS/load_test.json")
if [ "$DEVICE" = cuda ]; then
  LOAD+=(--clients 4 --agreement 0.97 --duration "$(cap 5 15)")
else
  LOAD+=(--clients 2 --duration 2 --gen-length 16 --block-length 8 --cases 4)
fi
WHY=""; [ "${#SERVE_MISSING[@]}" -gt 0 ] && WHY="no ${SERVE_MISSING[*]}: bash bench/gpu_wheels.sh, carry .whl"
wants serve || WHY="GPU_CHECK_BENCH"
[ -n "$NO_DEVICE" ] && WHY="$NO_DEVICE"
C=$(cap 75 90)
should_run "load test" "$C" test_serving.log "$WHY" && phase "load test" "$C" test_serving.log "${LOAD[@]}"

# ------------------------------------------------------------------ 9. benchmarks (bench.log, results.json)
if [ "$DEVICE" = cuda ]; then
  KERNELS_BENCH=(--device cuda) QUANT_BENCH=(--device cuda)
  if [ "$MODE" = first-contact ]; then KERNELS_BENCH+=(--repeats 5) QUANT_BENCH+=(--m 32 256 4096 --warmup 3 --repeats 10); fi
  QUANT_LOAD=(--device cuda --layers 4)
  GEN=("$PY" bench/bench_generate.py --device cuda --dtype bfloat16 --block-length 32 --out "$RESULTS")
  MODEL=(--synthetic illada-8b) STEPS=(--max-steps 8) QUANTS=(--quant int8,int4,fp8)
  LEN1=(--prompt-len 256 --gen-length 256) LEN2=(--prompt-len 256,512 --gen-length 256,512)
  BATCH_ALL=(--batch 1,8,32) BATCH_FEW=(--batch 1,8)
else  # the dry run: the same runs on tiny shapes
  KERNELS_BENCH=(--device cpu --repeats 2 --matmul-size 256 --copy-mib 16)
  QUANT_BENCH=(--device cpu --warmup 1 --repeats 2 --group-size 32)
  QUANT_LOAD=(--device cpu --layers 1 --formats int8,int4)
  GEN=("$PY" bench/bench_generate.py --device cpu --dtype float32 --block-length 8 --n-layers 2 --ref-max-steps 2
       --matmul-size 256 --copy-mib 16 --out "$RESULTS")
  MODEL=(--synthetic small) STEPS=(--max-steps 2)
  QUANTS=(--quant int8,fp8)   # int4's groups of 128 inputs do not divide the small shape's FFN (704)
  LEN1=(--prompt-len 8 --gen-length 16) LEN2=(--prompt-len 8,16 --gen-length 16)
  BATCH_ALL=(--batch 1,2) BATCH_FEW=(--batch 1,2)
fi

WHY="$NO_DEVICE"; wants kernels || WHY="${WHY:-GPU_CHECK_BENCH}"
C=$(cap 60 90)
should_run "bench_kernels" "$C" bench.log "$WHY" &&
  phase "bench_kernels" "$C" bench.log "$PY" bench/bench_kernels.py "${KERNELS_BENCH[@]}" --out "$RESULTS"
WHY="$NO_DEVICE"; wants quant || WHY="${WHY:-GPU_CHECK_BENCH}"
C=$(cap 45 60)
should_run "bench_quant_matmul" "$C" bench.log "$WHY" &&
  phase "bench_quant_matmul" "$C" bench.log "$PY" bench/bench_quant_matmul.py "${QUANT_BENCH[@]}" \
    --out "$RESULTS/bench_quant_matmul.json"
C=$(cap - 60)
should_run "quant_load" "$C" bench.log "$WHY" &&
  phase "quant_load" "$C" bench.log "$PY" bench/quant_load.py "${QUANT_LOAD[@]}" --out "$RESULTS"

# bench_generate: the exact mode's one-token-a-step schedule timed on 1 step a block (--max-steps) and
# scaled; the reference on 1 step a block; --time-budget stops starting runs, the cap kills
WHY="$NO_DEVICE"; wants generate || WHY="${WHY:-GPU_CHECK_BENCH}"
if [ "$MODE" = first-contact ]; then   # one small generation per path and kernels choice
  KERNELS_RUN=(--suffix custom_vs_torch "${LEN1[@]}" --batch 1)
else
  KERNELS_RUN=(--suffix exact "${LEN2[@]}" "${BATCH_ALL[@]}")
fi
C=$(cap 90 90)
should_run "bench_generate custom vs torch kernels" "$C" bench.log "$WHY" &&
  phase "bench_generate custom vs torch kernels" "$C" bench.log "${GEN[@]}" "${MODEL[@]}" "${KERNELS_RUN[@]}" \
    "${STEPS[@]}" --repeats 2 --kernels custom,torch --time-budget "{time_budget}"
C=$(cap - 45)
should_run "bench_generate threshold, caches" "$C" bench.log "$WHY" &&
  phase "bench_generate threshold, caches" "$C" bench.log "${GEN[@]}" "${MODEL[@]}" --suffix modes "${LEN1[@]}" \
    --batch 1 --schedules steps,threshold --modes exact,prefix,dual --paths engine --repeats 1 \
    --time-budget "{time_budget}"
WHY_Q="$NO_DEVICE"; { wants quant || wants generate; } || WHY_Q="${WHY_Q:-GPU_CHECK_BENCH}"
C=$(cap - 40)
should_run "bench_generate quantized" "$C" bench.log "$WHY_Q" &&
  phase "bench_generate quantized" "$C" bench.log "${GEN[@]}" "${MODEL[@]}" --suffix quant "${QUANTS[@]}" \
    --paths engine "${LEN1[@]}" "${BATCH_FEW[@]}" "${STEPS[@]}" --repeats 2 --time-budget "{time_budget}"

# ------------------------------------------------------------------ 10. the rest of the suite (full mode)
# on the CPU, so one process over the whole folder (less the GPU_MARK tests), xdist over every core
REST_ARGS=(-rfEs -m "not $GPU_MARK")
C=$(cap - 120)
should_run "rest of the suite" "$C" test_rest.log "$([ "$BUILT" -eq 1 ] || echo "no build")" &&
  pytest_phase "rest of the suite" "$C" test_rest.log 300 "${REST_ARGS[@]}" -- "${REST_TESTS[@]}"

# ------------------------------------------------------------------ the summary, printed last
write_summary
echo
cat "$OUT_DIR/summary.md"
echo
sed -n '1,/^RESULT/p' "$OUT_DIR/summary.md"   # the phase table again, last in the output
exit "$FAILED"
