"""Distribution shift: generated image corruptions (the CIFAR-10-C protocol) and dataset transfer.

Corruptions act on uint8 images (N, C, H, W) and return uint8 images of the same shape, so the
corrupted test set goes through exactly the same test transform and feature extraction as the clean
one. Every corruption has five severities (1 = mild ... 5 = strong). As in CIFAR-10-C the probe is
trained on clean training features and scored on corrupted test features.

Two severity ladders (``LADDERS``):

- ``"cifar10c"`` (the default): the published CIFAR-10-C parameters and formulas of Hendrycks &
  Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
  (ICLR 2019), as in ``make_cifar_c.py`` of github.com/hendrycks/robustness, for 32 px images
  (x in [0, 1], every result clipped to [0, 1]):

  - gaussian noise: x + N(0, s^2), s = 0.04, 0.06, 0.08, 0.09, 0.10
  - shot noise: Poisson(x * s) / s, s = 500, 250, 100, 75, 50
  - impulse noise: salt-and-pepper on a fraction s = 0.01, 0.02, 0.03, 0.05, 0.07 of the values
    (every channel value independently; salt and pepper equally likely)
  - speckle noise: x + x * N(0, s^2), s = 0.06, 0.10, 0.12, 0.16, 0.20
  - gaussian blur: Gaussian of sigma s = 0.4, 0.6, 0.7, 0.8, 1.0 px, kernel radius int(4 s + 0.5),
    edge pixels repeated (scikit-image's ``gaussian`` defaults)
  - contrast: (x - m) * s + m with m the per-image, per-channel mean over the pixels,
    s = 0.75, 0.5, 0.4, 0.3, 0.15
  - brightness: V + s in HSV space, clipped to [0, 1], s = 0.05, 0.1, 0.15, 0.2, 0.3; hue and
    saturation unchanged, i.e. RGB * V' / V (a black pixel becomes gray V')
  - pixelate: PIL BOX resize to int(side * s) px and back, s = 0.95, 0.9, 0.85, 0.75, 0.65

  Differences that remain: the random numbers are torch's, not NumPy's; pixelation is computed in
  float and rounded once (PIL rounds to 8 bits after each of its passes, a difference of at most a
  few grey levels). On images larger than 32 px the blur sigma grows with the side (the published
  ladder is for 32 px).

- ``"strong"``: this kit's own, much stronger ladder, chosen so that the five levels are visibly
  distinct on 28-32 px images (contrast around the per-image mean over all channels, brightness
  added to every channel, pixelation by averaging square blocks of 2..6 px).

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
from .errors import ConfigError, did_you_mean

Tensor = torch.Tensor

# The kit's own "strong" ladder: name -> the parameter of each severity 1..5
STRONG_SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.07, 0.10, 0.14, 0.20),  # std of additive N(0, s^2), on [0, 1] pixels
    "shot_noise": (120.0, 60.0, 30.0, 15.0, 8.0),  # photons at full white: Poisson(x * s) / s
    "impulse_noise": (0.01, 0.03, 0.06, 0.10, 0.16),  # fraction of pixels set to 0 or 1
    "speckle_noise": (0.10, 0.20, 0.30, 0.45, 0.60),  # std of multiplicative x * (1 + N(0, s^2))
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),  # sigma in px at 32 px (scaled up for larger images)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # x -> (x - mean) * s + mean, mean over all channels
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # x -> x + s, clipped
    "pixelate": (2.0, 3.0, 4.0, 5.0, 6.0),  # side of the averaged square blocks, in px at 32 px
}

# The published CIFAR-10-C ladder (Hendrycks & Dietterich 2019, make_cifar_c.py), see the module doc.
CIFAR10C_SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # fraction of the side kept by the down-sampling
}
CORRUPTIONS = tuple(CIFAR10C_SEVERITIES)
DEFAULT_LADDER = "cifar10c"


def _gaussian_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    return x + s * noise


def _shot_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return torch.poisson(x * s, generator=gen) / s


def _impulse_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    # One uniform u per value decides whether it is hit (u < s): the hit sets are nested across
    # severities. Its fine digits, independent of u < s, decide salt or pepper, so one draw per value
    # keeps the result independent of the chunk size.
    u = torch.rand(x.shape, generator=gen, device=x.device)
    salt = torch.frac(u * 4096) < 0.5
    return torch.where(u < s, salt.to(x.dtype), x)


def _speckle_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    return x + x * s * noise


def gaussian_kernel(sigma: float, radius: int, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian weights exp(-k^2 / (2 sigma^2)) for k = -radius..radius, (2 radius + 1,)."""
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def gaussian_blur(x: Tensor, sigma: float, radius: int | None = None, padding: str = "reflect") -> Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` px; (N, C, H, W) float -> same shape.

    ``radius`` defaults to ceil(3 sigma); ``padding`` is ``"reflect"`` or ``"replicate"`` (edge pixels
    repeated, scikit-image's ``mode="nearest"``)."""
    if radius is None:
        radius = max(1, math.ceil(3 * sigma))
    if padding == "reflect":
        radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    kernel = gaussian_kernel(sigma, radius, x.dtype, x.device)
    n, c, h, w = x.shape
    flat = F.pad(x.reshape(n * c, 1, h, w), (radius, radius, radius, radius), mode=padding)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.view(n, c, h, w)


def _side_scale(x: Tensor) -> float:
    # Ladders are given for 32 px; above, spatial parameters grow with the side. Below, the 32 px
    # values are kept (a sigma of a fraction of a pixel would change nothing after rounding to uint8).
    return max(x.shape[-1], 32) / 32


def _gaussian_blur_strong(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return gaussian_blur(x, s * _side_scale(x))


def _gaussian_blur_cifar10c(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    sigma = s * _side_scale(x)
    return gaussian_blur(x, sigma, radius=int(4 * sigma + 0.5), padding="replicate")


def _contrast_strong(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * s + mean


def _contrast_cifar10c(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as make_cifar_c.py's axis=(0, 1) of HWC
    return (x - mean) * s + mean


def _brightness_strong(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return x + s


def brightness_hsv(x: Tensor, amount: float) -> Tensor:
    """Add ``amount`` to the V channel of HSV (V = max over channels), clip V to [0, 1], keep hue and
    saturation: every channel scales by V' / V; a black pixel (V = 0, saturation 0) becomes gray V'.
    For one channel this is clip(x + amount, 0, 1)."""
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + amount).clamp(0, 1)
    scaled = x * (new_value / value.clamp_min(torch.finfo(x.dtype).tiny))
    return torch.where(value > 0, scaled, new_value.expand_as(x))


def _brightness_cifar10c(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return brightness_hsv(x, s)


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


def box_resize_matrix(in_size: int, out_size: int, dtype=torch.float32, device=None) -> Tensor:
    """(out_size, in_size) weights of PIL's BOX resampling along one axis.

    Output pixel i has its centre at c = (i + 1/2) * in/out in input coordinates; with
    f = max(in/out, 1), input pixel j gets weight 1 when -1/2 < (j + 1/2 - c) / f <= 1/2, and each
    row is normalised. Down-sampling averages the pixels whose centres fall in the output pixel;
    up-sampling copies the nearest one."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    t = (torch.arange(in_size, dtype=torch.float64)[None, :] + 0.5 - centres[:, None]) / filterscale
    weights = ((t > -0.5) & (t <= 0.5)).double()
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def pixelate_box(x: Tensor, fraction: float) -> Tensor:
    """Down-sample (N, C, H, W) to int(H * fraction) x int(W * fraction) and back with PIL's BOX filter
    (CIFAR-10-C's pixelate), as x -> P_h x P_w^T with P = up @ down."""
    h, w = x.shape[-2:]
    small_h, small_w = max(1, int(h * fraction)), max(1, int(w * fraction))
    p_h = box_resize_matrix(small_h, h, x.dtype, x.device) @ box_resize_matrix(h, small_h, x.dtype, x.device)
    p_w = box_resize_matrix(small_w, w, x.dtype, x.device) @ box_resize_matrix(w, small_w, x.dtype, x.device)
    return p_h @ x @ p_w.T


def _pixelate_strong(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    # On images under 16 px (scikit-learn digits at 8 px) blocks of 5 and 6 px split the image
    # unevenly and change it less than 4 px blocks: there the ladder is not monotone.
    return pixelate(x, s * _side_scale(x))


def _pixelate_cifar10c(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return pixelate_box(x, s)


Corruption = Callable[[Tensor, float, torch.Generator], Tensor]

_NOISE: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "speckle_noise": _speckle_noise,
}
_FUNCTIONS: dict[str, dict[str, Corruption]] = {
    "cifar10c": {**_NOISE, "gaussian_blur": _gaussian_blur_cifar10c, "contrast": _contrast_cifar10c,
                 "brightness": _brightness_cifar10c, "pixelate": _pixelate_cifar10c},
    "strong": {**_NOISE, "gaussian_blur": _gaussian_blur_strong, "contrast": _contrast_strong,
               "brightness": _brightness_strong, "pixelate": _pixelate_strong},
}
_SEVERITIES = {"cifar10c": CIFAR10C_SEVERITIES, "strong": STRONG_SEVERITIES}

# ladder -> corruption -> (function, parameter of each severity 1..5)
LADDERS: dict[str, dict[str, tuple[Corruption, tuple[float, ...]]]] = {
    ladder: {name: (functions[name], _SEVERITIES[ladder][name]) for name in CORRUPTIONS}
    for ladder, functions in _FUNCTIONS.items()
}


def check_ladder(ladder: str) -> str:
    """``ladder`` if it names a severity ladder, else one ConfigError listing the ladders."""
    if ladder not in LADDERS:
        raise ConfigError(f"corruption_ladder: unknown ladder {ladder!r}{did_you_mean(ladder, LADDERS)}; "
                          f"choose from {', '.join(LADDERS)}")
    return ladder


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0, chunk: int = 2048,
            ladder: str = DEFAULT_LADDER) -> Tensor:
    """The ``name`` corruption at ``severity`` (1..5) of uint8 images (N, C, H, W) -> uint8, same shape.

    ``ladder`` chooses the severity ladder (``"cifar10c"``, the published one, or ``"strong"``).
    Processed in chunks of ``chunk`` images to bound memory; the random draws depend only on
    ``seed`` and the corruption, not on the severity, the ladder or the chunk size.
    """
    rungs = LADDERS[check_ladder(ladder)]
    if name not in rungs:
        raise ConfigError(f"corruptions: unknown corruption {name!r}{did_you_mean(name, CORRUPTIONS)}; "
                          f"choose from {', '.join(CORRUPTIONS)}")
    fn, params = rungs[name]
    if not 1 <= severity <= len(params):
        raise ConfigError(f"severities: severity must be 1..{len(params)}, got {severity}")
    # One generator per corruption (seeded by seed and the corruption's index), shared by every
    # severity: common random numbers make the severities comparable.
    gen = torch.Generator(device=images.device).manual_seed(seed * 1009 + CORRUPTIONS.index(name))
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        x = to_float(images[start:start + chunk])
        y = fn(x, params[severity - 1], gen).clamp_(0, 1)
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
