#!/usr/bin/env bash
# The GPU reproduction study in one call on a lent H200 (torch preinstalled, nothing to download):
# configs/grids/gpu_fmnist_r18_r50.yaml (ResNet-18 and ResNet-50 alone and together, Fashion-MNIST at
# 32 px, 15 epochs, every protocol), three cells at a time on the one GPU, within a time budget.
# Cells already in results/gpu_fmnist_r18_r50/ (committed from an earlier call) are skipped, so calls
# can follow each other until the grid is complete. Each cell is evaluated on the device right after
# training; only the result JSONs (and the report) come back.
# Prepare on the development machine:  bash benchmarks/prepare_gpu_carry.sh
# Then:  run(command="bash benchmarks/gpu_study.sh", carry=["data/fashion-mnist", "data/pydeps"], timeout_s=600)
# then unpack $OUT/results.tar.gz (results/gpu_fmnist_r18_r50/*.json, the report, figures/) into the
# repository and commit the JSONs. Files that come back: env.txt, plan_before.txt, grid.log, plan_after.txt,
# report.log, results.tar.gz (the device returns at most 8).
# Dry run of the plumbing on a CPU (tiny CNNs instead of ResNets, one seed, a minute):
#   GPU_STUDY_TINY=1 OUT=/tmp/gpu-study bash benchmarks/gpu_study.sh
# The follow-up grid (ResNet-18 with and without ResNet-50 at NT-Xent temperature 0.2), once the first is complete:
#   GRID=configs/grids/gpu_fmnist_r18_tau02.yaml ADOPT=results/gpu_fmnist_r18_r50 bash benchmarks/gpu_study.sh
# Settings: GRID (a grid file named as its grid, default the first), ADOPT (result folders to adopt the same
# experiments from, space-separated; ignored in the tiny dry run), OUT, PYTHON, TIME_BUDGET (seconds, default
# 500), PARALLEL (default 3), RUNS (run folders),
# SPEED: speed-only settings for every cell, chosen from what gpu_check.sh measured, e.g.
#   SPEED="train.compile=true train.compile_scope=step train.compile_mode=reduce-overhead"
# (the same experiments: results keep their config hash; see `dogo grid --help`).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dogo-gpu-study}
PY=${PYTHON:-python}
BUDGET=${TIME_BUDGET:-500}
PARALLEL=${PARALLEL:-3}
RUNS=${RUNS:-/tmp/dogo-gpu-study-runs}
SPEED_ARGS=()
[ -n "${SPEED:-}" ] && read -r -a SPEED_ARGS <<< "--speed $SPEED"
mkdir -p "$OUT"
# Installed packages win; the carried pure-Python copies only fill gaps.
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}:$(pwd)/data/pydeps"
export DOGO_DATA="$(pwd)/data"

GRID=${GRID:-configs/grids/gpu_fmnist_r18_r50.yaml}
NAME=$(basename "$GRID" .yaml)
RESULTS=results/$NAME
ADOPT_ARGS=()
for source in ${ADOPT:-}; do
  if [ -d "$source" ]; then ADOPT_ARGS+=(--adopt "$source"); else echo "ADOPT: no folder $source, nothing adopted from it"; fi
done
if [ -n "${GPU_STUDY_TINY:-}" ]; then
  # The same cells with tiny CNN peers, 256 images, one epoch, one seed, kNN and linear probes only.
  NAME=${NAME}_tiny
  RESULTS=$OUT/tiny-results/$NAME
  "$PY" benchmarks/tiny_grid.py "$GRID" "$OUT/$NAME.yaml" || exit 1
  GRID=$OUT/$NAME.yaml
  ADOPT_ARGS=()  # tiny cells are other experiments: nothing of a real grid's results is theirs
fi

{
  date -Is
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, torchvision, sklearn; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'sklearn', sklearn.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PY" -m dogo grid "$GRID" --results "$RESULTS" --runs "$RUNS" "${ADOPT_ARGS[@]}" "${SPEED_ARGS[@]}" --dry-run \
  | tee "$OUT/plan_before.txt"
# The time budget keeps the grid from starting a cell that would not finish; the outer limit is a
# safety net only (a killed cell leaves its checkpoint, not a result).
timeout $((BUDGET + 60)) "$PY" -m dogo grid "$GRID" --results "$RESULTS" --runs "$RUNS" --parallel "$PARALLEL" \
  --time-budget "$BUDGET" "${ADOPT_ARGS[@]}" "${SPEED_ARGS[@]}" > "$OUT/grid.log" 2>&1
rc=$?
tail -n 40 "$OUT/grid.log"
echo "grid exit status $rc"
"$PY" -m dogo grid "$GRID" --results "$RESULTS" --runs "$RUNS" --dry-run | tee "$OUT/plan_after.txt"

# At most 8 files come back from the device: the JSONs, the report and its figures travel as one archive.
STAGE=$(mktemp -d)
mkdir -p "$STAGE/results/$NAME"
cp "$RESULTS"/*.json "$STAGE/results/$NAME/" 2>/dev/null
ls -la "$STAGE/results/$NAME"
"$PY" -m dogo report "$STAGE/results/$NAME" --grid "$GRID" --figures "$STAGE/figures" > "$OUT/report.log" 2>&1 \
  || tail -n 20 "$OUT/report.log"
tar czf "$OUT/results.tar.gz" -C "$STAGE" .
exit $rc
