"""Write a tiny version of a grid file, to check a study's plumbing on a CPU in about a minute.

    python benchmarks/tiny_grid.py configs/grids/gpu_fmnist_r18_r50.yaml /tmp/tiny.yaml

The same cells and comparisons, with every peer replaced by a small CNN (width 4, 8, ...), 256 training
images, one epoch, the first seed only, and kNN, linear probe and t-SNE on 100 images (and the
predictions on those); the grid is named NAME_tiny so that its results never mix with the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from dogo.grid_file import load_grid

TINY_OVERRIDES = ["data.limit=256", "data.eval_limit=200", "train.epochs=1", "train.batch_size=128",
                  "train.knn_k=20", "train.knn_every=1", "train.warmup_epochs=0"]
TINY_EVAL = {"protocols": ["knn", "linear", "tsne"], "limit": 100, "seeds": [0], "tsne_points": 30}


def tiny_grid(source: str | Path) -> dict:
    """The tiny variant of the grid file ``source``, as plain data."""
    grid = load_grid(source)
    data = yaml.safe_load(Path(source).read_text())
    data["name"] = f"{grid.name}_tiny"
    data["seeds"] = grid.spec.seeds[:1]
    data["eval"] = dict(TINY_EVAL)
    # predictions on protocols the tiny evaluation does not run are left out (the grid would refuse them)
    data["predictions"] = [p for p in data.get("predictions", []) if p["protocol"] in TINY_EVAL["protocols"]]
    for cell in data["cells"]:
        peers = grid.config(cell["name"], grid.spec.seeds[0]).peers
        small = [f"peers.{i}.{key}={value}" for i in range(len(peers))
                 for key, value in (("backbone", "cnn"), ("width", 4 * (i + 1)))]
        cell["overrides"] = [*cell.get("overrides", []), *TINY_OVERRIDES, *small]
        cell["estimate_s"] = 60
    return data


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    Path(target).write_text(yaml.safe_dump(tiny_grid(source), sort_keys=False))
    print(f"wrote {target}")
