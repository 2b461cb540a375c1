"""Main job: SimCLR alone vs DoGo on Fashion-MNIST, then a comparison table and a figure.

With CUDA, the paper's pairing (a ResNet-18 alone, then beside a ResNet-50, 32 px, 10 epochs); on the
CPU, or with ``--cpu``, the small demo (a width-16 CNN alone, then beside a width-48 one).

1. Train the config's first peer alone (the SimCLR baseline).
2. Train the whole cohort (DoGo: the same small model beside a larger peer), same settings and seed.
3. Probe every encoder on frozen features of the full train/test splits (kNN, k = 200, t = 0.1;
   linear probe), next to the same probes on raw pixels: an encoder that does not beat raw pixels
   has not learned much.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .augment import normalize, to_float
from .config import Config, baseline_of, load_config
from .data import load_dataset
from .features import extract_features, knn_accuracy
from .probes import linear_probe
from .runs import encoder_transform, load_run

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist_quick.yaml"
GPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cifar10_r18_r50.yaml"
GPU_OVERRIDES = ["data.dataset=fashion_mnist", "data.image_size=32", "train.epochs=10", "train.warmup_epochs=1",
                 "train.knn_every=2", "train.checkpoint_every=5"]
SMOKE_OVERRIDES = ["data.limit=1024", "data.eval_limit=1000", "train.epochs=1", "train.batch_size=128"]


@dataclass
class Demo:
    """What the quickstart runs: a config, the overrides applied before the user's, and its description."""

    config: Path
    overrides: list[str]
    description: str
    figure: str


def choose_demo(config_file: str | None, cpu: bool, cuda_available: bool) -> Demo:
    """The ResNet pairing when CUDA is available (unless ``cpu``), else the small CPU demo; a config
    given by the user is always used as it is."""
    if config_file is not None:
        return Demo(Path(config_file), [], f"the config {config_file}", "figures/quickstart_comparison.png")
    if cuda_available and not cpu:
        return Demo(GPU_CONFIG, list(GPU_OVERRIDES), "the GPU demo: ResNet-18 alone vs ResNet-18 + ResNet-50 (DoGo), "
                    "Fashion-MNIST at 32 px, 10 epochs (--cpu runs the small CPU demo)",
                    "figures/quickstart_gpu_comparison.png")
    why = "--cpu" if cpu else "no CUDA device"
    return Demo(DEFAULT_CONFIG, ["device=cpu"] if cpu else [], f"the CPU demo ({why}): a width-16 CNN alone vs "
                "beside a width-48 CNN (DoGo), Fashion-MNIST, 4 epochs", "figures/quickstart_comparison.png")


def _probe(train_x, train_y, test_x, test_y, num_classes: int, k: int, t: float, seed: int) -> dict[str, float]:
    knn = knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k, t)["top1"]
    linear = linear_probe(train_x, train_y, test_x, test_y, protocol="fast", seed=seed)
    return {"knn_top1": knn, "linear_top1": linear["top1"]}


def run_quickstart(cfg: Config, output_dir: str | Path = "runs/quickstart", figure: str | Path | None = None,
                   eval_limit: int | None = None, progress: bool = True) -> list[dict]:
    """Train the baseline and the DoGo cohort into ``output_dir``, probe them, write the table and figure."""
    from .train import Trainer

    output_dir = Path(output_dir)
    if output_dir.exists():
        shutil.rmtree(output_dir)  # the quickstart always starts from scratch
    output_dir.mkdir(parents=True)
    baseline, dogo = baseline_of(cfg), cfg
    runs = {}
    for label, c in (("alone", baseline), ("dogo", dogo)):
        print(f"== training {label}: {', '.join(f'{p.name} ({p.backbone} w{p.width}, {p.objective})' for p in c.peers)}")
        started = time.perf_counter()
        result = Trainer(c, output_dir / label, progress=progress).fit()
        print(f"   {time.perf_counter() - started:.0f} s, run folder {result['run_dir']}")
        runs[label] = result

    d = cfg.data
    train = load_dataset(d.dataset, "train", d.root, eval_limit, d.download, cfg.seed)
    test = load_dataset(d.dataset, "test", d.root, eval_limit, d.download, cfg.seed)
    k, t = cfg.train.knn_k, cfg.train.knn_temperature
    print(f"== probing on frozen features: {len(train)} train / {len(test)} test images")
    rows = []
    raw = _probe(_pixels(train), train.labels, _pixels(test), test.labels, train.num_classes, k, t, cfg.seed)
    rows.append({"model": "raw pixels", "training": "none", **raw})
    for label in ("alone", "dogo"):
        models = load_run(runs[label]["run_dir"])
        transform = encoder_transform(models)
        for name, model in models.items():
            ftr = extract_features(model.backbone, train.images, transform)
            fte = extract_features(model.backbone, test.images, transform)
            scores = _probe(ftr, train.labels, fte, test.labels, train.num_classes, k, t, cfg.seed)
            spec = next(p for p in cfg.peers if p.name == name)
            training = f"{spec.objective} alone" if label == "alone" else f"DoGo ({spec.objective} + peer)"
            rows.append({"model": f"{name} ({spec.backbone} w{spec.width})", "peer": name, "run": label,
                         "training": training, **scores})
    table = format_table(rows)
    print(table)
    (output_dir / "comparison.md").write_text(table + "\n")
    (output_dir / "comparison.json").write_text(json.dumps(rows, indent=2))
    fig_path = output_dir / "comparison.png"
    draw_comparison(rows, {label: r["run_dir"] for label, r in runs.items()}, fig_path)
    if figure is not None:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig_path, figure)
    print(f"table: {output_dir / 'comparison.md'}   figure: {figure or fig_path}")
    return rows


