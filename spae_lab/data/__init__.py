"""Datasets for SPAE experiments: synthetic scenes, small digit sets and image folders/archives.

Every dataset yields ``dict`` items with at least

- ``image``: float32 tensor of shape (3, S, S), values in [0, 1];
- ``label``: int class index into ``dataset.classes``;
- ``caption``: str, a short English description (used for semantic supervision and evaluation).

Extra fields are plain strings / ints so that :func:`collate` can batch them. Images are decoded
with PIL + numpy only (no torchvision), and every dataset is deterministic given its seed.

The package holds one concept a module: :mod:`~spae_lab.data.images` (decoding),
:mod:`~spae_lab.data.splits`, :mod:`~spae_lab.data.scenes` (with the scene vocabulary),
:mod:`~spae_lab.data.digits` and :mod:`~spae_lab.data.folders` (folders and tar archives);
this file names the built-in datasets and batches items.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spae_lab.data.digits import DIGIT_NAMES, DigitsDataset, MNISTSample
from spae_lab.data.folders import ImageFolderDataset
from spae_lab.data.folders import _safe_member_name as _safe_member_name  # tests/test_bad_input.py
from spae_lab.data.images import IMAGE_EXTENSIONS, DataError, load_image, to_rgb
from spae_lab.data.scenes import (
    COLORS,
    NUMBER_WORDS,
    PLURALS,
    SHAPES,
    Scene,
    SyntheticScenes,
    render_scene,
)

__all__ = [
    "COLORS",
    "DATASETS",
    "DIGIT_NAMES",
    "IMAGE_EXTENSIONS",
    "NUMBER_WORDS",
    "PLURALS",
    "SHAPES",
    "DataError",
    "DigitsDataset",
    "ImageFolderDataset",
    "MNISTSample",
    "Scene",
    "SyntheticScenes",
    "cifar10_sample",
    "collate",
    "load_image",
    "make_dataset",
    "render_scene",
    "to_rgb",
]

CIFAR10_SAMPLE = Path(__file__).parents[1] / "assets" / "cifar10_sample.tar"


def cifar10_sample(image_size: int = 32, split: str = "all", seed: int = 0,
                   **kwargs: Any) -> Dataset:
    """300 CIFAR-10 images (30 per class) shipped with the package: the first of each class of
    the held-out split of CIFAR-10 train (seed 0) that the shipped tokenizers and teacher never
    trained on (scripts/make_cifar10_sample.py). An evaluation set: every split name gives all
    300."""
    del split, seed  # all of it is held-out data
    return ImageFolderDataset(CIFAR10_SAMPLE, image_size=image_size, split="all", **kwargs)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "scenes": SyntheticScenes,
    "digits": DigitsDataset,
    "mnist": MNISTSample,
    "cifar10-sample": cifar10_sample,
}


def make_dataset(name_or_path: str | os.PathLike, image_size: int, split: str = "train",
                 seed: int = 0, **kwargs: Any) -> Dataset:
    """A built-in dataset by name (see DATASETS) or an ImageFolderDataset for a folder/archive.

    Extra keyword arguments go to the dataset constructor (e.g. num_images for "scenes",
    max_per_class for folders). Raises DataError for an unknown name that is not a path.
    """
    key = str(name_or_path)
    if key in DATASETS:
        return DATASETS[key](image_size=image_size, split=split, seed=seed, **kwargs)
    path = Path(key).expanduser()
    if path.exists():
        return ImageFolderDataset(path, image_size=image_size, split=split, seed=seed, **kwargs)
    message = (f"unknown dataset {key!r}: not a built-in name ({', '.join(DATASETS)}) "
               f"and no such file or folder")
    close = difflib.get_close_matches(key.lower(), list(DATASETS), n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    raise DataError(message)


def collate(batch: list[dict]) -> dict:
    """Batch a list of item dicts: tensors stacked, ints/floats/bools to tensors, rest as lists.

    E.g. images -> (B, 3, S, S), labels -> int64 (B,), captions -> list[str] of length B.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    keys = list(batch[0])
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif isinstance(first, (float, np.floating)):
            out[key] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        else:
            out[key] = values
    return out
