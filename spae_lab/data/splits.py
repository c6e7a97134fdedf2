"""Train / held-out splits: deterministic, per class, and stable when other classes change."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from spae_lab.data.images import DataError

_HELDOUT_ALIASES = ("heldout", "test", "val")


def _normalise_split(split: str, allow_all: bool = False) -> str:
    """Map a user split name to "train", "heldout" or (if allowed) "all"."""
    key = str(split).lower()
    if key == "train":
        return "train"
    if key in _HELDOUT_ALIASES:
        return "heldout"
    if allow_all and key == "all":
        return "all"
    valid = ["train", *_HELDOUT_ALIASES] + (["all"] if allow_all else [])
    raise DataError(f"unknown split {split!r}; expected one of {', '.join(valid)}")


def _class_seed(seed: int, class_name: str) -> list[int]:
    # Seeding per class (not one generator for all) keeps a class's split unchanged when other
    # classes gain or lose files.
    return [seed, zlib.crc32(class_name.encode("utf-8"))]


def _heldout_count(n: int, fraction: float) -> int:
    """Held-out size of a class of n items: rounded, but at least one item on each side."""
    if n < 2 or fraction <= 0:
        return 0
    if fraction >= 1:
        return n
    return min(max(round(fraction * n), 1), n - 1)


def _split_positions(n: int, split: str, fraction: float, seed: list[int]) -> list[int]:
    """Positions (sorted) of one class's n items that belong to ``split``."""
    if split == "all":
        return list(range(n))
    permutation = np.random.default_rng(seed).permutation(n)
    heldout = set(permutation[: _heldout_count(n, fraction)].tolist())
    return [i for i in range(n) if (i in heldout) == (split == "heldout")]


def _stratified_indices(
    labels: Sequence[int], classes: Sequence[str], split: str, fraction: float, seed: int
) -> np.ndarray:
    """Indices of ``split`` in a labelled array, split per class, returned in ascending order."""
    labels = np.asarray(labels)
    chosen: list[int] = []
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        positions = _split_positions(len(members), split, fraction, _class_seed(seed, name))
        chosen.extend(members[positions].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def _check_index(i: int, length: int) -> int:
    """Support negative indices; raise IndexError past the end (ends plain `for` iteration)."""
    i = int(i)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {i} out of range for dataset of length {length}")
    return i
