"""Speed levers of the training engine, each measured against the eager float32 path in one process.

    python benchmarks/bench_levers.py --case gpu --out levers_gpu.json      # R18 + R50 at 32 px (H100/H200)
    python benchmarks/bench_levers.py --case gpu_cnn --fit-overhead fused_adam   # CNN pair, 60k-image epoch
    python benchmarks/bench_levers.py --case cpu --out levers_cpu.json      # CNN w16 + w48 at 28 px
    python benchmarks/bench_levers.py --case cpu --accuracy amp_bf16 ...    # also: short fits, kNN

Two measurements:

- ``throughput``: for every lever (a list of config overrides on top of the case's base config),
  ``Trainer.train_step`` in a loop on the case's images: images/s after ``--warmup`` steps (which
  also absorb compilation), the ratio to the first lever of the list (the eager baseline), and the
  numerics check: the losses of the lever's first step, from the same seed and weights, against the
  eager float32 step (``max_rel_loss_diff``). A lever that fails (e.g. compile without a compiler)
  is recorded with its error, never silently dropped.
- ``fit_overhead``: one whole ``Trainer.fit`` epoch (data order, augmentation, kNN monitor,
  checkpoint) against the bare step loop over the same number of steps.
- ``accuracy`` (``--accuracy LEVER ...``): short ``fit`` runs of the baseline and each named lever,
  for ``--seeds``, with the kNN monitor's top-1 at the end: does a lever change what is learned?

Ratios are measured in one run; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ensure_repo_on_path, machine_description, write_report  # noqa: E402

ensure_repo_on_path()

import torch  # noqa: E402

from dogo.config import load_config  # noqa: E402
from dogo.data import ImageDataset  # noqa: E402
from dogo.train import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CASES = {
    # The reproduction study's GPU pairing: R18 + R50 SimCLR peers at 32 px on Fashion-MNIST.
    "gpu": {"config": "configs/cifar10_r18_r50.yaml",
            "base": ["data.dataset=fashion_mnist", "data.image_size=32", "train.knn_every=0", "train.progress=false",
                     "train.batch_size=512"],
            # In order of what the study needs most: a lever that runs past the step's time limit
            # loses only the rows after it (the report is rewritten after every row).
            "levers": {
                "eager_fp32": ["train.amp=off", "train.fused_optimizer=off"],
                "eager_bf16": ["train.fused_optimizer=off"],
                "fused_adam": [],
                "compile_step_cudagraphs": ["train.compile=true", "train.compile_scope=step",
                                            "train.compile_mode=reduce-overhead"],
                "compile_cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"],
                "r18_alone": ["peers=[{name: r18, backbone: resnet18, objective: simclr}]"],
                "r18_alone_step_cudagraphs": ["peers=[{name: r18, backbone: resnet18, objective: simclr}]",
                                              "train.compile=true", "train.compile_scope=step",
                                              "train.compile_mode=reduce-overhead"],
                "batch1024_sqrt_lr": ["train.batch_size=1024", "train.lr_scaling=sqrt"],
                "batch1024_step_cudagraphs": ["train.batch_size=1024", "train.lr_scaling=sqrt", "train.compile=true",
                                              "train.compile_scope=step", "train.compile_mode=reduce-overhead"],
                "compile": ["train.compile=true"],
                "compile_step": ["train.compile=true", "train.compile_scope=step"],
                "compile_autotune": ["train.compile=true", "train.compile_mode=max-autotune"],
            }},
    # The quickstart's CNN pair (w16 + w48) on a GPU: an epoch of 60k images should take seconds.
    "gpu_cnn": {"config": "configs/fashion_mnist_quick.yaml",
                "base": ["train.knn_every=0", "train.progress=false", "data.limit=null", "train.batch_size=512"],
                "levers": {
                    "eager_bf16": ["train.fused_optimizer=off"],
                    "fused_adam": [],
                    "compile_cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"],
                    "compile_step_cudagraphs": ["train.compile=true", "train.compile_scope=step",
                                                "train.compile_mode=reduce-overhead"],
                }},
    # The quickstart's pair on a CPU.
    "cpu": {"config": "configs/fashion_mnist_quick.yaml",
            "base": ["train.knn_every=0", "train.progress=false", "device=cpu"],
            "levers": {
                "eager_fp32": ["train.amp=off"],
                "amp_bf16": ["train.amp=bf16"],
                "fused_adam": ["train.amp=off", "train.fused_optimizer=on"],
                "compile_model": ["train.amp=off", "train.compile=true"],
                "compile_step": ["train.amp=off", "train.compile=true", "train.compile_scope=step"],
            }},
}


def _config(case: dict, extra: list[str], device: str, out_dir: str):
    return load_config(REPO / case["config"], [*case["base"], f"device={device}", f"output_dir={out_dir}", *extra])


def _images(cfg, n: int) -> ImageDataset:
    from dogo.data import load_dataset

    return load_dataset(cfg.data.dataset, "pretrain", cfg.data.root, n, cfg.data.download, cfg.seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _wait_for_all(barrier: tuple[Path, int, int], timeout: float = 900.0) -> None:
    """Packed processes start timing together: each marks itself ready, then waits for the others."""
    folder, index, count = barrier
    (folder / f"ready-{index}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready-*"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.glob('ready-*')))} of {count} packed processes got ready")
        time.sleep(0.02)


def throughput(case: dict, names: list[str], device: str, images: int, warmup: int, steps: int,
               on_row=None, barrier: tuple[Path, int, int] | None = None) -> list[dict]:
    rows, reference_losses, baseline_rate = [], None, None
    data = None
    for name in names:
        row: dict = {"lever": name, "overrides": case["levers"][name]}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = _config(case, case["levers"][name], device, tmp)
                data = data or _images(cfg, images)
                trainer = Trainer(cfg, Path(tmp) / "run", train_data=data, progress=False)
                batch = trainer.batch_size
                first = trainer.train_step(trainer.images[:batch])
                losses = [float(loss["total"].detach()) for loss in first]
                # Same seed, weights and views as the baseline: only the lever's numerics differ.
                reference_losses = reference_losses or (batch, losses)
                reference_batch, reference = reference_losses
                if reference_batch == batch and len(losses) == len(reference):
                    row["max_rel_loss_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference))
                order = torch.randperm(len(trainer.images))
                for i in range(warmup):
                    trainer.train_step(trainer.images[order[(i * batch) % (len(order) - batch):][:batch]])
                _sync(trainer.device)
                if barrier is not None:
                    _wait_for_all(barrier)
                started = time.perf_counter()
                for i in range(steps):
                    trainer.train_step(trainer.images[order[(i * batch) % (len(order) - batch):][:batch]])
                _sync(trainer.device)
                seconds = time.perf_counter() - started
                row.update(status="ok", batch_size=batch, steps=steps, seconds=round(seconds, 3),
                           images_per_s=round(steps * batch / seconds, 1), first_step_losses=losses)
                if trainer.device.type == "cuda":
                    row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    torch.cuda.reset_peak_memory_stats()
        except Exception as exc:  # a lever that does not run here is a result too
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        baseline_rate = baseline_rate or row.get("images_per_s")
        if row.get("images_per_s") and baseline_rate:
            row["speedup"] = round(row["images_per_s"] / baseline_rate, 3)
        print(row, flush=True)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def packed(args, lever: str, counts: list[int]) -> list[dict]:
    """The lever's step loop in 1, then N processes at once on one device (as `dogo grid --parallel N`
    packs cells): the summed images/s of N processes against one process alone."""
    import json
    import os
    import subprocess

    rows, single = [], None
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, __file__, "--case", args.case, "--levers", lever, "--warmup", str(args.warmup),
                    "--steps", str(args.steps)]
            argv += ["--images", str(args.images)] if args.images else []
            argv += ["--device", args.device] if args.device else []
            argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // count)))
            workers = [subprocess.Popen([*argv, "--barrier", tmp, str(i), str(count), "--out", f"{tmp}/{i}.json"],
                                        env=env) for i in range(count)]
            codes = [w.wait() for w in workers]
            per = []
            for i in range(count):
                path = Path(tmp) / f"{i}.json"
                row = json.loads(path.read_text())["throughput"][0] if path.is_file() else {}
                per.append(row.get("images_per_s"))
        ok = all(c == 0 for c in codes) and None not in per
        total = round(sum(per), 1) if ok else None
        single = single or total
        row = {"lever": lever, "processes": count, "exit_codes": codes, "per_process_images_per_s": per,
               "total_images_per_s": total, "speedup": round(total / single, 3) if total and single else None}
        print(row, flush=True)
        rows.append(row)
    return rows


def fit_overhead(case: dict, lever: str, device: str, images: int) -> dict:
    """One ``fit`` epoch (with kNN monitor and checkpoint) against the bare step loop, same steps."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = [*case["levers"][lever], "train.epochs=1", "train.knn_every=1", f"data.limit={images}",
                 "data.eval_limit=10000"]
        cfg = _config(case, extra, device, tmp)
        trainer = Trainer(cfg, Path(tmp) / "bare", progress=False)
        batch, steps = trainer.batch_size, trainer.steps_per_epoch
        for i in range(3):  # warm-up (kernels, allocator, compilation)
            trainer.train_step(trainer.images[i * batch:(i + 1) * batch])
        _sync(trainer.device)
        started = time.perf_counter()
        for i in range(steps):
            trainer.train_step(trainer.images[i * batch:(i + 1) * batch])
        _sync(trainer.device)
        bare = time.perf_counter() - started
        fitted = Trainer(cfg, Path(tmp) / "fit", progress=False)
        for i in range(3):
            fitted.train_step(fitted.images[i * batch:(i + 1) * batch])
        fitted.global_step = 0
        started = time.perf_counter()
        fitted.fit()
        whole = time.perf_counter() - started
    return {"lever": lever, "steps": steps, "bare_loop_s": round(bare, 3), "fit_epoch_s": round(whole, 3),
            "overhead": round(whole / bare - 1, 3)}


