"""A reference DoGo training loop that follows the authors' approach, as the baseline of the benchmark.

Written for this kit from the description in ``shared/reference/method.md`` (their code is not
copied). It keeps every choice of theirs that decides speed and memory, and nothing else differs
from the kit's engine (same ``dogo.models`` networks, batch, optimizers and loss values):

- Data: images go through torchvision's v1 transforms on PIL images, one image at a time, in a
  ``Dataset`` that returns four views per index (two per model); a ``DataLoader`` with 2 workers,
  shuffle and ``drop_last`` collates them.
- Losses: cosine similarities as a broadcast ``[N, M, d]`` tensor (``F.cosine_similarity`` of
  ``a[:, None]`` and ``b[None]``): ``[2B, 2B, d]`` for NT-Xent, ``[B, B, d]`` for each KL; NT-Xent
  as a cross-entropy over [positive, negatives]; the KL as ``kl_div(log(softmax), softmax)`` with
  PyTorch's default ``reduction='mean'`` (sum / B^2).
- Step: float32, each model's forward run separately on each view (no concatenation), then
  ``zero both, forward both, losses, backward one after the other, step both``.

The one change: their boolean masks were built as uint8 tensors, which current PyTorch rejects;
here they are ``torch.bool``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from dogo.losses import simsiam_loss
from dogo.models import SSLModel
from dogo.objective import ViewOutputs, distill_pair

Tensor = torch.Tensor


# ------------------------------------------------------------------ data: per-sample PIL transforms


def authors_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                      jitter_strength: float = 1.0) -> transforms.Compose:
    """SimCLR's view recipe with torchvision v1 transforms on one PIL image (no blur below 224 px)."""
    s = jitter_strength
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class FourViewDataset(Dataset):
    """Each index gives ``(x1_a, x2_a, x1_b, x2_b, ...)``: two views per model, made one by one with PIL.

    ``images``: uint8 (N, C, H, W) with C = 1 (mode "L") or 3 ("RGB"), converted to a PIL image per
    access as torchvision's in-memory datasets (MNIST, CIFAR) do.
    """

    def __init__(self, images: Tensor, view_transforms: Sequence[transforms.Compose]):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.view_transforms = list(view_transforms)

    def __len__(self) -> int:
        return len(self.images)

    def _pil(self, index: int) -> Image.Image:
        array = self.images[index].permute(1, 2, 0).numpy()
        return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # mode "L" or "RGB"

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        image = self._pil(index)
        return tuple(t(image) for t in self.view_transforms for _ in range(2))


