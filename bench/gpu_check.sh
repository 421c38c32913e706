#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and torch installed (no
# downloads): build against the installed torch, run the CUDA tests, the
# benchmark at full size, then compute-sanitizer over a small CUDA subset.
# The benchmark writes bench/results/latest/cuda-<model>.json/.png and appends
# to bench/results/history.csv (copied into the archive's results/ folder).
# Each step has a time box so the whole check ends inside BUDGET_S (400 s).
#   STEPS     steps after the build (default "errors tests bench sanitizer")
#   FAMILIES  benchmark families, one run each (default dropout,activations,batch)
#   SANITIZE  sanitizer subsets (default "batch dropout activations"; "racecheck" adds one)
#   BUILD=0   reuse a fastreg/_C*.so already built on this machine
# Logs go to build/gpu_check/ by default. When $OUT is set (the
# device tool), they go to a work folder and are packed into $OUT/gpu_check.tgz
# after every step, so what finished comes back even if a later step is cut off.
# It stops at the first step that fails, printing that step's log.
#   bench/gpu_check.sh --changes   only lists the commits that touched CUDA code since the
#                                  last GPU results (needs the git history, which a device
#                                  machine's copy of the tree may lack: run it here first)
set -u
cd "$(dirname "$0")/.."

# The commits that changed what the CUDA build compiles (the kernels, the headers they
# include, the build) since the newest commit that added GPU results to bench/results.
cuda_changes() {
  if ! git rev-parse --git-dir > /dev/null 2>&1; then
    echo "(no git history in this copy of the tree: run bench/gpu_check.sh --changes in a checkout)"
    return
  fi
  local last
  # the commit of the newest GPU row of the results' history (what that run measured)
  last=$(python3 - << 'PY'
import csv
rows = [r for r in csv.DictReader(open("bench/results/history.csv")) if r["device"].startswith("cuda")]
print(rows[-1]["commit"].replace("-dirty", "") if rows else "")  # appended in time order
PY
)
  if [ -z "$last" ] || ! git rev-parse -q --verify "$last^{commit}" > /dev/null; then
    echo "(no GPU results with a known commit in bench/results/history.csv)"
    return
  fi
  echo "last GPU results measured: $(git log -1 --date=short --format='%h %ad %s' "$last")"
  local changes
  changes=$(git log --date=short --format='%h %ad %s' "$last"..HEAD -- ':(glob)csrc/cuda/**' ':(glob)csrc/*.h' setup.py)
  if [ -z "$changes" ]; then echo "no CUDA-touching commit since"; else
    echo "CUDA-touching commits since ($(echo "$changes" | wc -l)), not yet run on a GPU:"
    echo "$changes"
  fi
}
if [ "${1:-}" = "--changes" ]; then cuda_changes; exit 0; fi

if [ -n "${OUT:-}" ]; then OUT_DIR=/tmp/gpu_check; else OUT_DIR=build/gpu_check; fi
mkdir -p "$OUT_DIR"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/gpu_check.tgz" -C "$OUT_DIR" . ; return 0; }
PY=${PYTHON:-python3}
START=$(date +%s)
left() { echo $((${BUDGET_S:-400} - ($(date +%s) - START))); }
STEPS=${STEPS:-errors tests bench sanitizer}
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
step() { echo "== $1 ($(($(date +%s) - START)) s)" | tee -a "$OUT_DIR/steps.log"; }
# fail LOG WHAT: the step failed; print its log's end, pack, and stop.
fail() {
  echo "== FAILED: $2; the end of $1:" | tee -a "$OUT_DIR/steps.log"
  tail -60 "$1"
  pack
  exit 1
}

step "CUDA-touching commits since the last GPU results"
cuda_changes | tee "$OUT_DIR/changes.txt"

step "device"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

step "build (16 jobs, sm_90)"
if [ "${BUILD:-1}" = 0 ] && ls fastreg/_C*.so > /dev/null 2>&1; then
  echo "reusing $(ls fastreg/_C*.so)"
else
  rm -f fastreg/_C*.so
  MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTREG_CUDA=1 \
    $PY setup.py build_ext --inplace > "$OUT_DIR/build.log" 2>&1 || fail "$OUT_DIR/build.log" "build"
fi
$PY -m fastreg 2>&1 | tee -a "$OUT_DIR/env.txt"

if want errors; then
  step "error paths (a C++ exception from each backend reaches Python)"
  timeout 150 $PY bench/error_paths.py --gdb > "$OUT_DIR/errors.log" 2>&1 || fail "$OUT_DIR/errors.log" "error paths"
  cat "$OUT_DIR/errors.log"
  pack
fi

if want tests; then
  step "CUDA tests"
  par=""
  $PY -c "import xdist" 2> /dev/null && par="-n ${TEST_WORKERS:-8}"
  timeout ${TESTS_S:-170} $PY -m pytest tests -q -rfE $par -k "${TEST_FILTER:-cuda or other_device}" \
    -p no:cacheprovider > "$OUT_DIR/tests.log" 2>&1
  rc=$?
  grep -E "^(FAILED|ERROR)" "$OUT_DIR/tests.log" | head -30
  tail -3 "$OUT_DIR/tests.log"
  [ $rc -eq 0 ] || fail "$OUT_DIR/tests.log" "CUDA tests (rc $rc)"
  pack
