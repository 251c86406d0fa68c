#!/usr/bin/env bash
# The whole GPU check of issue 25 in one go, for a lent GPU machine (docs/gpu.md, "Measuring"):
# its python3 has torch with CUDA, numpy, pandas, pyarrow, pyyaml and mpi4py, no network and no
# install of ctgrid. Runs from the repository root in <= 10 minutes:
#
#   1. the GPU tests (tests/test_gpu.py, marked gpu) and the device tests (tests/test_device.py);
#   2. benchmarks/bench_gpu.py (BENCH lines: evaluation, packs of 45/135/1000, an MNIST CT epoch,
#      the final grid's synthetic datasets vs the CPU's bootstrap intervals, the penalties grid).
#
# Everything goes to $OUT (default ./gpu_check_out): check.log (all output), pytest.log,
# bench_gpu.txt, bench_gpu.json, the grids' key results and logs.
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --quick # here: a check of this script (minutes)
#
# Without pytest on the machine: put a pure-Python pytest into ./.gpu-pylib beforehand
# (`.venv/bin/pip install --target .gpu-pylib pytest`) and carry it; without ../shared/data:
# copy the data to ./.gpu-data (`cp -r ../shared/data .gpu-data`) and carry it. Missing either,
# the script says so and goes on with what it can run.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
QUICK=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        *) echo "gpu_check: unknown argument $1 (allowed: --device D, --quick)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-570}     # seconds for everything (the machine gives 10 minutes a command)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import pytest' 2>/dev/null && [ -d .gpu-pylib ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/.gpu-pylib"
fi
for d in "${CTGRID_DATA:-}" "$PWD/shared/data" "$PWD/../shared/data" "$PWD/.gpu-data"; do
    if [ -n "$d" ] && [ -d "$d" ]; then export CTGRID_DATA=$d; break; fi
done
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}   # before any cuBLAS handle exists
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
if [ "$DEVICE" = cpu ]; then export CTGRID_GPU_TESTS_DEVICE=cpu; fi

echo "gpu_check: $(date -u +%FT%TZ) on $(hostname), device $DEVICE ${QUICK[*]:-}, budget ${BUDGET}s"
echo "gpu_check: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), data ${CTGRID_DATA:-none}"
"$PY" - <<'EOF' || { echo "gpu_check: python3 cannot import torch and ctgrid"; exit 2; }
import torch, ctgrid
print(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available "
      f"{torch.cuda.is_available()}, {torch.cuda.device_count()} device(s)"
      + "".join(f"; cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# --- 1. tests -------------------------------------------------------------------------------
TESTS_RC=skipped
if "$PY" -c 'import pytest' 2>/dev/null; then
    T=$(( $(left) / 3 )); [ "$T" -gt 200 ] && T=200
    timeout "$T" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device.py \
        -rs -W ignore::RuntimeWarning 2>&1 | tee "$OUT/pytest.log" | tail -40
    TESTS_RC=${PIPESTATUS[0]}
    [ "$TESTS_RC" = 124 ] && echo "gpu_check: the tests ran past ${T}s (timeout)"
else
    echo "gpu_check: pytest is not installed (see the header: .gpu-pylib): tests not run"
fi

# --- 2. benchmarks --------------------------------------------------------------------------
B=$(( $(left) - 15 ))
if [ "$B" -lt 60 ]; then
    echo "gpu_check: ${B}s left: bench_gpu.py not run"; BENCH_RC=skipped
else
    timeout "$B" "$PY" benchmarks/bench_gpu.py --device "$DEVICE" "${QUICK[@]}" --out "$OUT" \
        --budget $(( B - 10 )) 2>&1 | tee "$OUT/bench_gpu.txt"
    BENCH_RC=${PIPESTATUS[0]}
fi
echo "gpu_check: tests rc $TESTS_RC, bench rc $BENCH_RC, $(( $(date +%s) - START ))s in all; files in $OUT"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
