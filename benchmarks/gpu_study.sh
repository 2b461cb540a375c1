#!/usr/bin/env bash
# The GPU reproduction study in one call on a lent H200 (torch preinstalled, nothing to download):
# configs/grids/gpu_fmnist_r18_r50.yaml (ResNet-18 and ResNet-50 alone and together, Fashion-MNIST at
# 32 px, 15 epochs, every protocol), three cells at a time on the one GPU, within a time budget.
# Cells already in results/gpu_fmnist_r18_r50/ (committed from an earlier call) are skipped, so calls
# can follow each other until the grid is complete. Each cell is evaluated on the device right after
# training; only the result JSONs (and the report) come back.
# Prepare on the development machine:  bash benchmarks/prepare_gpu_carry.sh
# Then:  run(command="bash benchmarks/gpu_study.sh", carry=["data/fashion-mnist", "data/pydeps"], timeout_s=600)
# and copy $OUT/results/gpu_fmnist_r18_r50/*.json into results/gpu_fmnist_r18_r50/ and commit them.
# Dry run of the plumbing on a CPU (tiny CNNs instead of ResNets, one seed, a minute):
#   GPU_STUDY_TINY=1 OUT=/tmp/gpu-study bash benchmarks/gpu_study.sh
# Settings: OUT, PYTHON, TIME_BUDGET (seconds, default 500), PARALLEL (default 3), RUNS (run folders).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dogo-gpu-study}
PY=${PYTHON:-python}
BUDGET=${TIME_BUDGET:-500}
PARALLEL=${PARALLEL:-3}
RUNS=${RUNS:-/tmp/dogo-gpu-study-runs}
mkdir -p "$OUT"
# Installed packages win; the carried pure-Python copies only fill gaps.
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}:$(pwd)/data/pydeps"
export DOGO_DATA="$(pwd)/data"

GRID=configs/grids/gpu_fmnist_r18_r50.yaml
NAME=gpu_fmnist_r18_r50
RESULTS=results/$NAME
if [ -n "${GPU_STUDY_TINY:-}" ]; then
  # The same cells with tiny CNN peers, 256 images, one epoch, one seed, kNN and linear probes only.
  NAME=gpu_fmnist_r18_r50_tiny
  RESULTS=$OUT/tiny-results/$NAME
  "$PY" benchmarks/tiny_grid.py "$GRID" "$OUT/$NAME.yaml" || exit 1
  GRID=$OUT/$NAME.yaml
fi

{
  date -Is
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, torchvision, sklearn; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'sklearn', sklearn.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PY" -m dogo grid "$GRID" --results "$RESULTS" --runs "$RUNS" --dry-run | tee "$OUT/plan_before.txt"
# The time budget keeps the grid from starting a cell that would not finish; the outer limit is a
# safety net only (a killed cell leaves its checkpoint, not a result).
timeout $((BUDGET + 60)) "$PY" -m dogo grid "$GRID" --results "$RESULTS" --runs "$RUNS" --parallel "$PARALLEL" \
  --time-budget "$BUDGET" > "$OUT/grid.log" 2>&1
rc=$?
tail -n 40 "$OUT/grid.log"
echo "grid exit status $rc"
"$PY" -m dogo grid "$GRID" --results "$RESULTS" --runs "$RUNS" --dry-run | tee "$OUT/plan_after.txt"

mkdir -p "$OUT/results/$NAME"
cp "$RESULTS"/*.json "$OUT/results/$NAME/" 2>/dev/null
ls -la "$OUT/results/$NAME"
"$PY" -m dogo report "$OUT/results/$NAME" --grid "$GRID" --figures "$OUT/figures" > "$OUT/report.log" 2>&1 \
  || tail -n 20 "$OUT/report.log"
exit $rc
