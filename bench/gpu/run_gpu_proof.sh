#!/usr/bin/env bash
# GPU proof of anycnn's CuPy backend, for a lent GPU (the device tool); see bench/gpu/README.md.
#
#   bash bench/gpu/run_gpu_proof.sh [all|tests|timing|compile]    (default: all)
#
#   tests    pytest --backend cupy --backend numpy -q: the proof of correctness (agreement with
#            the CPU, no host transfers, CUDA-graph capture: tests/test_cuda_proof.py and every
#            cuda-marked test)                          ->  $OUT/pytest.txt
#   timing   bench/gpu/timing.py (speed against PyTorch CUDA) ->  $OUT/timing.{json,txt}
#   compile  bench/gpu/compile_check.py with the machine's nvcc for sm_90 -> $OUT/compile.txt
#   always   nvidia-smi -L and the versions                            ->  $OUT/nvidia-smi.txt
#
# Every step runs even when an earlier one failed; $OUT/steps.txt lists what each returned.
# Packages the GPU image lacks (array-api-compat, array-api-strict) travel as wheels in .whl/.
set -u
stage="${1:-all}"
OUT="${OUT:-$PWD/bench/gpu/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/backends${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "== $(date +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }

if ! "$PY" -c "import array_api_compat, array_api_strict" >/dev/null 2>&1; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    step "installed carried wheels: $(ls .whl)"
  else
    step "WARNING: array_api_compat / array_api_strict missing and no .whl/ carried"
  fi
fi

{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv
  "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0], sys.executable)
for name in ("numpy", "scipy", "cupy", "torch", "array_api_compat", "array_api_strict", "pytest",
             "hypothesis"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:
        print(name, "MISSING:", error)
try:
    import anycnn.backend.registry as registry
    record = registry.lookup("cupy")
    print("anycnn cupy backend:", "available" if record.available else record.unavailable_reason)
except Exception as error:
    print("anycnn import failed:", error)
EOF
} > "$OUT/nvidia-smi.txt" 2>&1
step "nvidia-smi and versions: rc=$? ($(head -1 "$OUT/nvidia-smi.txt"))"

if [ "$stage" = all ] || [ "$stage" = tests ]; then
  set -o pipefail
  timeout "${TEST_TIMEOUT:-420}" "$PY" -m pytest --backend cupy --backend numpy -q \
    -p no:cacheprovider 2>&1 | tee "$OUT/pytest.txt" | tail -40
  step "pytest --backend cupy --backend numpy: rc=$?"
  set +o pipefail
fi

if [ "$stage" = all ] || [ "$stage" = timing ]; then
  set -o pipefail
  timeout "${TIMING_TIMEOUT:-420}" "$PY" bench/gpu/timing.py --out "$OUT" ${TIMING_ARGS:-} 2>&1 \
    | tee "$OUT/timing.txt" | tail -60
  step "bench/gpu/timing.py: rc=$?"
  set +o pipefail
fi

if [ "$stage" = compile ]; then
  "$PY" bench/gpu/compile_check.py --arch sm_90 --out "$OUT/compile.json" > "$OUT/compile.txt" 2>&1
  step "compile_check (nvcc sm_90): rc=$? ($(tail -1 "$OUT/compile.txt"))"
fi

cat "$OUT/steps.txt"
