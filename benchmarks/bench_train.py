"""DoGo training speed: the kit's engine against a loop that follows the authors' approach.

    python benchmarks/bench_train.py --case cpu     # (a) Fashion-MNIST, CNN width 16 + CNN width 64
    python benchmarks/bench_train.py --case gpu     # (b) 32 px, ResNet-18 + ResNet-50, batch 256 and 512

Both sides train the same two ``dogo.models`` networks (SimCLR, Adam 3e-4, the authors' template
losses: KL temperature 0.1, ``reduction='mean'``, weights 100 and 1) on the same images:

- ours: ``dogo.train.Trainer.train_step`` on every batch, as ``Trainer.fit`` runs it: uint8 images
  in device memory, batched augmentation on the device, both views of a peer in one forward pass,
  similarities as matmuls, bf16 autocast + channels_last + TF32 on CUDA, one backward for all peers.
- reference: ``reference_loop.py``: per-sample PIL transforms making four views in a DataLoader
  with 2 workers, broadcast cosine similarities, float32, each model and view forwarded separately.

Each (side, batch) is measured in a fresh process, so that peak memory is that side's alone:
CPU: the process's peak RSS (VmHWM; the reference's DataLoader workers are reported apart);
CUDA: ``torch.cuda.max_memory_allocated``. The CPU case times one whole epoch over a fixed subset
(``--images``, 10,000 by default) from its first step; the GPU case times ``--steps`` steps after
``--warmup`` steps. FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode``
on one step of ours (forward + backward of the matmuls and convolutions: the model's work); the
model FLOP utilisation (MFU) of both sides is that work per image times images/s over the GPU's
dense bf16 peak.

The results print as a Markdown table; ``--out FILE.json`` also saves them with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    children_peak_rss_bytes,
    ensure_repo_on_path,
    machine_description,
    peak_rss_bytes,
    run_json_subprocess,
    write_report,
)

ensure_repo_on_path()

import torch  # noqa: E402
from reference_loop import (  # noqa: E402
    authors_transform,
    cpu_seconds,
    reference_loader,
    reference_step,
    run_reference,
    split_views,
)

CASES = {
    # case: image size, RGB (repeat the grey channel), backbones, widths, default images, default batches
    "cpu": dict(image_size=28, rgb=False, backbones=("cnn", "cnn"), widths=(16, 64), images=10000, batches=(256,)),
    "gpu": dict(image_size=32, rgb=True, backbones=("resnet18", "resnet50"), widths=(32, 32), images=None,
                batches=(256, 512)),
}
DISTILL_WEIGHTS = (100.0, 1.0)  # the authors' template, with reduction "mean"
KD_TEMPERATURE = 0.1
LR, WEIGHT_DECAY = 3e-4, 1e-6
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched against the device name in order.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


# ------------------------------------------------------------------ shared set-up


def load_images(args):
    """The benchmark's images: Fashion-MNIST train (a fixed subset of ``args.images``), grey or RGB."""
    from dogo.data import ImageDataset, load_dataset

    data = load_dataset("fashion_mnist", "train", root=args.data_root, limit=args.images, seed=0)
    if args.rgb:  # the same pixels in three channels: the cost of CIFAR-sized RGB images
        data = ImageDataset(data.name, data.images.expand(-1, 3, -1, -1).contiguous(), data.labels, data.classes,
                            data.mean * 3, data.std * 3, data.split)
    return data


def peer_configs(args):
    from dogo.config import PeerConfig

    names = ("student", "peer")
    return [PeerConfig(name=n, backbone=b, width=w, objective="simclr", temperature=0.5, distill_weight=dw)
            for n, b, w, dw in zip(names, args.backbones, args.widths, DISTILL_WEIGHTS)]


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def memory_record(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "memory_kind": "cuda max_memory_allocated"}
    return {"peak_memory_bytes": peak_rss_bytes(), "memory_kind": "process peak RSS (VmHWM)"}


# ------------------------------------------------------------------ one side, in this process


