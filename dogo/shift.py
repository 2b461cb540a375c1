"""Distribution shift: generated image corruptions (the CIFAR-10-C protocol) and dataset transfer.

Corruptions act on uint8 images (N, C, H, W) and return uint8 images of the same shape, so the
corrupted test set goes through exactly the same test transform and feature extraction as the clean
one. Every corruption has five severities (1 = mild ... 5 = strong). As in CIFAR-10-C (Hendrycks &
Dietterich, 2019) the probe is trained on clean training features and scored on corrupted test
features; the severity ladders below are this kit's own, chosen so that the five levels are visibly
distinct on 28-32 px images.

Randomness is common across severities: one corruption draws the same noise for every severity and
only scales it, so severity k+1 changes the images more than severity k (the tests check that the
mean change grows with the severity, at 28 and 32 px; pixelation is not monotone below 16 px).

Transfer: an encoder trained on one dataset is probed on another; ``adapt_channels`` converts
grayscale <-> RGB, and the test transform resizes to the encoder's input size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .augment import luminance, to_float

Tensor = torch.Tensor

# name -> the parameter of each severity 1..5
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.07, 0.10, 0.14, 0.20),  # std of additive N(0, s^2), on [0, 1] pixels
    "shot_noise": (120.0, 60.0, 30.0, 15.0, 8.0),  # photons at full white: Poisson(x * s) / s
    "impulse_noise": (0.01, 0.03, 0.06, 0.10, 0.16),  # fraction of pixels set to 0 or 1
    "speckle_noise": (0.10, 0.20, 0.30, 0.45, 0.60),  # std of multiplicative x * (1 + N(0, s^2))
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),  # sigma in px at 32 px (scaled up for larger images)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # x -> (x - mean) * s + mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # x -> x + s, clipped
    "pixelate": (2.0, 3.0, 4.0, 5.0, 6.0),  # side of the averaged square blocks, in px at 32 px
}
CORRUPTIONS = tuple(SEVERITIES)


def _gaussian_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    return x + s * noise


def _shot_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return torch.poisson(x * s, generator=gen) / s


def _impulse_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    # One uniform u per pixel decides whether it is hit (u < s): the hit sets are nested across
    # severities. Its fine digits, independent of u < s, decide salt or pepper, so one draw per pixel
    # keeps the result independent of the chunk size.
    u = torch.rand(x.shape, generator=gen, device=x.device)
    salt = torch.frac(u * 4096) < 0.5
    return torch.where(u < s, salt.to(x.dtype), x)


def _speckle_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    return x + x * s * noise


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` px (kernel radius ceil(3 sigma)),
    reflect padding; (N, C, H, W) float -> same shape."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    flat = F.pad(x.reshape(n * c, 1, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.view(n, c, h, w)


def _gaussian_blur(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    # Sigma grows with the image side above 32 px; below, the 32 px ladder is kept (a sigma of a
    # fraction of a pixel would change nothing after rounding to uint8).
    return gaussian_blur(x, s * max(x.shape[-1], 32) / 32)


def _contrast(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * s + mean


def _brightness(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return x + s


def _block_matrix(side: int, block: float, device, dtype) -> Tensor:
    """(side, n_blocks) 0/1 matrix assigning pixel i to block floor(i / block)."""
    ids = torch.div(torch.arange(side, device=device, dtype=torch.float64), block, rounding_mode="floor").long()
    return F.one_hot(ids, int(ids.max()) + 1).to(dtype)


def pixelate(x: Tensor, block: float) -> Tensor:
    """Replace every block of about ``block`` x ``block`` pixels by its mean.

    Pixel (i, j) belongs to block (floor(i / block), floor(j / block)); a fractional ``block`` gives
    blocks of floor/ceil(block) pixels, and the last row/column of blocks may be smaller. Written as
    x -> R (R^T x C) C^T with 0/1 assignment matrices R, C, normalised by the block sizes.
    """
    h, w = x.shape[-2:]
    rows = _block_matrix(h, block, x.device, x.dtype)  # (H, Bh)
    cols = _block_matrix(w, block, x.device, x.dtype)  # (W, Bw)
    sums = rows.T @ x @ cols  # (N, C, Bh, Bw)
    means = sums / (rows.sum(0)[:, None] * cols.sum(0)[None, :])
    return rows @ means @ cols.T


def _pixelate(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    # The block side grows with the image side above 32 px; below, the 32 px ladder (2..6 px) is
    # kept. On images under 16 px (scikit-learn digits at 8 px) blocks of 5 and 6 px split the image
    # unevenly and change it less than 4 px blocks: there the ladder is not monotone.
    return pixelate(x, s * max(x.shape[-1], 32) / 32)


_FUNCTIONS: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
}


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0, chunk: int = 2048) -> Tensor:
    """The ``name`` corruption at ``severity`` (1..5) of uint8 images (N, C, H, W) -> uint8, same shape.

    Processed in chunks of ``chunk`` images to bound memory; the random draws depend only on
    ``seed`` and the corruption, not on the severity or the chunk size.
    """
    if name not in _FUNCTIONS:
        import difflib

        near = difflib.get_close_matches(name, CORRUPTIONS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown corruption {name!r}{hint}; choose from {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= len(SEVERITIES[name]):
        raise ValueError(f"severity must be 1..{len(SEVERITIES[name])}, got {severity}")
    param = SEVERITIES[name][severity - 1]
    fn = _FUNCTIONS[name]
    # One generator per corruption (seeded by seed and the corruption's index), shared by every
    # severity: common random numbers make the severities comparable.
    gen = torch.Generator(device=images.device).manual_seed(seed * 1009 + CORRUPTIONS.index(name))
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        x = to_float(images[start:start + chunk])
        y = fn(x, param, gen).clamp_(0, 1)
        out[start:start + chunk] = y.mul_(255).round_().to(torch.uint8)
    return out


def adapt_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 images (N, C, H, W) with C in {1, 3} converted to ``channels``: grayscale -> RGB repeats
    the channel; RGB -> grayscale takes the ITU-R 601 luminance."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        gray = luminance(images.float())
        return gray.round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


# The datasets each training dataset is transferred to by default (offline: Fashion-MNIST -> digits).
TRANSFER_TARGETS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("digits",),
    "digits": ("fashion_mnist",),
    "cifar10": ("stl10", "cifar100"),
    "cifar10_imbalanced": ("cifar10", "stl10"),
    "cifar100": ("cifar10", "stl10"),
    "stl10": ("cifar10", "cifar100"),
    "tiny_imagenet": ("cifar100", "stl10"),
}
