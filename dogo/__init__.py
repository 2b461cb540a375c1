"""dogo: Distill on the Go, a teaching and reproduction kit for online mutual similarity distillation
in self-supervised learning (SimCLR, SimSiam).

The curated API, so that a notebook's import cell can be ``import dogo`` plus a few names::

    cfg = dogo.load_config("configs/fashion_mnist_quick.yaml")
    result = dogo.Trainer(cfg).fit()        # or dogo.train_or_reuse(cfg, "runs/mine")
    table = dogo.evaluate_run(result["run_dir"], ["knn", "linear"])

``dogo.train`` is the training module (``dogo.train.train`` its one-call entry point), so that the
module and a function never share a name.

Names from the heavier modules (training, evaluation, data) are imported on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .config import Config, baseline_of, config_differences, load_config, load_config_from  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, DogoError, NonFiniteLossError  # noqa: E402
from .losses import nt_xent, similarity_distill, simsiam_loss, uniform_similarity_distill  # noqa: E402

# name -> the module that defines it, imported when the name is first used
_LAZY = {
    "Trainer": "train", "resume": "train",
    "load_dataset": "data", "ImageDataset": "data",
    "load_run": "runs", "train_or_reuse": "runs",
    "evaluate_run": "evaluate", "compare_runs": "evaluate",
    "extract_features": "features", "knn_accuracy": "features",
    "cohort_losses": "objective",
    "load_published": "published",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'dogo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Config", "load_config", "load_config_from", "baseline_of", "config_differences",
    "nt_xent", "simsiam_loss", "similarity_distill", "uniform_similarity_distill",
    "DogoError", "ConfigError", "DataError", "CheckpointError", "NonFiniteLossError",
    *_LAZY,
]
