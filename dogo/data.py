"""Datasets held in memory as uint8 tensors (N, C, H, W) with int64 labels.

Every dataset is read from its original on-disk format (the files the official downloads
contain). Fashion-MNIST works offline: the loader looks in ``$DOGO_DATA``, then ``./data``, then
the repository's ``data/``, then Debian's ``dataset-fashion-mnist`` location, and downloads only
when asked to. A missing dataset gives one error that lists where we looked and how to get it.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, did_you_mean

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
DEBIAN_DATASETS = Path("/usr/share/datasets")
CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Per-dataset channel statistics (of the training split) for normalisation.
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3050,), (0.3756,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10_imbalanced": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
# The authors' long-tailed CIFAR-10 (imbalance ratio 20): images kept per class, in class order.
IMBALANCED_CIFAR10_COUNTS = (5000, 858, 557, 439, 375, 333, 304, 282, 264, 250)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W), labels as int64 (N,) (-1 where unlabeled), with their statistics."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split: str = "train"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index) -> ImageDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageDataset(self.name, self.images[index], self.labels[index], self.classes,
                            self.mean, self.std, self.split, dict(self.info))

    def limit(self, n: int | None, seed: int = 0) -> ImageDataset:
        """A fixed random subset of ``n`` images (the same for the same seed), or self if n is None."""
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[:n].sort().values)


def _search_dirs(root: str | Path | None) -> list[Path]:
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("DOGO_DATA"):
        dirs.append(Path(os.environ["DOGO_DATA"]))
    dirs += [Path.cwd() / "data", REPO_DATA, DEBIAN_DATASETS]
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _missing(name: str, looked: list[Path], how: str) -> DataError:
    places = "; ".join(str(p) for p in looked)
    return DataError(f"{name} not found. Looked in: {places}. To get it: {how}")


# --------------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} values for shape {dims})")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    if split not in ("train", "test"):
        raise DataError(f"fashion_mnist has splits train and test, not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    looked = []
    for base in _search_dirs(root):
        for folder in (base / "fashion-mnist", base / "FashionMNIST" / "raw", base):
            looked.append(folder)
            images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
            labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
            if images and labels:
                x = torch.from_numpy(read_idx(images).copy()).unsqueeze(1)
                y = torch.from_numpy(read_idx(labels).astype(np.int64))
                mean, std = STATS["fashion_mnist"]
                return ImageDataset("fashion_mnist", x, y, FASHION_MNIST_CLASSES, mean, std, split,
                                    {"source": str(folder)})
    if download:
        import torchvision

        target = Path(root) if root else REPO_DATA
        torchvision.datasets.FashionMNIST(str(target), train=split == "train", download=True)
        return load_fashion_mnist(split, target, download=False)
    raise _missing("Fashion-MNIST", looked,
                   "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, offline-friendly), or put the "
                   "four *-ubyte.gz files in ./data/fashion-mnist or $DOGO_DATA, or set data.download=true")


# --------------------------------------------------------------------------------- digits


def load_digits(split: str = "train", root=None, download: bool = False, image_size: int = 8) -> ImageDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the wheel).

    Split 80/20 with a fixed seed. Pixels 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits as sk_digits

    if split not in ("train", "test", "all"):
        raise DataError(f"digits has splits train, test and all, not {split!r}")
    bunch = sk_digits()
    x = torch.from_numpy((bunch.images * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    index = {"train": order[:cut], "test": order[cut:], "all": torch.arange(len(x))}[split]
    mean, std = STATS["digits"]
    return ImageDataset("digits", x[index], y[index], tuple(str(i) for i in range(10)), mean, std, split)


# --------------------------------------------------------------------------------- CIFAR


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CIFAR batch file ({exc})") from None


def _cifar_arrays(files: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        batch = _unpickle(f)
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _find_folder(root, name: str) -> tuple[Path | None, list[Path]]:
    looked = []
    for base in _search_dirs(root):
        looked.append(base / name)
        if (base / name).is_dir():
            return base / name, looked
    return None, looked


def _locate(root, folder_name: str, title: str, how: str, download: bool, torchvision_name: str,
            **download_kwargs) -> Path:
    """The dataset's folder: searched for, else downloaded with torchvision when asked, else one error."""
    folder, looked = _find_folder(root, folder_name)
    if folder is None and download:
        import torchvision

        getattr(torchvision.datasets, torchvision_name)(str(Path(root) if root else REPO_DATA), download=True,
                                                        **download_kwargs)
        folder, looked = _find_folder(root, folder_name)
    if folder is None:
        raise _missing(title, looked, how + " and extract it into ./data, or set data.download=true")
    return folder


