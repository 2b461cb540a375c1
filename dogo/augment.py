"""Batched view augmentation on tensors, on the training device.

The whole batch is augmented at once from uint8 images (N, C, H, W): crops and flips are one
``grid_sample`` call with a per-image affine grid; colour jitter, grayscale and blur are
per-image factors applied as tensor arithmetic. No per-sample Python runs in the training loop.

Differences from torchvision's per-image PIL pipeline, chosen for speed and stated here:
jitter is applied in a fixed order (brightness, contrast, saturation, hue) rather than a random
one; hue is rotated in YIQ space (a linear approximation of an HSV hue shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _bernoulli(n: int, p: float, generator: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def luminance(x: Tensor) -> Tensor:
    """Grayscale (N, 1, H, W) of RGB images (N, 3, H, W) with ITU-R 601 weights; identity for 1 channel."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def sample_crop_boxes(n: int, scale: tuple[float, float], generator: torch.Generator, device=None,
                      ratio=(3 / 4, 4 / 3), tries: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw one crop box per image: width and height as fractions of the image side, and the centre.

    The area fraction w * h is uniform in ``scale`` and the aspect ratio w / h log-uniform in
    ``ratio``. Like torchvision, up to ``tries`` candidates are drawn per image and the first with
    w, h <= 1 is used; an image with no fitting candidate gets the whole image (w = h = 1).

    Returns:
        w, h: (n,) in (0, 1]; cx, cy: (n,) box centres in normalised [-1, 1] coordinates, with
        |cx| <= 1 - w and |cy| <= 1 - h so that the box lies inside the image.
    """
    area = _uniform(n * tries, *scale, generator, device).view(n, tries)
    log_ratio = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, tries)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt()  # crop width and height as fractions of the image side
    h = (area / aspect).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)
    w = torch.where(fits.any(dim=1), w.gather(1, first).squeeze(1), torch.ones(n, device=device))
    h = torch.where(fits.any(dim=1), h.gather(1, first).squeeze(1), torch.ones(n, device=device))
    # Box centres in normalised [-1, 1] coordinates, the box inside the image.
    cx = (1 - w) * (2 * torch.rand(n, generator=generator, device=device) - 1)
    cy = (1 - h) * (2 * torch.rand(n, generator=generator, device=device) - 1)
    return w, h, cx, cy


def random_resized_crop_flip(x: Tensor, size: int, scale: tuple[float, float], flip: bool,
                             generator: torch.Generator, ratio=(3 / 4, 4 / 3), tries: int = 10) -> Tensor:
    """Crop a random box (see ``sample_crop_boxes``), resize it to size x size, and flip half of the
    images horizontally: one affine ``grid_sample`` for the whole batch.
    """
    n, device = x.shape[0], x.device
    w, h, cx, cy = sample_crop_boxes(n, scale, generator, device, ratio, tries)
    sign = torch.ones(n, device=device)
    if flip:
        sign = torch.where(_bernoulli(n, 0.5, generator, device), -sign, sign)
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the chroma of RGB images by ``turns`` (fraction of a full turn) in YIQ space."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=x.dtype, device=x.device)
    from_yiq = torch.linalg.inv(to_yiq)
    angle = 2 * math.pi * turns
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    mat = from_yiq @ rot @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", mat, x)


def color_jitter(x: Tensor, strength: float, prob: float, generator: torch.Generator) -> Tensor:
    """SimCLR colour distortion: brightness, contrast, saturation 0.8*s, hue 0.2*s, applied with ``prob``.

    Grayscale images (1 channel) get brightness and contrast only. Images not drawn for jitter are
    returned bit-exact (the identity factors would still add float rounding in the hue rotation).
    """
    n, device = x.shape[0], x.device
    apply = _bernoulli(n, prob, generator, device)
    original = x

    def factor(amount: float) -> Tensor:
        f = _uniform(n, max(0.0, 1 - amount), 1 + amount, generator, device)
        return torch.where(apply, f, torch.ones_like(f)).view(n, 1, 1, 1).to(x.dtype)

    x = (x * factor(0.8 * strength)).clamp(0, 1)
    mean = luminance(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(0.8 * strength) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = luminance(x)
        x = ((x - gray) * factor(0.8 * strength) + gray).clamp(0, 1)
        turns = _uniform(n, -0.2 * strength, 0.2 * strength, generator, device)
        turns = torch.where(apply, turns, torch.zeros_like(turns)).to(x.dtype)
        x = _rotate_hue(x, turns).clamp(0, 1)
    return torch.where(apply.view(n, 1, 1, 1), x, original)


def random_grayscale(x: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    if x.shape[1] == 1 or prob == 0:
        return x
    mask = _bernoulli(x.shape[0], prob, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, luminance(x).expand_as(x), x)


def random_gaussian_blur(x: Tensor, generator: torch.Generator, prob: float = 0.5,
                         sigma=(0.1, 2.0)) -> Tensor:
    """Blur half of the images with a Gaussian of random sigma; kernel about 10 % of the image side."""
    n, c, hgt, wid = x.shape
    k = max(3, int(0.1 * hgt) // 2 * 2 + 1)
    s = _uniform(n, *sigma, generator, x.device)
    s = torch.where(_bernoulli(n, prob, generator, x.device), s, torch.full_like(s, 1e-3))
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * s.view(-1, 1).to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    flat = F.pad(x.reshape(1, n * c, hgt, wid), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, k), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, k, 1), groups=n * c)
    return flat.view(n, c, hgt, wid)


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def normalize(x: Tensor, mean, std) -> Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass
class ViewAugment:
    """Makes one random view of every image in a batch (call it twice for a pair)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    jitter_strength: float = 1.0
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    grayscale_passes: int = 1  # independent grayscale draws: effective probability 1 - (1 - p)^passes
    blur: bool = False

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        x = to_float(images)
        x = random_resized_crop_flip(x, self.image_size, self.crop_scale, self.flip, generator)
        if self.jitter_strength > 0 and self.jitter_prob > 0:
            x = color_jitter(x, self.jitter_strength, self.jitter_prob, generator)
        for _ in range(self.grayscale_passes):
            x = random_grayscale(x, self.grayscale_prob, generator)
        if self.blur:
            x = random_gaussian_blur(x, generator)
        return normalize(x, self.mean, self.std)