def accuracy(case: dict, names: list[str], device: str, images: int, epochs: int, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                extra = [*case["levers"][name], f"seed={seed}", f"train.epochs={epochs}", f"data.limit={images}",
                         "train.knn_every=1", "data.eval_limit=5000"]
                cfg = _config(case, extra, device, tmp)
                started = time.perf_counter()
                result = Trainer(cfg, Path(tmp) / "run", progress=False).fit()
                row = {"lever": name, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
                       "knn_top1": {p: m["knn_top1"] for p, m in result["peers"].items()},
                       "ssl_loss": {p: round(m["ssl_loss"], 4) for p, m in result["peers"].items()}}
            print(row, flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="cpu")
    parser.add_argument("--device", default=None, help="default: cuda for the gpu case, cpu otherwise")
    parser.add_argument("--levers", nargs="*", default=None, help="levers to time (default: all of the case's)")
    parser.add_argument("--images", type=int, default=None, help="images held for the loop (default 16384 GPU, 4096 CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the case's batch size (dry runs)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--fit-overhead", dest="fit_lever", default=None, help="lever whose fit epoch to time")
    parser.add_argument("--fit-images", type=int, default=60000)
    parser.add_argument("--accuracy", nargs="*", default=None, help="levers to compare by a short fit's kNN accuracy")
    parser.add_argument("--accuracy-images", type=int, default=8000)
    parser.add_argument("--accuracy-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--pack", type=int, nargs="+", default=None, metavar="N",
                        help="time the first lever in 1, then N processes at once (e.g. --pack 2 3)")
    parser.add_argument("--barrier", nargs=3, default=None, help=argparse.SUPPRESS)  # DIR INDEX COUNT
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    case = dict(CASES[args.case])
    if args.batch_size:
        case["base"] = [*case["base"], f"train.batch_size={args.batch_size}"]
    device = args.device or ("cuda" if args.case.startswith("gpu") else "cpu")
    unknown = [n for n in (args.levers or []) + (args.accuracy or []) if n not in case["levers"]]
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; the {args.case} case has {', '.join(case['levers'])}")
    report: dict = {"machine": machine_description(device), "case": args.case, "config": case["config"],
                    "base_overrides": case["base"]}
    names = args.levers if args.levers is not None else list(case["levers"])
    if args.pack:
        report["packing"] = packed(args, names[0], [1, *[n for n in args.pack if n > 1]])
        names = []
    barrier = (Path(args.barrier[0]), int(args.barrier[1]), int(args.barrier[2])) if args.barrier else None
    if names:
        def keep(rows):  # a step killed by its time limit keeps the rows measured so far
            report["throughput"] = rows
            if args.out:
                write_report(args.out, report)

        report["throughput"] = throughput(case, names, device, args.images or (16384 if device != "cpu" else 4096),
                                          args.warmup, args.steps, on_row=keep, barrier=barrier)
    if args.fit_lever:
        report["fit_overhead"] = fit_overhead(case, args.fit_lever, device, args.fit_images)
        print(report["fit_overhead"], flush=True)
    if args.accuracy:
        baseline = next(iter(case["levers"]))
        report["accuracy"] = accuracy(case, [baseline, *[n for n in args.accuracy if n != baseline]], device,
                                      args.accuracy_images, args.accuracy_epochs, args.seeds)
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
