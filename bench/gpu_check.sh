#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and torch installed (no
# downloads): build against the installed torch, run the CUDA tests, the
# benchmark at full size, then compute-sanitizer over a small CUDA subset.
# Logs and results go to $OUT when set, else bench/results/. Each step has a
# time box so the whole check ends inside about 7 minutes. STEPS (default
# "tests bench sanitizer") picks the steps after the build.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
START=$(date +%s)
left() { echo $((${BUDGET_S:-400} - ($(date +%s) - START))); }
status=0
STEPS=${STEPS:-tests bench sanitizer}
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
step() { echo "== $1 ($(($(date +%s) - START)) s)"; }

step "device"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

step "build (16 jobs, sm_90)"
rm -f fastreg/_C*.so
if ! MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTREG_CUDA=1 \
    $PY setup.py build_ext --inplace > "$OUT_DIR/build.log" 2>&1; then
  tail -40 "$OUT_DIR/build.log"
  echo "BUILD FAILED"
  exit 1
fi
$PY -m fastreg | tee -a "$OUT_DIR/env.txt"

if want tests; then
  step "CUDA tests"
  timeout ${TESTS_S:-170} $PY -m pytest tests -q -k "${TEST_FILTER:-cuda or other_device}" -p no:cacheprovider \
    > "$OUT_DIR/tests.log" 2>&1
  rc=$?
  grep -E "^(FAILED|ERROR)" "$OUT_DIR/tests.log" | head -20
  tail -3 "$OUT_DIR/tests.log"
  [ $rc -eq 0 ] || { echo "CUDA TESTS FAILED (rc $rc)"; status=1; }
fi

if want bench; then
  step "benchmark (2^26 elements)"
  timeout $(( $(left) - ${AFTER_BENCH_S:-90} )) $PY bench/run.py --device cuda --out "$OUT_DIR" \
    --families ${FAMILIES:-activations,dropout,batch} --compile-dtypes bfloat16 ${BENCH_OPS:+--ops $BENCH_OPS} \
    --compile-ops relu,gelu,bias_relu_dropout,bias_gelu_dropout,dropout_add \
    > "$OUT_DIR/bench.log" 2>&1
  rc=$?
  tail -75 "$OUT_DIR/bench.log"
  [ $rc -eq 0 ] || { echo "BENCHMARK FAILED (rc $rc)"; status=1; }
fi

want sanitizer || { step "done, status $status"; exit $status; }
step "compute-sanitizer memcheck + racecheck (small CUDA subset)"
SUBSET_A="cuda_unaligned or (prelu_matches_torch and cuda and float32)"
SUBSET_D="cuda and float32 and ((bitwise and 0.3) or bias_act_dropout_matches)"
{
  timeout $(( $(left) / 2 )) compute-sanitizer --tool memcheck --error-exitcode 99 \
    $PY -m pytest tests/test_activations.py -q -p no:cacheprovider -k "$SUBSET_A"
  echo "memcheck activations rc $?"
  timeout $(( $(left) / 2 )) compute-sanitizer --tool memcheck --error-exitcode 99 \
    $PY -m pytest tests/test_dropout.py -q -p no:cacheprovider -k "$SUBSET_D"
  echo "memcheck dropout rc $?"
  timeout $(( $(left) / 2 )) compute-sanitizer --tool memcheck --error-exitcode 99 \
    $PY -m pytest tests/test_batch.py -q -p no:cacheprovider -k "cuda and (cutout_bitwise or random_erasing_bitwise or mix_bitwise or same_on_cpu) and not float64"
  echo "memcheck batch rc $?"
  timeout $(( $(left) - 5 )) compute-sanitizer --tool racecheck --error-exitcode 99 \
    $PY -m pytest tests/test_dropout.py tests/test_activations.py -q -p no:cacheprovider \
    -k "cuda and float32 and (bias_act_dropout_matches or prelu_matches) and not bfloat"
  echo "racecheck rc $?"
} > "$OUT_DIR/sanitizer.log" 2>&1
grep -E "ERROR SUMMARY|rc [0-9]+|passed|failed" "$OUT_DIR/sanitizer.log"

step "done, status $status"
exit $status