def load_cifar10(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    folder = _locate(root, "cifar-10-batches-py", "CIFAR-10", f"download cifar-10-python.tar.gz from {CIFAR_PAGE}",
                     download, "CIFAR10", train=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split not in ("train", "test"):
        raise DataError(f"cifar10 has splits train and test, not {split!r}")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 in {folder} is incomplete: missing {', '.join(missing)}")
    x, y = _cifar_arrays([folder / n for n in names], b"labels")
    meta = folder / "batches.meta"
    classes = CIFAR10_CLASSES
    if meta.is_file():
        classes = tuple(c.decode() for c in _unpickle(meta)[b"label_names"])
    mean, std = STATS["cifar10"]
    return ImageDataset("cifar10", x, y, classes, mean, std, split, {"source": str(folder)})


def load_cifar10_imbalanced(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    """CIFAR-10 with the authors' long-tailed class counts in the train split; the test split is balanced."""
    full = load_cifar10(split, root, download)
    if split != "train":
        return ImageDataset("cifar10_imbalanced", full.images, full.labels, full.classes, full.mean, full.std, split)
    keep = []
    for cls, count in enumerate(IMBALANCED_CIFAR10_COUNTS):
        idx = (full.labels == cls).nonzero().flatten()
        if len(idx) < count:
            raise DataError(f"imbalanced CIFAR-10 needs {count} images of class {cls}, found {len(idx)}")
        keep.append(idx[:count])
    sub = full.subset(torch.cat(keep))
    sub.name = "cifar10_imbalanced"
    return sub


def load_cifar100(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    folder = _locate(root, "cifar-100-python", "CIFAR-100", f"download cifar-100-python.tar.gz from {CIFAR_PAGE}",
                     download, "CIFAR100", train=True)
    if split not in ("train", "test"):
        raise DataError(f"cifar100 has splits train and test, not {split!r}")
    if not (folder / split).is_file():
        raise DataError(f"CIFAR-100 in {folder} is incomplete: missing {split}")
    x, y = _cifar_arrays([folder / split], b"fine_labels")
    classes = tuple(str(i) for i in range(100))
    if (folder / "meta").is_file():
        classes = tuple(c.decode() for c in _unpickle(folder / "meta")[b"fine_label_names"])
    mean, std = STATS["cifar100"]
    return ImageDataset("cifar100", x, y, classes, mean, std, split, {"source": str(folder)})


# --------------------------------------------------------------------------------- STL-10


def _read_stl_images(path: Path) -> torch.Tensor:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DataError(f"{path}: size {raw.size} is not a whole number of 3x96x96 images")
    # Stored column-major per channel: transpose H and W to get the upright image.
    return torch.from_numpy(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy())


def load_stl10(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    """STL-10: ``train`` (5k labeled), ``test`` (8k), ``unlabeled`` (100k), ``train+unlabeled`` for pre-training."""
    folder = _locate(root, "stl10_binary", "STL-10",
                     "download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/", download, "STL10",
                     split="train")
    parts = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"],
             "train+unlabeled": ["train", "unlabeled"]}
    if split not in parts:
        raise DataError(f"stl10 has splits {', '.join(parts)}, not {split!r}")
    xs, ys = [], []
    for part in parts[split]:
        xfile = folder / f"{part}_X.bin"
        if not xfile.is_file():
            raise DataError(f"STL-10 in {folder} is incomplete: missing {xfile.name}")
        x = _read_stl_images(xfile)
        if part == "unlabeled":
            y = torch.full((len(x),), -1, dtype=torch.long)
        elif not (folder / f"{part}_y.bin").is_file():
            raise DataError(f"STL-10 in {folder} is incomplete: missing {part}_y.bin")
        else:
            y = torch.from_numpy(np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1)
        xs.append(x)
        ys.append(y)
    classes = STL10_CLASSES
    if (folder / "class_names.txt").is_file():
        classes = tuple(line.strip() for line in (folder / "class_names.txt").read_text().splitlines() if line.strip())
    mean, std = STATS["stl10"]
    return ImageDataset("stl10", torch.cat(xs), torch.cat(ys), classes, mean, std, split, {"source": str(folder)})


# --------------------------------------------------------------------------------- Tiny-ImageNet


def _read_images(paths: list[Path], size: int = 64) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size)))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_tiny_imagenet(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    """Tiny-ImageNet-200 from its folder layout: ``train/<wnid>/images/*.JPEG`` and
    ``val/images`` with ``val/val_annotations.txt`` (used as the test split). Decoded once and cached
    as ``<folder>/dogo_cache_<split>.pt``."""
    folder, looked = _find_folder(root, "tiny-imagenet-200")
    if folder is None:
        raise _missing("Tiny-ImageNet", looked, "download tiny-imagenet-200.zip from "
                       "http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it into ./data")
    if split not in ("train", "test"):
        raise DataError(f"tiny_imagenet has splits train and test (its val folder), not {split!r}")
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"Tiny-ImageNet in {folder} is incomplete: missing wnids.txt")
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    cache = folder / f"dogo_cache_{split}.pt"
    if cache.is_file():
        x, y = torch.load(cache)
    else:
        paths, labels = [], []
        if split == "train":
            for w in wnids:
                files = sorted((folder / "train" / w / "images").glob("*.JPEG"))
                if not files:
                    raise DataError(f"Tiny-ImageNet in {folder} is incomplete: no train/{w}/images/*.JPEG")
                paths += files
                labels += [index[w]] * len(files)
        else:
            annotations = folder / "val" / "val_annotations.txt"
            if not annotations.is_file():
                raise DataError(f"Tiny-ImageNet in {folder} is incomplete: missing val/val_annotations.txt")
            for line in annotations.read_text().splitlines():
                fields = line.split("\t")
                if len(fields) >= 2:
                    if fields[1] not in index:
                        raise DataError(f"{annotations}: class {fields[1]!r} of {fields[0]} is not in wnids.txt")
                    if not (folder / "val" / "images" / fields[0]).is_file():
                        raise DataError(f"Tiny-ImageNet in {folder} is incomplete: missing val/images/{fields[0]}")
                    paths.append(folder / "val" / "images" / fields[0])
                    labels.append(index[fields[1]])
        if not paths:
            raise DataError(f"Tiny-ImageNet in {folder}: no images found for split {split!r}")
        x, y = _read_images(paths), torch.tensor(labels, dtype=torch.long)
        try:
            torch.save((x, y), cache)
        except OSError:  # a read-only dataset folder: decode again next time
            pass
    mean, std = STATS["tiny_imagenet"]
    return ImageDataset("tiny_imagenet", x, y, tuple(wnids), mean, std, split, {"source": str(folder)})


LOADERS = {
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar10_imbalanced": load_cifar10_imbalanced,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "tiny_imagenet": load_tiny_imagenet,
}
# The split self-supervised pre-training uses (labels unused); evaluation uses train and test.
PRETRAIN_SPLIT = {"stl10": "train+unlabeled"}


def load_dataset(name: str, split: str = "train", root=None, limit: int | None = None,
                 download: bool = False, seed: int = 0) -> ImageDataset:
    """Load a dataset split into memory; ``limit`` keeps a fixed random subset of that many images."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}{did_you_mean(name, LOADERS)}; choose from {', '.join(LOADERS)}")
    if split == "pretrain":
        split = PRETRAIN_SPLIT.get(name, "train")
    return LOADERS[name](split, root=root, download=download).limit(limit, seed)
