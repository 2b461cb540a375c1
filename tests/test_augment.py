"""Batched view augmentation: shapes, reproducibility, and each operation against its definition."""

from __future__ import annotations

import pytest
import torch

import dogo.augment
from dogo.augment import (
    TestTransform,
    ViewAugment,
    color_jitter,
    luminance,
    random_gaussian_blur,
    random_grayscale,
    random_resized_crop_flip,
    sample_crop_boxes,
    view_augment_for,
)
from dogo.config import AugmentConfig

TestTransform.__test__ = False  # a transform, not a test class


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=gen(seed), dtype=torch.uint8)


def identity_augment(size: int, channels: int, **changes) -> ViewAugment:
    """A ViewAugment that does nothing but scale and normalise (unless ``changes`` turn something on)."""
    settings = dict(crop_scale=(1.0, 1.0), flip=False, jitter_strength=0.0, jitter_prob=0.0,
                    grayscale_prob=0.0, blur=False)
    return ViewAugment(size, (0.5,) * channels, (0.25,) * channels, **(settings | changes))


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between horizontally and vertically adjacent pixels."""
    return (x.diff(dim=-1) ** 2).sum() + (x.diff(dim=-2) ** 2).sum()


# ------------------------------------------------------------------------------- the whole view


@pytest.mark.parametrize("channels", [1, 3])
def test_view_shape_dtype_and_normalisation(channels):
    images = uint8_images(6, channels, 28)
    view = ViewAugment(20, (0.5,) * channels, (0.25,) * channels, blur=True)(images, gen())
    assert view.shape == (6, channels, 20, 20) and view.dtype == torch.float32
    assert torch.isfinite(view).all()
    assert view.min() >= (0 - 0.5) / 0.25 - 1e-5 and view.max() <= (1 - 0.5) / 0.25 + 1e-5
    # With every random operation turned off, the view is exactly the normalised image.
    plain = identity_augment(28, channels)(images, gen())
    assert torch.allclose(plain, (images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_same_seed_same_views_different_seed_different_views():
    images = uint8_images(8, 3, 16)
    augment = ViewAugment(16, (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(augment(images, gen(7)), augment(images, gen(7)))
    assert not torch.allclose(augment(images, gen(7)), augment(images, gen(8)))
    # Two calls on one generator give two different views (a positive pair).
    g = gen(7)
    assert not torch.allclose(augment(images, g), augment(images, g))


# ------------------------------------------------------------------------------- crop and flip


def test_crop_with_full_scale_and_no_flip_is_the_identity():
    x = torch.rand(5, 3, 24, 24, generator=gen(1))
    out = random_resized_crop_flip(x, 24, (1.0, 1.0), flip=False, generator=gen(2))
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_only_equals_torch_flip_for_about_half_the_images():
    x = torch.rand(32, 2, 12, 12, generator=gen(3))
    out = random_resized_crop_flip(x, 12, (1.0, 1.0), flip=True, generator=gen(4))
    flipped = torch.flip(x, dims=[-1])
    is_flipped = [torch.allclose(o, f, atol=1e-5) for o, f in zip(out, flipped)]
    is_same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(a != b for a, b in zip(is_flipped, is_same))  # each image is exactly one of the two
    assert 6 <= sum(is_flipped) <= 26


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.3, 0.6), (0.5, 0.5)])
def test_crop_boxes_respect_the_scale_and_ratio_bounds(scale):
    w, h, cx, cy = sample_crop_boxes(4000, scale, gen(5))
    area = w * h
    fallback = (w == 1) & (h == 1)  # no fitting candidate in 10 tries: the whole image
    assert ((area >= scale[0] - 1e-6) & (area <= scale[1] + 1e-6) | fallback).all()
    assert (w <= 1).all() and (h <= 1).all() and (w > 0).all() and (h > 0).all()
    aspect = w / h
    assert ((aspect >= 3 / 4 - 1e-6) & (aspect <= 4 / 3 + 1e-6)).all()
    assert (cx.abs() <= 1 - w + 1e-6).all() and (cy.abs() <= 1 - h + 1e-6).all()  # inside the image
    assert fallback.float().mean() < 0.01
    if scale[0] < scale[1]:  # the whole range is used
        assert area.min() < scale[0] + 0.05 * (scale[1] - scale[0])
        assert area[~fallback].max() > scale[1] - 0.05 * (scale[1] - scale[0])


def test_crop_boxes_fall_back_to_the_whole_image():
    # An area of 1 fits only with aspect ratio exactly 1, which is never drawn.
    w, h, cx, cy = sample_crop_boxes(50, (1.0, 1.0), gen(6))
    assert torch.equal(w, torch.ones(50)) and torch.equal(h, torch.ones(50))
    assert torch.equal(cx, torch.zeros(50)) and torch.equal(cy, torch.zeros(50))


def test_crop_samples_the_sampled_box():
    """On a horizontal ramp (value = normalised x coordinate) a crop's columns read cx + w * u_out."""
    size_in, size_out, n = 64, 16, 20
    u_in = (2 * torch.arange(size_in) + 1) / size_in - 1  # pixel centres in [-1, 1]
    ramp = u_in.view(1, 1, 1, -1).expand(n, 1, size_in, size_in).contiguous()
    out = random_resized_crop_flip(ramp, size_out, (0.2, 0.6), flip=False, generator=gen(9))
    w, h, cx, cy = sample_crop_boxes(n, (0.2, 0.6), gen(9))  # the same draws as the crop's
    u_out = (2 * torch.arange(size_out) + 1) / size_out - 1
    expected = cx.view(-1, 1) + w.view(-1, 1) * u_out.view(1, -1)  # (n, size_out)
    inside = expected.abs() <= u_in.max()  # bilinear sampling of a line is exact between pixel centres
    assert inside.float().mean() > 0.9
    got = out[:, 0, 0, :]
    assert torch.allclose(got[inside], expected[inside], atol=1e-5)
    assert torch.allclose(out, out[:, :, :1, :].expand_as(out))  # rows are all alike


