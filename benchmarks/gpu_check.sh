#!/usr/bin/env bash
# Every GPU speed check in one call (H100/H200, torch preinstalled, no downloads); at most 8 minutes.
# Prepare on the development machine first:  bash benchmarks/prepare_gpu_carry.sh
# Then on the device:  bash benchmarks/gpu_check.sh   (carry data/fashion-mnist and data/pydeps)
# Results go to $OUT (or /tmp/dogo-gpu): env.txt, engine_smoke.log, bench_losses_gpu.{json,log},
# bench_train_gpu.{json,log}, compile_smoke.log, levers_gpu{,_cnn}.{json,log}, packing_gpu.{json,log}. Each step has its own time limit, and a failing step
# does not stop the next one; the exit status is the number of failed steps.
# Dry run of the plumbing on a CPU machine (tiny sizes):
#   DEVICE=cpu SMOKE_LIMIT=1024 LOSS_ARGS="--batches 64" \
#   TRAIN_ARGS="--images 64 --batches 8 --steps 1 --warmup 0 --backbones resnet18 resnet18" \
#   LEVER_ARGS="--device cpu --levers eager_fp32 fused_adam --images 64 --batch-size 16 --warmup 0 --steps 1" \
#   CNN_LEVER_ARGS="--device cpu --images 1024 --batch-size 256 --warmup 0 --steps 1 --fit-images 1024" \
#   PACK_ARGS="--device cpu --images 64 --batch-size 16 --warmup 0 --steps 1" \
#   bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dogo-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export DEVICE=${DEVICE:-cuda}
# Installed packages win; the carried pure-Python copies only fill gaps.
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}:$(pwd)/data/pydeps"
export DOGO_DATA="$(pwd)/data"
failed=0
# The default steps fit a 9-minute window; STEPS=all adds the reference-loop comparison, the loss
# benchmark and the compile smoke (measured on an H200 on 2026-11-29: benchmarks/RESULTS.md).
ALL_STEPS="engine_smoke bench_losses_gpu bench_train_gpu compile_smoke levers_gpu levers_gpu_cnn packing_gpu"
STEPS=${STEPS:-engine_smoke levers_gpu levers_gpu_cnn packing_gpu}
[ "$STEPS" = all ] && STEPS=$ALL_STEPS
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) echo "== $name: not in STEPS, skipped"; return 0 ;; esac
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - start)) s"
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
}

{
  date -Is; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import sys, torch, torchvision; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__); print(torch.cuda.get_device_name(0))"
  "$PY" -c "import yaml, tqdm, numpy, PIL; print('yaml', yaml.__file__); print('tqdm', tqdm.__file__)"
  nproc; free -g | head -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. The engine's CUDA path end to end (bf16 autocast, channels_last, TF32, kNN monitor, checkpoint):
#    one short epoch of two CNN peers.
step engine_smoke 80 "$PY" - <<'PYCODE'
import os, tempfile, time
from dogo.config import from_dict
from dogo.train import Trainer
cfg = {"device": os.environ["DEVICE"], "data": {"limit": int(os.environ.get("SMOKE_LIMIT", 8192)), "eval_limit": 2000},
       "peers": [{"name": "small", "width": 16}, {"name": "large", "width": 64}],
       "train": {"epochs": 1, "batch_size": 512, "knn_every": 1, "progress": False}}
t = time.perf_counter()
result = Trainer(from_dict(cfg), tempfile.mkdtemp()).fit()
print("fit", round(time.perf_counter() - t, 1), "s", {k: v for k, v in result.items() if k != "peers"})
print(result["peers"])
assert all(p["total_loss"] == p["total_loss"] for p in result["peers"].values())
PYCODE

# 2. Case (c) on the GPU: the loss functions alone; every case is attempted, CUDA OOM is caught.
step bench_losses_gpu 80 "$PY" benchmarks/bench_losses.py --device "$DEVICE" --out "$OUT/bench_losses_gpu.json" ${LOSS_ARGS:-}

# 3. Case (b): ResNet-18 + ResNet-50 peers at 32 px, batch 256 and 512, ours against the reference.
step bench_train_gpu 300 "$PY" benchmarks/bench_train.py --case gpu --device "$DEVICE" --breakdown --out "$OUT/bench_train_gpu.json" \
  ${TRAIN_ARGS:-}

# 4. torch.compile on the engine (optional speed path): a few steps of two CNN peers, compile included.
step compile_smoke 80 "$PY" - <<'PYCODE'
import os, tempfile, time, torch
from dogo.config import from_dict
from dogo.train import Trainer
cfg = {"device": os.environ["DEVICE"], "data": {"limit": 4096},
       "peers": [{"name": "small", "width": 16}, {"name": "large", "width": 64}],
       "train": {"epochs": 1, "batch_size": 512, "knn_every": 0, "progress": False, "compile": True}}
trainer = Trainer(from_dict(cfg), tempfile.mkdtemp())
t = time.perf_counter()
for _ in range(3):
    losses = trainer.train_step(trainer.images[:512])
if torch.cuda.is_available():
    torch.cuda.synchronize()
print("compiled: 3 steps", round(time.perf_counter() - t, 1), "s, losses", [float(l["total"]) for l in losses])
PYCODE

# 5. Speed levers (fused Adam, compile, CUDA graphs, batch 1024, R18 alone) against eager, with the
#    losses of each lever's first step against the eager float32 step; then one whole fit epoch
#    (kNN monitor, checkpoint) against the bare step loop, and the CNN pair's 60k-image epoch.
step levers_gpu 240 "$PY" benchmarks/bench_levers.py --case gpu --out "$OUT/levers_gpu.json" ${LEVER_ARGS:-}
step levers_gpu_cnn 120 "$PY" benchmarks/bench_levers.py --case gpu_cnn --fit-overhead fused_adam \
  --out "$OUT/levers_gpu_cnn.json" ${CNN_LEVER_ARGS:-}

# 6. Packing (what `dogo grid --parallel N` does): the R18 + R50 step loop in 1, then 2 and 3
#    processes at once on the one GPU; summed images/s against one process.
step packing_gpu 100 "$PY" benchmarks/bench_levers.py --case gpu --levers fused_adam --pack 2 3 \
  --out "$OUT/packing_gpu.json" ${PACK_ARGS:-}

# A device sends back at most 8 files: the logs travel as one archive beside env.txt and the JSONs.
( cd "$OUT" && ls ./*.log >/dev/null 2>&1 && tar czf logs.tar.gz ./*.log && rm -f ./*.log )
ls "$OUT"
echo "failed steps: $failed"
exit $failed