@dataclass
class TestTransform:
    """No augmentation: scale to [0, 1], resize to ``image_size`` if needed, normalise."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Tensor) -> Tensor:
        x = to_float(images)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return normalize(x, self.mean, self.std)


def view_augment_for(objective: str, image_size: int, mean, std, cfg=None) -> ViewAugment:
    """The SimCLR or SimSiam view recipe (SimSiam: jitter strength 0.5), with an AugmentConfig's overrides.

    The authors' SimSiam transform applies RandomGrayscale(p) twice, inside the colour distortion and
    again after it, so a SimSiam view is grayscale with probability 1 - (1 - p)^2 (0.36 for p = 0.2);
    ``augment.simsiam_grayscale_twice: true`` reproduces that with two independent draws.
    """
    strength = 1.0 if objective == "simclr" else 0.5
    blur = image_size >= 224
    kwargs = {}
    if cfg is not None:
        strength = cfg.jitter_strength if cfg.jitter_strength is not None else strength
        blur = cfg.blur if cfg.blur is not None else blur
        twice = objective == "simsiam" and cfg.simsiam_grayscale_twice
        kwargs = dict(crop_scale=(cfg.crop_scale_min, 1.0), flip=cfg.flip, jitter_prob=cfg.jitter_prob,
                      grayscale_prob=cfg.grayscale_prob, grayscale_passes=2 if twice else 1)
    return ViewAugment(image_size, tuple(mean), tuple(std), jitter_strength=strength, blur=blur, **kwargs)
