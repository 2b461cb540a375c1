#!/usr/bin/env bash
# Put what benchmarks/gpu_check.sh needs into git-ignored folders, to travel with the working tree to a
# GPU machine where nothing can be downloaded (torch and torchvision are preinstalled there):
#   data/fashion-mnist/  the four Fashion-MNIST .gz files (30 MB)
#   data/pydeps/         pure-Python copies of PyYAML and tqdm, which dogo imports and torch does not
#                        bring (PyYAML's C speed-up is left out: its pure-Python code is used).
# Then run on the device, carrying both folders:
#   run(command="bash benchmarks/gpu_check.sh", carry=["data/fashion-mnist", "data/pydeps"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

src=""
for d in "${DOGO_DATA:-}" data /usr/share/datasets; do
  if [ -n "$d" ] && [ -f "$d/fashion-mnist/train-images-idx3-ubyte.gz" ]; then src="$d/fashion-mnist"; break; fi
done
[ -n "$src" ] || { echo "Fashion-MNIST .gz files not found (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
mkdir -p data/fashion-mnist
if [ "$(realpath "$src")" != "$(realpath data/fashion-mnist)" ]; then
  cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz data/fashion-mnist/
fi

rm -rf data/pydeps && mkdir -p data/pydeps
for pkg in yaml tqdm; do
  dir=$("$PY" -c "import $pkg, os; print(os.path.dirname($pkg.__file__))")
  cp -r "$dir" data/pydeps/
done
find data/pydeps \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
du -sh data/fashion-mnist data/pydeps
