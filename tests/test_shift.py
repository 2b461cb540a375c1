"""The two corruption ladders: published CIFAR-10-C formulas and constants, exactly, and the kit's own."""

import numpy as np
import pytest
import torch

from dogo.errors import ConfigError
from dogo.shift import (
    CIFAR10C_SEVERITIES,
    CORRUPTIONS,
    LADDERS,
    STRONG_SEVERITIES,
    box_resize_matrix,
    corrupt,
    gaussian_kernel,
    pixelate_box,
)


def _rounds(out: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether uint8 ``out`` is the formula's exact value (float64, [0, 1]) clipped, * 255 and rounded:
    within half a grey level (a value on a .5 boundary may round either way in float32)."""
    return bool(((out.double() - values.clamp(0, 1) * 255).abs() <= 0.5 + 1e-4).all())


def _two_tone(n=2, channels=3, side=32):
    """Left half a, right half b, different per channel: means (a + b) / 2 per channel."""
    a = torch.tensor([40, 90, 150], dtype=torch.uint8)[:channels]
    b = torch.tensor([200, 130, 230], dtype=torch.uint8)[:channels]
    img = torch.empty(n, channels, side, side, dtype=torch.uint8)
    img[..., : side // 2] = a.view(1, -1, 1, 1)
    img[..., side // 2:] = b.view(1, -1, 1, 1)
    return img


def test_the_cifar10c_ladder_is_the_published_one_and_the_default():
    assert CIFAR10C_SEVERITIES["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert CIFAR10C_SEVERITIES["shot_noise"] == (500, 250, 100, 75, 50)
    assert CIFAR10C_SEVERITIES["impulse_noise"] == (0.01, 0.02, 0.03, 0.05, 0.07)
    assert CIFAR10C_SEVERITIES["speckle_noise"] == (0.06, 0.10, 0.12, 0.16, 0.20)
    assert CIFAR10C_SEVERITIES["gaussian_blur"] == (0.4, 0.6, 0.7, 0.8, 1.0)
    assert CIFAR10C_SEVERITIES["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert CIFAR10C_SEVERITIES["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert CIFAR10C_SEVERITIES["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)
    images = _two_tone()
    for name in CORRUPTIONS:
        assert torch.equal(corrupt(images, name, 3), corrupt(images, name, 3, ladder="cifar10c"))
        assert not torch.equal(corrupt(images, name, 5, ladder="cifar10c"), corrupt(images, name, 5, ladder="strong"))
    assert set(LADDERS) == {"cifar10c", "strong"} and set(STRONG_SEVERITIES) == set(CORRUPTIONS)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_contrast_is_around_the_per_image_per_channel_mean(severity):
    images = _two_tone()
    x = images.double() / 255
    c = CIFAR10C_SEVERITIES["contrast"][severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert _rounds(corrupt(images, "contrast", severity), (x - mean) * c + mean)
    # the strong ladder uses one mean over all channels
    c = STRONG_SEVERITIES["contrast"][severity - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    assert _rounds(corrupt(images, "contrast", severity, ladder="strong"), (x - mean) * c + mean)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_brightness_adds_to_the_hsv_value(severity):
    c = CIFAR10C_SEVERITIES["brightness"][severity - 1]
    # one colour pixel (V = 0.8), one black pixel (V = 0: becomes gray c), one gray pixel
    pixels = torch.tensor([[204, 102, 51], [0, 0, 0], [100, 100, 100]], dtype=torch.uint8)
    images = pixels.T.reshape(1, 3, 1, 3).expand(2, 3, 8, 3).contiguous()
    x = pixels.double() / 255
    v = x.max(dim=1, keepdim=True).values
    v_new = (v + c).clamp(0, 1)
    rgb = torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand(-1, 3))
    out = corrupt(images, "brightness", severity)
    assert _rounds(out[0, :, 0, :].T, rgb)
    # hue and saturation are kept: the colour pixel's channel ratios stay 4 : 2 : 1
    colour = out[0, :, 0, 0].double()
    assert abs(colour[0] / colour[2] - 4) < 0.1 and abs(colour[1] / colour[2] - 2) < 0.1
    gray = torch.full((1, 1, 4, 4), 100, dtype=torch.uint8)  # one channel: clip(x + c)
    assert _rounds(corrupt(gray, "brightness", severity), torch.full((1, 1, 4, 4), 100 / 255 + c))


@pytest.mark.parametrize("name, std", [("gaussian_noise", lambda c, x: c), ("speckle_noise", lambda c, x: c * x),
                                       ("shot_noise", lambda c, x: (x / c) ** 0.5)])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_noise_has_the_published_standard_deviation(name, std, severity):
    images = torch.full((40, 3, 32, 32), 128, dtype=torch.uint8)  # 122880 values
    x = 128 / 255
    change = (corrupt(images, name, severity).double() - 128) / 255
    expected = std(CIFAR10C_SEVERITIES[name][severity - 1], x)
    # 8-bit rounding adds variance 1/(12 * 255^2); the relative standard error of the std is 0.2 %
    expected = (expected ** 2 + 1 / (12 * 255 ** 2)) ** 0.5
    assert abs(change.std().item() / expected - 1) < 0.03
    assert abs(change.mean().item()) < 0.01


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_impulse_noise_hits_the_published_fraction_of_values(severity):
    images = torch.full((40, 3, 32, 32), 128, dtype=torch.uint8)
    out = corrupt(images, "impulse_noise", severity)
    hit = out != 128
    assert set(out[hit].unique().tolist()) <= {0, 255}
    assert abs(hit.double().mean().item() / CIFAR10C_SEVERITIES["impulse_noise"][severity - 1] - 1) < 0.1
    salt = (out == 255).sum().item() / hit.sum().item()
    assert 0.4 < salt < 0.6


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_blur_has_the_published_kernel(severity):
    sigma = CIFAR10C_SEVERITIES["gaussian_blur"][severity - 1]
    radius = int(4 * sigma + 0.5)
    images = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    images[0, 0, 16, 16] = 255
    k = gaussian_kernel(sigma, radius, torch.float64)
    expected = torch.zeros(32, 32, dtype=torch.float64)
    expected[16 - radius:17 + radius, 16 - radius:17 + radius] = k[:, None] * k[None, :]
    assert _rounds(corrupt(images, "gaussian_blur", severity)[0, 0], expected)


def test_box_resize_matches_pil():
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 32, generator=gen)
    for fraction in CIFAR10C_SEVERITIES["pixelate"]:
        small = int(32 * fraction)
        ref = Image.fromarray(x.numpy(), mode="F").resize((small, small), Image.BOX).resize((32, 32), Image.BOX)
        ours = pixelate_box(x.view(1, 1, 32, 32).double(), fraction)[0, 0]
        torch.testing.assert_close(ours, torch.tensor(np.array(ref), dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.allclose(box_resize_matrix(32, 20).sum(dim=1), torch.ones(20))


@pytest.mark.parametrize("ladder", list(LADDERS))
@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (8, 3, 32, 32)])
def test_corruption_severities_are_monotone(ladder, name, shape):
    gen = torch.Generator().manual_seed(0)
    # smooth random images (upsampled noise) in the mid-range, like natural images
    low = torch.rand(shape[0], shape[1], 7, 7, generator=gen)
    images = (torch.nn.functional.interpolate(low, size=shape[2:], mode="bilinear") * 180 + 30).round().to(torch.uint8)
    changes = []
    for severity in range(1, 6):
        out = corrupt(images, name, severity, seed=0, ladder=ladder)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        changes.append((out.float() - images.float()).abs().mean().item())
    assert changes[0] > 0
    if (ladder, name) == ("cifar10c", "pixelate") and shape[-1] != 32:
        # the published fractions are for 32 px: at 28 px, 21 px -> 28 px aliases less than 23 px -> 28 px
        return
    assert all(b > a for a, b in zip(changes, changes[1:])), changes
    assert torch.equal(corrupt(images, name, 3, seed=0, ladder=ladder),
                       corrupt(images, name, 3, seed=0, chunk=5, ladder=ladder))


def test_invalid_names_give_one_config_error():
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="did you mean 'contrast'"):
        corrupt(images, "contrst", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt(images, "contrast", 6)
    with pytest.raises(ConfigError, match="corruption_ladder: unknown ladder 'cifar10-c' \\(did you mean 'cifar10c'"):
        corrupt(images, "contrast", 1, ladder="cifar10-c")
