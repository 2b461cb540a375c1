"""Speed of the evaluation suite, against the targets of the evaluation issue (2-core CPU):

    feature extraction, Fashion-MNIST train + test (70k), small CNN   < 60 s
    linear probe (fast protocol) on 60k x 512 features                 < 30 s
    kNN (k = 200) of 10k queries against a 60k bank                    < 10 s
    t-SNE of 5k points                                                  < 60 s

    python benchmarks/bench_eval.py                    # untrained CNN of the default width (32)
    python benchmarks/bench_eval.py --run runs/NAME    # the first peer of a trained run
    python benchmarks/bench_eval.py --out bench_eval.json

What is timed is the kit's own code path: ``dogo.evaluate.peer_features`` (eval mode, BatchNorm folded,
channels-last, batches of 1024, no cache), ``dogo.probes.linear_probe`` (standardise, weight decay
chosen on a 15 % validation split from 5 values, refit on all 60k, score on 10k),
``dogo.features.knn_accuracy`` and ``dogo.evaluate.tsne_embed`` (PCA to 50, scikit-learn Barnes-Hut).
kNN is timed twice: on the 512-d features and on the CNN's own 128-d features.
Speed does not depend on training, so an untrained network is as good as a trained one here.

The small CNN (width 32) gives 128-d features; the 512-d features of the probe and kNN rows are a
fixed random ReLU layer on them (post-ReLU, correlated, like a wide network's pooled features), unless
``--run`` points to a network whose features are already 512-d or wider.

Every row reports wall-clock seconds and process CPU seconds (all threads), and the load average
around it: on a shared machine the wall clock is an upper bound of what the code needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ensure_repo_on_path, machine_description  # noqa: E402

ensure_repo_on_path()

import torch  # noqa: E402

TARGETS = {"extraction": 60.0, "linear_probe": 30.0, "knn": 10.0, "tsne": 60.0, "authors_probe": math.nan}


def timed(name: str, fn, results: list[dict], **info):
    """Run ``fn()``, append {name, wall_s, cpu_s, load before/after, **info} to results; return its value."""
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    row = {"name": name, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
           "load_before": load_before, "load_after": os.getloadavg()[0], **info}
    results.append(row)
    print(f"{name}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU (load {load_before:.1f} -> "
          f"{row['load_after']:.1f}) {info}", flush=True)
    return value


def untrained_checkpoint(folder: Path, width: int) -> Path:
    """A checkpoint of one untrained CNN peer on Fashion-MNIST (the format the trainer writes)."""
    from dogo.config import from_dict
    from dogo.models import build_model

    cfg = from_dict({"peers": [{"name": "cnn", "width": width}]})
    torch.manual_seed(0)
    model = build_model(cfg.peers[0], 1, cfg.data.image_size)
    path = folder / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"config": cfg.to_dict(), "peers": {"cnn": {"model": model.state_dict()}}, "epoch": 0,
                "finished": False}, path)
    return path


def widen(feats: torch.Tensor, dim: int = 512, seed: int = 0) -> torch.Tensor:
    """relu(standardised features @ R) with a fixed Gaussian R: features of width ``dim``."""
    if feats.shape[1] >= dim:
        return feats[:, :dim].contiguous()
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(feats.shape[1], dim, generator=gen) / feats.shape[1] ** 0.5
    x = (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)
    return torch.relu(x @ proj)


def run(run_dir: str | None = None, width: int = 32, train_limit: int | None = None, test_limit: int | None = None,
        queries: int = 10_000, tsne_points: int = 5_000, device: str = "cpu", authors: bool = False) -> dict:
    from dogo.data import load_dataset
    from dogo.evaluate import clear_cache, load_run, peer_features, tsne_embed
    from dogo.features import knn_accuracy
    from dogo.probes import linear_probe

    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = run_dir or untrained_checkpoint(Path(tmp) / "untrained", width)
        models = load_run(source, device=device)
        peer = next(iter(models))
        train = load_dataset("fashion_mnist", "train", limit=train_limit)
        test = load_dataset("fashion_mnist", "test", limit=test_limit)
        clear_cache()
        n_images = len(train) + len(test)

        def extract():
            return peer_features(models, peer, train), peer_features(models, peer, test)

        ftr, fte = timed("extraction", extract, results, images=n_images, peer=peer,
                         feature_dim=int(models[peer].feature_dim))
        results[-1]["images_per_s"] = n_images / results[-1]["wall_s"]
        xtr, xte = widen(ftr), widen(fte)
        probe = timed("linear_probe", lambda: linear_probe(xtr, train.labels, xte, test.labels, device=device),
                      results, train=tuple(xtr.shape), test=tuple(xte.shape))
        results[-1].update(top1=probe["top1"], weight_decay=probe["weight_decay"], iterations=probe["iterations"])
        if authors:  # informative only: the released code's recipe (Adam, batch 64, 100 epochs)
            slow = timed("authors_probe", lambda: linear_probe(xtr, train.labels, xte, test.labels, protocol="authors",
                                                               device=device),
                         results, train=tuple(xtr.shape), test=tuple(xte.shape))
            results[-1].update(top1=slow["top1"], best_epoch=slow["best_epoch"])
        q = min(queries, len(xte))
        # kNN cost is one (queries x bank x dim) float32 product: timed on the 512-d features and on
        # the small CNN's own features.
        for bank, query in ((xtr, xte), (ftr, fte)) if ftr.shape[1] != xtr.shape[1] else ((xtr, xte),):
            knn = timed("knn", lambda b=bank, x=query: knn_accuracy(b, train.labels, x[:q], test.labels[:q], 10, k=200),
                        results, bank=tuple(bank.shape), queries=q)
            results[-1]["top1"] = knn["top1"]
        n = min(tsne_points, len(fte))
        timed("tsne", lambda: tsne_embed(xte, test.labels, n, seed=0), results, points=n, dim=xte.shape[1])
    clear_cache()
    return {"machine": machine_description(device), "source": str(run_dir or f"untrained CNN width {width}"),
            "results": results}


def markdown(report: dict) -> str:
    lines = ["| step | size | wall (s) | CPU (s) | target (s) | load avg | notes |", "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        size = {"extraction": f"{r.get('images')} images -> {r.get('feature_dim')}-d",
                "linear_probe": f"{r['train'][0]} x {r['train'][1]} -> {r['test'][0]} test" if "train" in r else "",
                "authors_probe": f"{r['train'][0]} x {r['train'][1]} -> {r['test'][0]} test" if "train" in r else "",
                "knn": f"{r.get('queries')} queries, bank {r['bank'][0]} x {r['bank'][1]}" if "bank" in r else "",
                "tsne": f"{r.get('points')} points, {r.get('dim')}-d"}[r["name"]]
        notes = ""
        if r["name"] == "extraction":
            notes = f"{r['images_per_s']:.0f} images/s"
        elif r["name"] == "linear_probe":
            notes = f"top-1 {r['top1']:.2f} %, wd {r['weight_decay']:g}, {r['iterations']} L-BFGS iterations"
        elif r["name"] == "authors_probe":
            notes = f"top-1 {r['top1']:.2f} %, best epoch {r['best_epoch']}"
        elif r["name"] == "knn":
            notes = f"top-1 {r['top1']:.2f} %"
        target = "-" if math.isnan(TARGETS[r["name"]]) else f"{TARGETS[r['name']]:.0f}"
        lines.append(f"| {r['name']} | {size} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {target} | "
                     f"{r['load_before']:.1f} -> {r['load_after']:.1f} | {notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run folder or checkpoint (default: an untrained CNN)")
    parser.add_argument("--width", type=int, default=32, help="width of the untrained CNN (default 32)")
    parser.add_argument("--train-limit", type=int, default=None, help="fewer train images (smoke tests)")
    parser.add_argument("--test-limit", type=int, default=None, help="fewer test images (smoke tests)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--tsne-points", type=int, default=5_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--authors", action="store_true", help="also time the authors' probe protocol (slow)")
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = run(args.run, args.width, args.train_limit, args.test_limit, args.queries, args.tsne_points, args.device,
                 args.authors)
    m = report["machine"]
    print(f"\n{m['date']}: {m['cpu']}, {m['logical_cores']} cores, {m['torch_threads']} torch threads, "
          f"torch {m['torch']}; {report['source']}\n")
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