fi

if want bench; then
  step "host path (microseconds to issue one small call)"
  timeout 60 $PY bench/host_path.py --device cuda > "$OUT_DIR/host.log" 2>&1 || fail "$OUT_DIR/host.log" "host path"
  cat "$OUT_DIR/host.log"
  step "in-place calls against torch's"
  timeout 45 $PY bench/inplace.py --device cuda --rounds 3 > "$OUT_DIR/inplace.log" 2>&1 ||
    fail "$OUT_DIR/inplace.log" "in-place calls"
  cat "$OUT_DIR/inplace.log"
  for fam in $(echo "${FAMILIES:-dropout,activations,batch}" | tr , ' '); do
    step "benchmark $fam"
    timeout $(( $(left) - ${AFTER_BENCH_S:-150} )) $PY bench/run.py --device cuda \
      --families $fam --compile-dtypes bfloat16 ${BENCH_OPS:+--ops $BENCH_OPS} \
      --compile-ops relu,gelu,bias_relu_dropout,bias_gelu_dropout,dropout_add \
      > "$OUT_DIR/bench-$fam.log" 2>&1
    rc=$?
    # the results as bench/results holds them: the latest files and history.csv with this run's rows
    mkdir -p "$OUT_DIR/results" && cp -r bench/results/latest bench/results/history.csv "$OUT_DIR/results/"
    sed -n '/^family/,$p' "$OUT_DIR/bench-$fam.log"
    [ $rc -eq 0 ] || fail "$OUT_DIR/bench-$fam.log" "benchmark $fam (rc $rc)"
    pack
  done
fi

want sanitizer || { step "done"; pack; exit 0; }
step "compute-sanitizer memcheck + racecheck (small CUDA subsets)"
SANITIZE=${SANITIZE:-batch dropout activations}
san() { case " $SANITIZE " in *" $1 "*) return 0 ;; esac; return 1; }
memcheck() {  # file, subset, seconds
  local t=$3
  [ "$t" -gt "$(left)" ] && t=$(left)
  [ "$t" -gt 5 ] || { echo "memcheck $1 skipped (no time left)"; return; }
  timeout "$t" compute-sanitizer --tool memcheck --error-exitcode 99 \
    $PY -m pytest "$1" -q -p no:cacheprovider -k "$2"
  local rc=$?
  echo "memcheck $1 rc $rc"
  [ $rc -eq 0 ] || [ $rc -eq 124 ] || sanitizer_rc=$rc  # 124: its time box ran out
}
sanitizer_rc=0
{
  san batch && memcheck tests/test_cutout_erasing.py "cuda and float32 and (cutout_bitwise \
    or random_erasing_bitwise)" ${SAN_ERASE_S:-30}
  san batch && memcheck tests/test_mix.py "cuda and float32 and ((mix_bitwise and switch) \
    or mix_same_on_cpu)" ${SAN_MIX_S:-30}
  # every dropout-family op, and bias+act+dropout through its mask (relu) and input (gelu)
  # paths: all the activations do not finish in 45 s under memcheck
  san dropout && memcheck tests/test_dropout.py "cuda and float32 and bitwise and 0.3" ${SAN_DROPOUT_S:-25}
  san dropout && memcheck tests/test_fused_dropout.py "cuda and float32 and \
    bias_act_dropout_matches and (gelu or relu) and not leaky" ${SAN_FUSED_S:-20}
  san activations && memcheck tests/test_activation_values.py \
    "cuda_unaligned or (backward_matches_torch and cuda and float32 and relu)" ${SAN_ACT_S:-28}
  san activations && memcheck tests/test_prelu.py \
    "prelu_matches_torch and cuda and float32" ${SAN_PRELU_S:-12}
  if san racecheck; then
    timeout $(( $(left) - 5 )) compute-sanitizer --tool racecheck --error-exitcode 99 \
      $PY -m pytest tests/test_fused_dropout.py tests/test_prelu.py -q -p no:cacheprovider \
      -k "cuda and float32 and (bias_act_dropout_matches or prelu_matches) and not bfloat"
    rc=$?
    echo "racecheck rc $rc"
    [ $rc -eq 0 ] || [ $rc -eq 124 ] || sanitizer_rc=$rc
  fi
  echo "sanitizer_rc $sanitizer_rc"
} > "$OUT_DIR/sanitizer.log" 2>&1
grep -E "ERROR SUMMARY|rc [0-9]+|passed|failed" "$OUT_DIR/sanitizer.log"
grep -q "^sanitizer_rc 0$" "$OUT_DIR/sanitizer.log" || fail "$OUT_DIR/sanitizer.log" "compute-sanitizer"
pack

step "done"
exit 0