def measure_ours(args, batch_size: int) -> dict:
    from dogo.config import from_dict
    from dogo.train import Trainer

    data = load_images(args)
    cfg = from_dict({
        "name": "bench", "seed": 0, "device": args.device,
        "data": {"dataset": "fashion_mnist", "image_size": args.image_size},
        "peers": [dataclasses.asdict(p) for p in peer_configs(args)],
        "distill": {"temperature": KD_TEMPERATURE, "reduction": "mean"},
        "train": {"epochs": 1, "batch_size": batch_size, "optimizer": "adam", "lr": LR, "weight_decay": WEIGHT_DECAY,
                  "schedule": "constant", "knn_every": 0, "progress": False, "compile": args.compile,
                  "amp": args.amp},
    })
    run_dir = Path(tempfile.mkdtemp(prefix="dogo-bench-"))
    try:
        trainer = Trainer(cfg, run_dir, train_data=data, progress=False)
        device = trainer.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        steps = trainer.steps_per_epoch if args.steps is None else min(args.steps, trainer.steps_per_epoch)
        perm = torch.randperm(len(trainer.images), generator=torch.Generator().manual_seed(0))
        sums = [torch.zeros((), device=device) for _ in trainer.peers]
        for p in trainer.peers:
            p.model.train()

        def batch(step: int) -> torch.Tensor:
            idx = perm[(step % trainer.steps_per_epoch) * batch_size:][:batch_size].to(device, non_blocking=True)
            return trainer.images[idx]

        for step in range(args.warmup):  # not timed: cuDNN autotuning, compilation, allocator growth
            trainer.train_step(batch(step))
        sync()
        start, cpu_start = time.perf_counter(), cpu_seconds()
        for step in range(args.warmup, args.warmup + steps):
            losses = trainer.train_step(batch(step))
            for s, loss in zip(sums, losses):  # accumulated on the device, as fit() does: no host sync
                s += loss["total"].detach()
        sync()
        seconds = time.perf_counter() - start
        result = {"images": steps * batch_size, "seconds": seconds, "images_per_s": steps * batch_size / seconds,
                  "steps": steps, "cpu_seconds": cpu_seconds() - cpu_start,
                  "mean_total_loss": [s.item() / steps for s in sums]}
        result.update(memory_record(device))
        result["flops_per_step"] = count_flops(lambda: trainer.train_step(batch(0)))
        result["engine"] = {"amp": str(trainer.amp_dtype), "channels_last": cfg.train.channels_last,
                            "compile": cfg.train.compile, "device": str(device)}
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def measure_reference(args, batch_size: int) -> dict:
    from dogo.augment import view_augment_for
    from dogo.models import build_model
    from dogo.train import resolve_device, seed_everything

    data = load_images(args)
    device = resolve_device(args.device)
    seed_everything(0)
    models = [build_model(p, data.channels, args.image_size).to(device) for p in peer_configs(args)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY) for m in models]
    # The same view recipe as ours (jitter strength per objective), as torchvision PIL transforms.
    view_transforms = [authors_transform(args.image_size, data.mean, data.std,
                                         view_augment_for(m.objective, args.image_size, data.mean, data.std).jitter_strength)
                       for m in models]
    loader = reference_loader(data.images, view_transforms, batch_size, num_workers=args.workers,
                              pin_memory=device.type == "cuda")
    result = run_reference(models, optimizers, loader, DISTILL_WEIGHTS, device, KD_TEMPERATURE,
                           warmup_steps=args.warmup, max_steps=args.steps)
    result.update(memory_record(device))
    result["worker_peak_rss_bytes"] = children_peak_rss_bytes() if args.workers > 0 else None
    one_batch = split_views(next(iter(reference_loader(data.images, view_transforms, batch_size, num_workers=0))), device)
    result["flops_per_step"] = count_flops(
        lambda: reference_step(models, optimizers, one_batch, DISTILL_WEIGHTS, KD_TEMPERATURE))
    return result


# ------------------------------------------------------------------ where the time goes