# ------------------------------------------------------------------------------- colour


def test_grayscale_with_probability_one_gives_equal_channels():
    x = torch.rand(4, 3, 8, 8, generator=gen(10))
    out = random_grayscale(x, 1.0, gen(11))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out[:, :1], 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:], atol=1e-6)
    assert torch.equal(random_grayscale(x, 0.0, gen(11)), x)


def test_jitter_with_probability_zero_leaves_images_unchanged():
    for channels in (1, 3):
        x = torch.rand(6, channels, 8, 8, generator=gen(12))
        assert torch.equal(color_jitter(x, 1.0, 0.0, gen(13)), x)
        assert not torch.allclose(color_jitter(x, 1.0, 1.0, gen(13)), x, atol=1e-3)


def test_jitter_keeps_values_in_range():
    x = torch.rand(16, 3, 8, 8, generator=gen(14))
    out = color_jitter(x, 1.0, 0.8, gen(15))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_jitter_on_grayscale_runs_no_hue_or_saturation(monkeypatch):
    def no_hue(*args, **kwargs):
        raise AssertionError("hue rotation ran")

    monkeypatch.setattr(dogo.augment, "_rotate_hue", no_hue)
    x = torch.rand(6, 1, 8, 8, generator=gen(16))
    out = color_jitter(x, 1.0, 1.0, gen(17))
    assert out.shape == x.shape
    # Brightness and contrast only: each image is an affine map of its pixels, ordering preserved
    # wherever clamping did not flatten values.
    for before, after in zip(x, out):
        order = before.flatten().argsort()
        assert (after.flatten()[order].diff() >= -1e-6).all()
    with pytest.raises(AssertionError, match="hue rotation ran"):
        color_jitter(torch.rand(2, 3, 8, 8), 1.0, 1.0, gen(17))


def test_luminance_weights():
    x = torch.rand(2, 3, 4, 4, generator=gen(18))
    assert torch.allclose(luminance(x)[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2], atol=1e-6)
    gray = torch.rand(2, 1, 4, 4)
    assert luminance(gray) is gray


# ------------------------------------------------------------------------------- blur


