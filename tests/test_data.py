"""Dataset loaders: real Fashion-MNIST and digits, and tiny files in every other dataset's native format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import dogo.data
from dogo import DataError
from dogo.data import (
    FASHION_MNIST_CLASSES,
    STATS,
    ImageDataset,
    load_cifar10,
    load_cifar10_imbalanced,
    load_cifar100,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_stl10,
    load_tiny_imagenet,
    read_idx,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TINY_CLASSES = tuple(f"class{i}" for i in range(10))  # what the tiny CIFAR-10 and STL-10 fixtures write


def assert_dataset(ds: ImageDataset, images: np.ndarray, labels: np.ndarray, classes, split: str) -> None:
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert torch.equal(ds.images, torch.from_numpy(np.asarray(images)))
    assert torch.equal(ds.labels, torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    assert ds.classes == tuple(classes) and ds.split == split


# ------------------------------------------------------------------------------- Fashion-MNIST


def test_real_fashion_mnist_from_the_debian_path(data_root, monkeypatch):
    monkeypatch.setattr(dogo.data, "DEBIAN_DATASETS", DEBIAN_FASHION_MNIST.parent)
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    assert train.info["source"] == str(DEBIAN_FASHION_MNIST)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.num_classes == 10 and train.classes == FASHION_MNIST_CLASSES and train.channels == 1
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    # The normalisation constants are this split's statistics.
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(STATS["fashion_mnist"][0][0], abs=5e-4)
    assert pixels.std().item() == pytest.approx(STATS["fashion_mnist"][1][0], abs=5e-4)


def test_fashion_mnist_search_order_root_then_dogo_data_then_cwd(data_root, monkeypatch, tmp_path,
                                                                  fashion_mnist_writer):
    write_fashion_mnist = fashion_mnist_writer
    monkeypatch.setattr(dogo.data, "DEBIAN_DATASETS", DEBIAN_FASHION_MNIST.parent)  # searched last
    in_root = write_fashion_mnist(data_root / "fashion-mnist", n_train=3, seed=1)
    in_env = write_fashion_mnist(tmp_path / "env" / "fashion-mnist", n_train=4, seed=2)
    in_cwd = write_fashion_mnist(Path.cwd() / "data" / "FashionMNIST" / "raw", n_train=5, seed=3)
    monkeypatch.setenv("DOGO_DATA", str(tmp_path / "env"))

    ds = load_fashion_mnist("train", root=data_root)
    assert_dataset(ds, in_root.train_x, in_root.train_y, FASHION_MNIST_CLASSES, "train")
    assert ds.info["source"] == str(data_root / "fashion-mnist")
    ds = load_fashion_mnist("train")
    assert_dataset(ds, in_env.train_x, in_env.train_y, FASHION_MNIST_CLASSES, "train")
    monkeypatch.delenv("DOGO_DATA")
    ds = load_fashion_mnist("test")  # ./data/FashionMNIST/raw, torchvision's layout
    assert_dataset(ds, in_cwd.t10k_x, in_cwd.t10k_y, FASHION_MNIST_CLASSES, "test")
    (Path.cwd() / "data").rename(Path.cwd() / "elsewhere")
    assert load_fashion_mnist("test").info["source"] == str(DEBIAN_FASHION_MNIST)


def test_fashion_mnist_uncompressed_files_in_root_itself(data_root, fashion_mnist_writer):
    written = fashion_mnist_writer(data_root, n_train=2)
    for path in data_root.glob("*.gz"):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    assert_dataset(load_fashion_mnist("train", root=data_root), written.train_x, written.train_y,
                   FASHION_MNIST_CLASSES, "train")


def test_missing_fashion_mnist_says_where_we_looked_and_how_to_get_it(data_root, tmp_path):
    with pytest.raises(DataError) as info:
        load_fashion_mnist("train", root=data_root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Fashion-MNIST not found. Looked in: ")
    for place in (data_root, data_root / "fashion-mnist", Path.cwd() / "data" / "fashion-mnist",
                  tmp_path / "repo_data", tmp_path / "system_datasets" / "fashion-mnist"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message


def test_bad_split_names():
    with pytest.raises(DataError, match="fashion_mnist has splits train and test, not 'val'"):
        load_fashion_mnist("val")
    with pytest.raises(DataError, match="digits has splits train, test and all"):
        load_digits("val")


def test_truncated_or_foreign_idx_file(tmp_path, idx_writer):
    good = tmp_path / "x-idx3-ubyte.gz"
    idx_writer(good, np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
    assert read_idx(good).shape == (2, 3, 4)
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(gzip.decompress(good.read_bytes())[:-5])
    with pytest.raises(DataError, match="truncated IDX file"):
        read_idx(truncated)
    foreign = tmp_path / "foreign-idx3-ubyte"
    foreign.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(foreign)


def test_truncated_fashion_mnist_in_a_search_folder(data_root, fashion_mnist_writer):
    folder = data_root / "fashion-mnist"
    fashion_mnist_writer(folder, n_train=3)
    raw = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated IDX file"):
        load_fashion_mnist("train", root=data_root)


# ------------------------------------------------------------------------------- digits, limit


def test_digits_seeded_80_20_split():
    train, test, full = load_digits("train"), load_digits("test"), load_digits("all")
    assert (len(train), len(test), len(full)) == (1437, 360, 1797)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert full.images.max() == 255 and full.num_classes == 10
    # The split is a partition of the 1,797 images, and the same every time.
    key = lambda ds: {(bytes(x.numpy()), int(y)) for x, y in zip(ds.images, ds.labels)}  # noqa: E731
    assert key(train) | key(test) == key(full)
    assert torch.equal(load_digits("train").images, train.images)
    from sklearn.datasets import load_digits as sklearn_digits

    assert torch.equal(full.labels, torch.from_numpy(sklearn_digits().target.astype(np.int64)))


def test_digits_stats_are_the_train_split_statistics():
    pixels = load_digits("train").images.float() / 255
    mean, std = STATS["digits"]
    assert round(pixels.mean().item(), 2) == round(mean[0], 2) and pixels.mean().item() == pytest.approx(mean[0], abs=5e-4)
    assert round(pixels.std().item(), 2) == round(std[0], 2) and pixels.std().item() == pytest.approx(std[0], abs=5e-4)


def test_limit_gives_a_reproducible_subset():
    full = load_dataset("digits", "train")
    a = load_dataset("digits", "train", limit=100, seed=3)
    b = load_dataset("digits", "train", limit=100, seed=3)
    c = load_dataset("digits", "train", limit=100, seed=4)
    assert len(a) == 100 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    rows = {bytes(x.numpy()) for x in full.images}
    assert all(bytes(x.numpy()) in rows for x in a.images)
    assert len(load_dataset("digits", "train", limit=5000)) == len(full)  # a limit above the size keeps all


def test_unknown_dataset_name_suggests_the_nearest():
    with pytest.raises(DataError, match="unknown dataset 'cifar11' \\(did you mean 'cifar10'\\?\\)"):
        load_dataset("cifar11")


# ------------------------------------------------------------------------------- CIFAR


def test_cifar10_native_batches(tiny_cifar10):
    train = load_cifar10("train", root=tiny_cifar10.root)
    assert_dataset(train, tiny_cifar10.train_x, tiny_cifar10.train_y, TINY_CLASSES, "train")
    test = load_cifar10("test", root=tiny_cifar10.root)
    assert_dataset(test, tiny_cifar10.test_x, tiny_cifar10.test_y, TINY_CLASSES, "test")
    assert train.images.shape == (100, 3, 32, 32) and train.info["source"] == str(tiny_cifar10.folder)
    # The row layout: 1024 red bytes, then green, then blue, each plane row-major.
    raw = tiny_cifar10.train_x[0].reshape(-1)
    assert train.images[0, 0, 0, 31] == raw[31] and train.images[0, 0, 1, 0] == raw[32]
    assert train.images[0, 1, 0, 0] == raw[1024] and train.images[0, 2, 31, 31] == raw[3071]


def test_cifar10_from_dogo_data_and_via_load_dataset(tiny_cifar10, monkeypatch):
    monkeypatch.setenv("DOGO_DATA", str(tiny_cifar10.root))
    ds = load_dataset("cifar10", "test")
    assert_dataset(ds, tiny_cifar10.test_x, tiny_cifar10.test_y, TINY_CLASSES, "test")
    assert ds.mean == STATS["cifar10"][0]


def test_cifar10_incomplete_or_missing(tiny_cifar10, data_root):
    (tiny_cifar10.folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="CIFAR-10 in .* is incomplete: missing data_batch_3"):
        load_cifar10("train", root=data_root)
    (tiny_cifar10.folder / "test_batch").write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR batch file"):
        load_cifar10("test", root=data_root)
    with pytest.raises(DataError, match="cifar10 has splits train and test"):
        load_cifar10("val", root=data_root)


def test_missing_cifar10_says_where_we_looked(tmp_path, data_root):
    with pytest.raises(DataError) as info:
        load_cifar10("train")
    message = str(info.value)
    assert message.startswith("CIFAR-10 not found. Looked in: ") and "\n" not in message
    assert str(Path.cwd() / "data" / "cifar-10-batches-py") in message
    assert str(tmp_path / "system_datasets" / "cifar-10-batches-py") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def test_cifar10_imbalanced_counts(tiny_cifar10, monkeypatch):
    counts = (10, 6, 4, 3, 3, 2, 2, 1, 1, 1)
    monkeypatch.setattr(dogo.data, "IMBALANCED_CIFAR10_COUNTS", counts)
    train = load_dataset("cifar10_imbalanced", "train", root=tiny_cifar10.root)
    assert train.name == "cifar10_imbalanced" and len(train) == sum(counts)
    assert train.labels.bincount().tolist() == list(counts)
    # The kept images are the first ones of each class, unchanged.
    first_of_class_1 = np.flatnonzero(tiny_cifar10.train_y == 1)[:6]
    assert torch.equal(train.images[train.labels == 1], torch.from_numpy(tiny_cifar10.train_x[first_of_class_1]))
    test = load_cifar10_imbalanced("test", root=tiny_cifar10.root)
    assert test.name == "cifar10_imbalanced" and test.labels.bincount().tolist() == [1] * 10


def test_cifar10_imbalanced_needs_enough_images(tiny_cifar10, monkeypatch):
    monkeypatch.setattr(dogo.data, "IMBALANCED_CIFAR10_COUNTS", (11,) + (1,) * 9)
    with pytest.raises(DataError, match="needs 11 images of class 0, found 10"):
        load_cifar10_imbalanced("train", root=tiny_cifar10.root)


def test_imbalanced_counts_are_the_authors():
    assert dogo.data.IMBALANCED_CIFAR10_COUNTS == (5000, 858, 557, 439, 375, 333, 304, 282, 264, 250)


def test_cifar100_native_files(tiny_cifar100):
    train = load_cifar100("train", root=tiny_cifar100.root)
    assert_dataset(train, tiny_cifar100.train_x, tiny_cifar100.train_y, tiny_cifar100.classes, "train")
    test = load_cifar100("test", root=tiny_cifar100.root)
    assert_dataset(test, tiny_cifar100.test_x, tiny_cifar100.test_y, tiny_cifar100.classes, "test")
    assert train.num_classes == 100 and train.labels.max() == 99  # fine labels, not the 20 coarse ones


def test_cifar100_incomplete(tiny_cifar100):
    (tiny_cifar100.folder / "test").unlink()
    with pytest.raises(DataError, match="CIFAR-100 in .* is incomplete: missing test"):
        load_cifar100("test", root=tiny_cifar100.root)


# ------------------------------------------------------------------------------- STL-10


def test_stl10_native_binaries_and_orientation(tiny_stl10):
    train = load_stl10("train", root=tiny_stl10.root)
    assert_dataset(train, tiny_stl10.train_x, tiny_stl10.train_y, TINY_CLASSES, "train")
    test = load_stl10("test", root=tiny_stl10.root)
    assert_dataset(test, tiny_stl10.test_x, tiny_stl10.test_y, TINY_CLASSES, "test")
    # The wide bar written at the top left lands there, lying, not standing at the left edge.
    marker = train.images[0]
    assert torch.equal(marker, torch.from_numpy(tiny_stl10.marker))
    assert (marker[:, 0:4, 0:48] == 255).all() and (marker[:, 4:48, 0:4] == 0).all()


def test_stl10_unlabeled_splits(tiny_stl10):
    unlabeled = load_stl10("unlabeled", root=tiny_stl10.root)
    assert torch.equal(unlabeled.images, torch.from_numpy(tiny_stl10.unlabeled_x))
    assert unlabeled.labels.tolist() == [-1, -1]
    both = load_dataset("stl10", "pretrain", root=tiny_stl10.root)  # pre-training uses train+unlabeled
    assert both.split == "train+unlabeled" and len(both) == 6
    assert both.labels.tolist() == tiny_stl10.train_y.tolist() + [-1, -1]
    assert torch.equal(both.images[4:], torch.from_numpy(tiny_stl10.unlabeled_x))


def test_stl10_incomplete(tiny_stl10):
    with pytest.raises(DataError, match="stl10 has splits"):
        load_stl10("val", root=tiny_stl10.root)
    (tiny_stl10.folder / "test_y.bin").unlink()
    with pytest.raises(DataError, match="STL-10 in .* is incomplete: missing test_y.bin"):
        load_stl10("test", root=tiny_stl10.root)
    (tiny_stl10.folder / "unlabeled_X.bin").unlink()
    with pytest.raises(DataError, match="STL-10 in .* is incomplete: missing unlabeled_X.bin"):
        load_stl10("train+unlabeled", root=tiny_stl10.root)
    with open(tiny_stl10.folder / "train_X.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError, match="not a whole number of 3x96x96 images"):
        load_stl10("train", root=tiny_stl10.root)


# ------------------------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet_folder_tree(tiny_imagenet):
    for split, labels in (("train", tiny_imagenet.train_y), ("test", tiny_imagenet.test_y)):
        for attempt in ("decoded", "cached"):
            ds = load_tiny_imagenet(split, root=tiny_imagenet.root)
            assert ds.images.shape == (len(labels), 3, 64, 64) and ds.images.dtype == torch.uint8, attempt
            assert ds.labels.tolist() == labels.tolist() and ds.classes == tiny_imagenet.wnids, attempt
            colours = torch.tensor(tiny_imagenet.colours, dtype=torch.float32)[ds.labels]  # (N, 3)
            assert (ds.images.float() - colours.view(-1, 3, 1, 1)).abs().max() <= 4, attempt  # JPEG
        assert (tiny_imagenet.folder / f"dogo_cache_{split}.pt").is_file()


def test_tiny_imagenet_incomplete(tiny_imagenet):
    with pytest.raises(DataError, match="tiny_imagenet has splits train and test"):
        load_tiny_imagenet("val", root=tiny_imagenet.root)
    (tiny_imagenet.folder / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DataError, match="Tiny-ImageNet in .* is incomplete: missing val/images/val_2.JPEG"):
        load_tiny_imagenet("test", root=tiny_imagenet.root)
    wnid = tiny_imagenet.wnids[1]
    for image in (tiny_imagenet.folder / "train" / wnid / "images").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=f"Tiny-ImageNet in .* is incomplete: no train/{wnid}/images/"):
        load_tiny_imagenet("train", root=tiny_imagenet.root)
    (tiny_imagenet.folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="Tiny-ImageNet in .* is incomplete: missing val/val_annotations.txt"):
        load_tiny_imagenet("test", root=tiny_imagenet.root)
    (tiny_imagenet.folder / "wnids.txt").unlink()
    with pytest.raises(DataError, match="Tiny-ImageNet in .* is incomplete: missing wnids.txt"):
        load_tiny_imagenet("train", root=tiny_imagenet.root)


def test_missing_tiny_imagenet(data_root):
    with pytest.raises(DataError, match="Tiny-ImageNet not found. Looked in: .*tiny-imagenet-200"):
        load_tiny_imagenet("train", root=data_root)


def test_tiny_imagenet_unknown_class_in_annotations(tiny_imagenet):
    annotations = tiny_imagenet.folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn99999999\t0\t0\t63\t63\n")
    with pytest.raises(DataError, match="class 'n99999999' of val_0.JPEG is not in wnids.txt"):
        load_tiny_imagenet("test", root=tiny_imagenet.root)


def test_tiny_imagenet_read_only_folder_skips_the_cache(tiny_imagenet, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(torch, "save", read_only)
    ds = load_tiny_imagenet("test", root=tiny_imagenet.root)
    assert ds.labels.tolist() == tiny_imagenet.test_y.tolist()
    assert not (tiny_imagenet.folder / "dogo_cache_test.pt").exists()