def _clock(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process and finished children) of ``repeats`` calls, after one."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(repeats):
        fn()
    sync()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def breakdown(args, batch_size: int) -> list[dict]:
    """The parts of one step of each side, timed alone over ``--breakdown-steps`` batches."""
    from reference_loop import broadcast_nt_xent, broadcast_similarity_kl

    from dogo.augment import view_augment_for
    from dogo.losses import nt_xent, similarity_distill
    from dogo.models import build_model
    from dogo.train import resolve_device, seed_everything

    n = args.breakdown_steps
    data = load_images(args)
    device = resolve_device(args.device)
    seed_everything(0)
    models = [build_model(p, data.channels, args.image_size).to(device) for p in peer_configs(args)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY) for m in models]
    transforms = [authors_transform(args.image_size, data.mean, data.std) for _ in models]
    rows = []

    def add(part: str, wall: float, cpu: float, images: int) -> None:
        rows.append({"part": part, "images_per_s": images / wall, "cpu_s_per_1k_images": 1000 * cpu / images})

    # Reference: the PIL pipeline alone (2 workers), then the step on views fetched beforehand.
    start, cpu = time.perf_counter(), cpu_seconds()
    loader = reference_loader(data.images[: (n + 1) * batch_size], transforms, batch_size, num_workers=args.workers)
    batches = [split_views(b, device) for b in loader]
    add("reference: PIL views in the DataLoader, alone", time.perf_counter() - start, cpu_seconds() - cpu,
        len(batches) * batch_size)
    it = iter(batches)
    wall, cpu = _clock(lambda: reference_step(models, optimizers, next(it), DISTILL_WEIGHTS, KD_TEMPERATURE),
                       device, len(batches) - 1)
    add("reference: step on ready views (fp32, per view)", wall, cpu, (len(batches) - 1) * batch_size)
    dim = models[0].projector[-1].out_features
    z = [torch.randn(batch_size, dim, device=device, requires_grad=True) for _ in range(4)]

    def losses(ntx, kl):
        return lambda: (2 * ntx(z[0], z[1]) + 2 * kl(z[0], z[1], z[2], z[3])).backward()

    broadcast_kl = lambda a, b, c, d: broadcast_similarity_kl(a, b, c, d, KD_TEMPERATURE)  # noqa: E731
    matmul_kl = lambda a, b, c, d: similarity_distill(a, b, c, d, KD_TEMPERATURE, "mean")  # noqa: E731
    wall, cpu = _clock(losses(broadcast_nt_xent, broadcast_kl), device, n)
    add("reference: its losses alone (2 NT-Xent + 2 KL, broadcast)", wall, cpu, n * batch_size)
    wall, cpu = _clock(losses(nt_xent, matmul_kl), device, n)
    add("ours: the same losses alone (matmul)", wall, cpu, n * batch_size)
    # Ours: the four batched views alone (uint8 on the device in, normalised floats out).
    augment = view_augment_for("simclr", args.image_size, data.mean, data.std)
    images = data.images[:batch_size].to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    wall, cpu = _clock(lambda: [augment(images, generator) for _ in range(4)], device, n)
    add("ours: batched augmentation of four views, alone", wall, cpu, n * batch_size)
    return rows


# ------------------------------------------------------------------ the driver


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: the case's)")
    parser.add_argument("--images", type=int, help="use a fixed random subset of this many training images "
                        "(cpu default 10000; gpu default: all 60000)")
    parser.add_argument("--steps", type=int, help="timed steps (default: cpu one whole epoch, gpu 30)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 0, gpu 5)")
    parser.add_argument("--widths", type=int, nargs=2, help="cnn widths of the two peers (cpu default 16 64)")
    parser.add_argument("--backbones", nargs=2, help="backbones of the two peers")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers (theirs: 2)")
    parser.add_argument("--device", default=None, help="default: cpu for --case cpu, cuda for --case gpu")
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST .gz files")
    parser.add_argument("--compile", action="store_true", help="ours with torch.compile")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                        help="ours' train.amp (auto: bf16 on CUDA, float32 elsewhere)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, for MFU")
    parser.add_argument("--sides", nargs="+", choices=("ours", "reference"), default=["ours", "reference"])
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process (quick checks; memory peaks then overlap)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of each side's step alone (in this process)")
    parser.add_argument("--breakdown-steps", type=int, default=8, help="batches per part with --breakdown")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--_side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    case = CASES[args.case]
    args.image_size, args.rgb = case["image_size"], case["rgb"]
    args.batches = args.batches or list(case["batches"])
    args.images = args.images if args.images is not None else case["images"]
    args.widths = args.widths or list(case["widths"])
    args.backbones = args.backbones or list(case["backbones"])
    args.device = args.device or ("cuda" if args.case == "gpu" else "cpu")
    if args.steps is None and args.case == "gpu":
        args.steps = 30
    if args.warmup is None:
        args.warmup = 5 if args.case == "gpu" else 0
    return args