def test_blur_keeps_shape_and_removes_high_frequencies():
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checkerboard = ((rows + cols) % 2).float().expand(4, 3, 32, 32).contiguous()
    blurred = random_gaussian_blur(checkerboard, gen(19), prob=1.0, sigma=(1.0, 2.0))
    assert blurred.shape == checkerboard.shape
    for before, after in zip(checkerboard, blurred):
        assert high_frequency_energy(after) < 0.5 * high_frequency_energy(before)
    assert torch.allclose(blurred.mean(), checkerboard.mean(), atol=0.02)  # a blur keeps the mean
    # Probability 0: the kernel is a unit impulse, the images come back unchanged.
    assert torch.allclose(random_gaussian_blur(checkerboard, gen(19), prob=0.0), checkerboard, atol=1e-6)


def test_blur_at_224_px():
    x = torch.rand(2, 3, 224, 224, generator=gen(20))
    out = random_gaussian_blur(x, gen(21), prob=1.0)
    assert out.shape == x.shape and high_frequency_energy(out) < high_frequency_energy(x)


# ------------------------------------------------------------------------------- test transform and recipes


def test_test_transform_resizes_and_normalises():
    images = uint8_images(3, 3, 28)
    out = TestTransform(32, (0.5,) * 3, (0.25,) * 3)(images)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    constant = torch.full((1, 1, 28, 28), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    assert torch.allclose(TestTransform(16, (0.5,), (0.25,))(constant), torch.full((1, 1, 16, 16), -1.2), atol=1e-5)
    same = TestTransform(28, (0.5,) * 3, (0.25,) * 3)(images)
    assert torch.allclose(same, (images.float() / 255 - 0.5) / 0.25, atol=1e-6)


def test_view_recipes_per_objective():
    simclr = view_augment_for("simclr", 32, (0.5,), (0.25,))
    simsiam = view_augment_for("simsiam", 32, (0.5,), (0.25,))
    assert simclr.jitter_strength == 1.0 and simsiam.jitter_strength == 0.5
    assert simclr.crop_scale == (0.08, 1.0) and simclr.flip and simclr.jitter_prob == 0.8
    assert simclr.grayscale_prob == 0.2 and not simclr.blur
    assert view_augment_for("simclr", 224, (0.5,), (0.25,)).blur  # blur only at 224 px, as in SimCLR


def test_view_recipe_follows_the_augment_config():
    cfg = AugmentConfig(crop_scale_min=0.3, flip=False, jitter_strength=0.7, jitter_prob=0.5,
                        grayscale_prob=0.0, blur=True)
    augment = view_augment_for("simsiam", 28, [0.5], [0.25], cfg)
    assert (augment.crop_scale, augment.flip, augment.jitter_strength, augment.jitter_prob,
            augment.grayscale_prob, augment.blur) == ((0.3, 1.0), False, 0.7, 0.5, 0.0, True)
    assert augment.mean == (0.5,) and augment.std == (0.25,)
    # None in the config keeps the objective's default.
    assert view_augment_for("simsiam", 28, [0.5], [0.25], AugmentConfig()).jitter_strength == 0.5


def test_simsiam_grayscale_twice_gives_the_authors_effective_rate():
    images = uint8_images(4000, 3, 8, seed=1)
    cfg = AugmentConfig(jitter_prob=0.0, simsiam_grayscale_twice=True)

    def gray_fraction(objective: str) -> float:
        views = view_augment_for(objective, 8, (0.5,) * 3, (0.25,) * 3, cfg)(images, gen(3))
        gray = (views[:, 0] == views[:, 1]).all(dim=(1, 2)) & (views[:, 1] == views[:, 2]).all(dim=(1, 2))
        return gray.float().mean().item()

    # binomial standard error about 0.008 at n = 4000: a bound of 0.04 is five of them
    assert abs(gray_fraction("simsiam") - (1 - 0.8 ** 2)) < 0.04
    assert abs(gray_fraction("simclr") - 0.2) < 0.04  # SimCLR keeps one draw
    assert view_augment_for("simsiam", 8, (0.5,), (0.25,), AugmentConfig()).grayscale_passes == 1