def _pixels(ds) -> torch.Tensor:
    return normalize(to_float(ds.images), ds.mean, ds.std).flatten(1)


def format_table(rows: list[dict]) -> str:
    lines = ["| model | training | kNN top-1 (%) | linear top-1 (%) |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['training']} | {r['knn_top1']:.2f} | {r['linear_top1']:.2f} |")
    first = rows[0]["model"] if rows else ""
    small = [r for r in rows if r.get("peer") == rows[1].get("peer")] if len(rows) > 1 else []
    if len(small) == 2:
        a, b = small
        lines.append("")
        lines.append(f"{a['peer']} with its peer vs alone: kNN {b['knn_top1'] - a['knn_top1']:+.2f} points, "
                     f"linear {b['linear_top1'] - a['linear_top1']:+.2f} points (reference: {first}).")
    return "\n".join(lines)


def draw_comparison(rows: list[dict], run_dirs: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .runlog import read_metrics

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    raw = next(r for r in rows if r["model"] == "raw pixels")
    for label, run_dir in run_dirs.items():
        records = read_metrics(run_dir)
        names = records[0]["peers"].keys() if records else []
        for name in names:
            pts = [(r["epoch"], r["peers"][name]["knn_top1"]) for r in records if "knn_top1" in r["peers"][name]]
            if pts:
                style = "--" if label == "alone" else "-"
                ax1.plot(*zip(*pts), style, marker="o", label=f"{name} ({'alone' if label == 'alone' else 'DoGo'})")
    ax1.axhline(raw["knn_top1"], color="gray", lw=1, ls=":", label="raw pixels (final probe's splits)")
    ax1.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor during training")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(fontsize=8)
    models = [r["model"] for r in rows]
    x = torch.arange(len(rows)).numpy()
    ax2.bar(x - 0.2, [r["knn_top1"] for r in rows], 0.4, label="kNN")
    ax2.bar(x + 0.2, [r["linear_top1"] for r in rows], 0.4, label="linear probe")
    low = min(min(r["knn_top1"], r["linear_top1"]) for r in rows)
    ax2.set_ylim(max(0, low - 8), 100)
    ax2.set_xticks(x, [f"{m}\n{r['training']}" for m, r in zip(models, rows)], fontsize=7)
    ax2.set(ylabel="top-1 (%)", title="Frozen-feature probes (test set)")
    ax2.legend(fontsize=8)
    fig.suptitle("SimCLR alone vs DoGo on Fashion-MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", "--config", dest="config_file", default=None,
                        help="DoGo config; its first peer is also trained alone (default: the ResNet pairing with "
                             "CUDA, else configs/fashion_mnist_quick.yaml)")
    parser.add_argument("--cpu", action="store_true", help="run the small CPU demo even when CUDA is available")
    parser.add_argument("--output-dir", default="runs/quickstart", help="where both runs and the table go")
    parser.add_argument("--figure", default=None, help="copy of the figure (default: figures/quickstart_comparison.png, "
                        "figures/quickstart_gpu_comparison.png for the GPU demo)")
    parser.add_argument("--eval-limit", type=int, default=None, help="probe on this many train/test images")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (about a minute) to check the set-up")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    demo = choose_demo(args.config_file, args.cpu, torch.cuda.is_available())
    print(f"quickstart: {demo.description}")
    overrides = demo.overrides + (SMOKE_OVERRIDES if args.smoke else []) + list(args.overrides)
    cfg = load_config(demo.config, overrides)
    eval_limit = args.eval_limit if args.eval_limit is not None else (2000 if args.smoke else None)
    run_quickstart(cfg, args.output_dir, args.figure or demo.figure, eval_limit, progress=not args.no_progress)
    return 0


__all__ = ["run_quickstart", "format_table", "choose_demo"]
