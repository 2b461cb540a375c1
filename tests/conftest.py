"""Shared fixtures: isolated data search paths and tiny datasets written in each dataset's native format.

The writers follow the official on-disk layouts (the files the official downloads contain), so the
loaders in ``dogo.data`` are tested on real formats, only with a handful of images:

- Fashion-MNIST: IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (big-endian header).
- CIFAR-10: python pickles ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` and
  ``batches.meta`` with bytes keys; each row of ``data`` holds 1024 red, 1024 green, 1024 blue bytes,
  each plane row-major (32 x 32).
- CIFAR-100: ``cifar-100-python/{train,test,meta}`` with ``fine_labels`` and ``fine_label_names``.
- STL-10: ``stl10_binary/{train,test,unlabeled}_X.bin`` (each 96 x 96 plane stored column-major),
  ``{train,test}_y.bin`` (labels 1..10) and ``class_names.txt``.
- Tiny-ImageNet: ``tiny-imagenet-200/wnids.txt``, ``train/<wnid>/images/<wnid>_<i>.JPEG``,
  ``val/images/val_<i>.JPEG`` and ``val/val_annotations.txt`` (tab separated).

Each fixture returns a namespace with ``root`` (pass it as ``root=``) and the arrays that were
written, in the (N, C, H, W) orientation the loaders must return.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import dogo.data

TINY_CLASSES = tuple(f"class{i}" for i in range(10))


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """An empty data folder, with every other place the loaders search made empty too.

    ``$DOGO_DATA`` is unset, the working directory is a fresh folder (so ``./data`` is empty), and
    the repository's ``data/`` and the Debian dataset folder point into ``tmp_path``.
    """
    monkeypatch.delenv("DOGO_DATA", raising=False)
    for name in ("cwd", "repo_data", "system_datasets", "root"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(dogo.data, "REPO_DATA", tmp_path / "repo_data")
    monkeypatch.setattr(dogo.data, "DEBIAN_DATASETS", tmp_path / "system_datasets")
    return tmp_path / "root"


@pytest.fixture
def idx_writer():
    """``write_idx(path, array)``: write a uint8 array as a gzipped IDX file."""
    return write_idx


@pytest.fixture
def fashion_mnist_writer():
    """``write_fashion_mnist(folder, n_train=12, n_test=5, seed=0)``: tiny Fashion-MNIST IDX files."""
    return write_fashion_mnist


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file: 0, 0, type 0x08, ndim, then big-endian int32 dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_mnist(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> SimpleNamespace:
    """Tiny Fashion-MNIST IDX files in ``folder``: 28 x 28 images and labels 0..9.

    Returns ``root`` (= folder) and ``train_x``, ``train_y``, ``t10k_x``, ``t10k_y`` as written.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = SimpleNamespace(root=folder)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        setattr(out, f"{prefix}_x", x[:, None])
        setattr(out, f"{prefix}_y", y.astype(np.int64))
    return out


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _labelled_images(rng, per_class: int, channels: int, size: int, classes: int = 10):
    """Random uint8 images (N, C, H, W) with ``per_class`` images of each class, classes interleaved."""
    labels = np.tile(np.arange(classes), per_class)
    images = rng.integers(0, 256, size=(len(labels), channels, size, size), dtype=np.uint8)
    return images, labels


@pytest.fixture
def tiny_cifar10(data_root) -> SimpleNamespace:
    """CIFAR-10 python batches: 5 train batches of 2 images per class (100 in all), a test batch of 10."""
    rng = np.random.default_rng(10)
    folder = data_root / "cifar-10-batches-py"
    folder.mkdir()
    train_x, train_y, test_x, test_y = [], [], None, None
    for i in range(1, 7):
        x, y = _labelled_images(rng, 2 if i <= 5 else 1, 3, 32)
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        _pickle(folder / name, {b"batch_label": name.encode(), b"labels": y.tolist(),
                                b"data": x.reshape(len(x), 3 * 32 * 32),
                                b"filenames": [f"img{j}.png".encode() for j in range(len(x))]})
        if i <= 5:
            train_x.append(x)
            train_y.append(y)
        else:
            test_x, test_y = x, y
    _pickle(folder / "batches.meta", {b"num_cases_per_batch": 20, b"num_vis": 3072,
                                      b"label_names": [c.encode() for c in TINY_CLASSES]})
    return SimpleNamespace(root=data_root, folder=folder, train_x=np.concatenate(train_x),
                           train_y=np.concatenate(train_y), test_x=test_x, test_y=test_y, classes=TINY_CLASSES)