def reference_loader(images: Tensor, view_transforms: Sequence[transforms.Compose], batch_size: int,
                     num_workers: int = 2, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(FourViewDataset(images, view_transforms), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, drop_last=True, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ losses: broadcast cosine


def broadcast_cosine(a: Tensor, b: Tensor) -> Tensor:
    """S[i, j] = cos(a[i], b[j]) for a (N, d), b (M, d), through an [N, M, d] broadcast: O(N M d) memory."""
    return F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=2)


def broadcast_nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent from a [2B, 2B, d] broadcast: logits [positive, 2B - 2 negatives] per anchor, target 0.

    Same value as ``dogo.losses.nt_xent``: mean over the 2B anchors of
    -log(exp(S[i, pos(i)]) / sum_{j != i} exp(S[i, j])), S = cos / temperature.
    """
    batch = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    sim = broadcast_cosine(z, z) / temperature
    positives = torch.cat([torch.diag(sim, batch), torch.diag(sim, -batch)]).unsqueeze(1)
    negatives_mask = ~torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    negatives_mask[torch.arange(2 * batch), torch.arange(2 * batch).roll(batch)] = False
    negatives = sim[negatives_mask].view(2 * batch, 2 * batch - 2)
    logits = torch.cat([positives, negatives], dim=1)
    labels = torch.zeros(2 * batch, dtype=torch.long, device=z.device)
    return F.cross_entropy(logits, labels, reduction="sum") / (2 * batch)


def broadcast_similarity_kl(own1: Tensor, own2: Tensor, peer1: Tensor, peer2: Tensor,
                            temperature: float = 0.1) -> Tensor:
    """KL(P_peer || P_own) of row-softmaxed [B, B] cross-view similarities, each from a [B, B, d]
    broadcast; log of a softmax; ``reduction='mean'`` (sum over the B^2 entries / B^2). The peer
    is detached. Same value as ``dogo.losses.similarity_distill(..., reduction="mean")``.
    """
    p_own = F.softmax(broadcast_cosine(own1, own2) / temperature, dim=1)
    with torch.no_grad():
        p_peer = F.softmax(broadcast_cosine(peer1, peer2) / temperature, dim=1)
    with warnings.catch_warnings():  # PyTorch warns that 'mean' is not 'batchmean': that is their choice
        warnings.simplefilter("ignore", UserWarning)
        return F.kl_div(torch.log(p_own), p_peer, reduction="mean")


# ------------------------------------------------------------------ the step: sequential float32 peers


def forward_per_view(model: SSLModel, x1: Tensor, x2: Tensor) -> ViewOutputs:
    """The model run on each view separately (two passes, BatchNorm statistics per view)."""
    outs = []
    for x in (x1, x2):
        h = model.backbone(x)
        z = model.projector(h)
        outs.append((h, z, model.predictor(z) if model.predictor is not None else None))
    (h1, z1, p1), (h2, z2, p2) = outs
    return ViewOutputs(h1, h2, z1, z2, p1, p2)


def ssl_loss(model: SSLModel, out: ViewOutputs) -> Tensor:
    if model.objective == "simclr":
        return broadcast_nt_xent(out.z1, out.z2, model.temperature)
    return simsiam_loss(out.p1, out.p2, out.z1, out.z2)


def step_losses(models: Sequence[SSLModel], outputs: Sequence[ViewOutputs], weights: Sequence[float],
                kd_temperature: float = 0.1) -> list[dict[str, Tensor]]:
    """Each model's ``ssl``, ``distill`` (sum of KLs towards every other model) and ``total`` loss."""
    losses = []
    for k, (model, out) in enumerate(zip(models, outputs)):
        ssl = ssl_loss(model, out)
        distill = sum(broadcast_similarity_kl(*distill_pair(model, out, other, other_out), temperature=kd_temperature)
                      for j, (other, other_out) in enumerate(zip(models, outputs)) if j != k)
        losses.append({"ssl": ssl, "distill": distill, "total": ssl + weights[k] * distill})
    return losses


def reference_step(models: Sequence[SSLModel], optimizers: Sequence[torch.optim.Optimizer],
                   views: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float],
                   kd_temperature: float = 0.1) -> list[dict[str, Tensor]]:
    """Zero all, forward all (per view), losses, backward one after the other, step all."""
    for opt in optimizers:
        opt.zero_grad()
    outputs = [forward_per_view(m, x1, x2) for m, (x1, x2) in zip(models, views)]
    losses = step_losses(models, outputs, weights, kd_temperature)
    for loss in losses:
        loss["total"].backward()
    for opt in optimizers:
        opt.step()
    return losses


def split_views(batch: Sequence[Tensor], device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """A loader batch (x1_a, x2_a, x1_b, x2_b, ...) -> [(x1_a, x2_a), (x1_b, x2_b), ...] on ``device``."""
    views = [t.to(device, non_blocking=True) for t in batch]
    return [(views[i], views[i + 1]) for i in range(0, len(views), 2)]


def run_reference(models: Sequence[SSLModel], optimizers: Sequence[torch.optim.Optimizer], loader: DataLoader,
                  weights: Sequence[float], device: torch.device, kd_temperature: float = 0.1,
                  warmup_steps: int = 0, max_steps: int | None = None) -> dict:
    """Train over ``loader`` (one epoch, or ``warmup_steps + max_steps`` batches) and time it.

    The clock starts when the loader's iterator is created (worker start-up is part of their epoch)
    or, with ``warmup_steps``, after that many steps. Returns images, seconds, images_per_s,
    cpu_seconds (this process and its workers: robust to other load on a shared machine) and the
    mean losses of the timed steps.
    """
    for m in models:
        m.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start, steps, timed = time.perf_counter(), 0, 0
    cpu_start = cpu_seconds()
    sums = [torch.zeros((), device=device) for _ in models]
    batch_size = loader.batch_size
    for batch in loader:
        if steps == warmup_steps and warmup_steps > 0:
            sync()
            start, cpu_start = time.perf_counter(), cpu_seconds()
        losses = reference_step(models, optimizers, split_views(batch, device), weights, kd_temperature)
        steps += 1
        if steps > warmup_steps:
            timed += 1
            for s, loss in zip(sums, losses):
                s += loss["total"].detach()
        if max_steps is not None and timed >= max_steps:
            break
    sync()
    seconds = time.perf_counter() - start
    # The loop has ended, so the loader's workers have exited and their CPU time is counted.
    images = timed * batch_size
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "steps": timed,
            "cpu_seconds": cpu_seconds() - cpu_start, "mean_total_loss": [s.item() / max(timed, 1) for s in sums]}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the loader's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