def _child_argv(args, side: str, batch: int) -> list[str]:
    argv = [str(Path(__file__).resolve()), "--case", args.case, "--_side", side, "--batches", str(batch),
            "--warmup", str(args.warmup), "--workers", str(args.workers), "--device", args.device, "--amp", args.amp,
            "--widths", *map(str, args.widths), "--backbones", *args.backbones]
    for flag, value in (("--images", args.images), ("--steps", args.steps), ("--data-root", args.data_root)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--compile"] if args.compile else [])


def measure(args, side: str, batch: int) -> dict:
    """One side at one batch size, in a fresh process; with the machine's load (other processes)."""
    load_before = os.getloadavg()[0]
    if args.in_process:
        result = (measure_ours if side == "ours" else measure_reference)(args, batch)
    else:
        result = run_json_subprocess(_child_argv(args, side, batch))
    result["load_average_1min"] = [load_before, os.getloadavg()[0]]
    return result


def summarise(args, results: list[dict], machine: dict) -> str:
    peak = args.peak_tflops or (peak_tflops(machine.get("gpu", "")) if "gpu" in machine else None)
    lines = [f"case {args.case}: {args.backbones[0]} + {args.backbones[1]}"
             + (f" (widths {args.widths[0]}, {args.widths[1]})" if "cnn" in args.backbones else "")
             + f", {args.image_size} px, {machine['date']}, {machine.get('gpu', machine['cpu'])}",
             "", "| batch | side | images | seconds | images/s | speed-up | CPU s / 1k images | peak memory (MiB) "
             "| GFLOP/image | MFU | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ours = next((o for o in results if o["side"] == "ours" and o["batch"] == r["batch"]), None)
        flops_per_image = (ours or r)["flops_per_step"] / r["batch"]
        r["speedup_vs_reference"] = None
        if r["side"] == "ours":
            ref = next((o for o in results if o["side"] == "reference" and o["batch"] == r["batch"]), None)
            if ref:
                r["speedup_vs_reference"] = r["images_per_s"] / ref["images_per_s"]
        r["mfu"] = flops_per_image * r["images_per_s"] / (peak * 1e12) if peak else None
        memory = r["peak_memory_bytes"] / 2**20
        mem_text = f"{memory:,.0f}"
        if r.get("worker_peak_rss_bytes"):
            mem_text += f" (+ workers {r['worker_peak_rss_bytes'] / 2**20:,.0f} each)"
        lines.append(f"| {r['batch']} | {r['side']} | {r['images']:,} | {r['seconds']:.1f} | {r['images_per_s']:,.0f} | "
                     + (f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-") + " | "
                     + f"{1000 * r['cpu_seconds'] / r['images']:.1f} | {mem_text} | {flops_per_image / 1e9:.3f} | "
                     + (f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "-") + " | "
                     + "{:.1f}-{:.1f} |".format(*r.get("load_average_1min", (float("nan"),) * 2)))
    lines.append("\nCPU s: user + system time of the process and its DataLoader workers; load avg: the machine's "
                 "1-minute load before and after (2 cores: above 2 means other processes competed).")
    if peak:
        lines.append(f"\nMFU: model FLOPs (counted on one step of ours) per image x images/s / {peak:.0f} TFLOP/s "
                     "(dense bf16 peak).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._side:  # a child: measure one side, print one JSON line
        result = (measure_ours if args._side == "ours" else measure_reference)(args, args.batches[0])
        print(json.dumps(result))
        return result
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--case gpu needs a CUDA device (or pass --device cpu for a dry run)")
    machine = machine_description(args.device)
    results = []
    for batch in args.batches:
        for side in args.sides:
            print(f"measuring {side}, batch {batch} ...", file=sys.stderr, flush=True)
            r = measure(args, side, batch)
            r.update(side=side, batch=batch)
            results.append(r)
            if args.out:  # partial results survive a time limit
                write_report(args.out, {"case": args.case, "machine": machine, "results": results, "partial": True})
    table = summarise(args, results, machine)
    if args.breakdown:
        print(f"measuring the breakdown, batch {args.batches[0]} ...", file=sys.stderr, flush=True)
        parts = breakdown(args, args.batches[0])
        table += (f"\n\nWhere the time goes (batch {args.batches[0]}, {args.breakdown_steps} batches per part):\n\n"
                  "| part | images/s | CPU s / 1k images |\n|---|---|---|\n"
                  + "\n".join(f"| {p['part']} | {p['images_per_s']:,.0f} | {p['cpu_s_per_1k_images']:.2f} |"
                               for p in parts))
        results.append({"side": "breakdown", "parts": parts})
    print(table)
    report = {"case": args.case, "machine": machine, "settings": {k: v for k, v in vars(args).items() if k != "out"
                                                                 and not k.startswith("_")},
              "results": results, "table": table}
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