@pytest.fixture
def tiny_cifar100(data_root) -> SimpleNamespace:
    """CIFAR-100 python files: 200 train and 100 test images (100 fine classes, 20 coarse)."""
    rng = np.random.default_rng(100)
    folder = data_root / "cifar-100-python"
    folder.mkdir()
    out = SimpleNamespace(root=data_root, folder=folder, classes=tuple(f"fine{i}" for i in range(100)))
    for split, per_class in (("train", 2), ("test", 1)):
        x, y = _labelled_images(rng, per_class, 3, 32, classes=100)
        _pickle(folder / split, {b"filenames": [b"x.png"] * len(x), b"batch_label": split.encode(),
                                 b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
                                 b"data": x.reshape(len(x), 3072)})
        setattr(out, f"{split}_x", x)
        setattr(out, f"{split}_y", y)
    _pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in out.classes],
                              b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return out


def stl10_marker_image() -> np.ndarray:
    """An upright (3, 96, 96) image that is black except a wide bar at the top left (rows 0-3, cols 0-47).

    Loaded without the column-major transpose, the bar would stand upright at the left instead.
    """
    image = np.zeros((3, 96, 96), dtype=np.uint8)
    image[:, 0:4, 0:48] = 255
    return image


@pytest.fixture
def tiny_stl10(data_root) -> SimpleNamespace:
    """STL-10 binaries: 4 train, 3 test, 2 unlabeled images; train image 0 is ``stl10_marker_image``."""
    rng = np.random.default_rng(96)
    folder = data_root / "stl10_binary"
    folder.mkdir()
    out = SimpleNamespace(root=data_root, folder=folder, classes=TINY_CLASSES, marker=stl10_marker_image())
    for part, n in (("train", 4), ("test", 3), ("unlabeled", 2)):
        x = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        if part == "train":
            x[0] = out.marker
        # Native layout: each channel plane is stored column-major, i.e. as the transpose of the image.
        x.transpose(0, 1, 3, 2).tofile(folder / f"{part}_X.bin")
        setattr(out, f"{part}_x", x)
        if part != "unlabeled":
            y = (np.arange(n) * 3) % 10  # 0-based class index
            (y + 1).astype(np.uint8).tofile(folder / f"{part}_y.bin")  # the files hold 1..10
            setattr(out, f"{part}_y", y.astype(np.int64))
    (folder / "class_names.txt").write_text("".join(c + "\n" for c in TINY_CLASSES))
    return out


TINY_IMAGENET_WNIDS = ("n01443537", "n01629819", "n01641577")
# One solid colour per class: JPEG keeps solid colours to within a few levels.
TINY_IMAGENET_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))


@pytest.fixture
def tiny_imagenet(data_root) -> SimpleNamespace:
    """Tiny-ImageNet-200 folder tree with 3 classes: 2 train JPEGs per class, 4 val JPEGs."""
    from PIL import Image

    folder = data_root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(w + "\n" for w in TINY_IMAGENET_WNIDS))

    def save(path: Path, cls: int) -> None:
        Image.new("RGB", (64, 64), TINY_IMAGENET_COLOURS[cls]).save(path, "JPEG", quality=95)

    train_y = []
    for cls, wnid in enumerate(TINY_IMAGENET_WNIDS):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        with open(folder / "train" / wnid / f"{wnid}_boxes.txt", "w") as boxes:
            for i in range(2):
                save(images / f"{wnid}_{i}.JPEG", cls)
                boxes.write(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
                train_y.append(cls)
    val_y = [2, 0, 1, 2]
    lines = []
    for i, cls in enumerate(val_y):
        save(folder / "val" / "images" / f"val_{i}.JPEG", cls)
        lines.append(f"val_{i}.JPEG\t{TINY_IMAGENET_WNIDS[cls]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return SimpleNamespace(root=data_root, folder=folder, wnids=TINY_IMAGENET_WNIDS,
                           train_y=np.array(train_y), test_y=np.array(val_y), colours=TINY_IMAGENET_COLOURS)
