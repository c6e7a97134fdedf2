"""The teacher's top-K words of every training image, computed once per dataset and kept on disk.

The semantic loss needs, for each image of a batch, the K codebook words its teacher finds most
relevant (`SemanticGuide.top_words`). The teacher is frozen and training images are fixed (no
augmentation: a dataset item is the same tensor every epoch), so these words are a function of
the image alone: a (N, K) table, computed in one pass over the dataset and read by dataset index
afterwards. A 3,000-step CIFAR-10 run asks the teacher about 96,000 images; the table costs one
forward per image, once per dataset, and a second run on the same data reads it from disk.

Key of a table on disk (`cache_dir()/teacher_top_words/KEY.safetensors`): the teacher's name
(its weights' digest), the codebook's fingerprint, the dataset's fingerprint (`dataset_fingerprint`),
the image size and K. The table holds exactly what the live path computes (the same teacher, the
same images, `topk` of the same relevance), up to float noise in the teacher's batched forward;
tests/test_teacher_cache.py checks that the cached words equal the live ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset, Subset

from spae_lab.assets import cache_dir
from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_path, read_safetensors
from spae_lab.teacher.model import Teacher

_FORMAT = "spae_lab.teacher_top_words.v1"
# Images per teacher forward while filling a table: the live path's batch size (32) keeps the
# teacher's kernels, and so its float rounding, those of training; larger batches were not faster
# (docs/performance.md).
FILL_BATCH = 32
# Items whose images enter the fingerprint of a dataset that holds no image array.
_SAMPLED_ITEMS = 16


class TeacherCacheError(SpaeError, RuntimeError):
    """A cached table that does not fit the dataset it is read for."""


class TopWordsTable:
    """(N, K) codebook rows of the teacher's most relevant words per dataset item, best first."""

    def __init__(self, ids: torch.Tensor, key: str = ""):
        if ids.ndim != 2:
            raise TeacherCacheError(f"a top-words table is (N, K), got shape {tuple(ids.shape)}")
        self.ids = ids.long()
        self.key = key

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,) dataset indices -> (B, K) int64 word rows (on the indices' device)."""
        indices = torch.as_tensor(indices)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise TeacherCacheError(f"dataset index out of range for a table of {len(self)} images")
        return self.ids[indices.cpu()].to(indices.device)


def dataset_fingerprint(dataset: Dataset) -> str:
    """A digest of what a dataset yields, for cache keys.

    A dataset that holds its decoded images in one uint8 array (folders and archives loaded with
    preload, digits) is hashed whole: its pixels, labels and length. Any other (synthetic scenes,
    lazily decoded folders) by its scalar settings (size, seed, split, ...), its length and the
    pixels of 16 items spread over it: a changed renderer or file changes those. A Subset adds its
    indices."""
    digest = hashlib.sha256()
    while isinstance(dataset, Subset):
        digest.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
        dataset = dataset.dataset
    digest.update(f"{type(dataset).__module__}.{type(dataset).__qualname__}|{len(dataset)}".encode())
    images = getattr(dataset, "_images", None)
    if isinstance(images, np.ndarray):
        digest.update(f"{images.shape}|{images.dtype}".encode())
        digest.update(np.ascontiguousarray(images).data)
        labels = getattr(dataset, "labels", None)
        if labels is not None:
            digest.update(np.asarray(labels, dtype=np.int64).tobytes())
        return digest.hexdigest()[:24]
    settings = {k: v for k, v in sorted(vars(dataset).items())
                if isinstance(v, (bool, int, float, str)) and not k.startswith("_")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    n = len(dataset)
    for i in sorted({int(j * n / _SAMPLED_ITEMS) for j in range(min(n, _SAMPLED_ITEMS))}):
        digest.update(dataset[i]["image"].contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def table_key(teacher_name: str, codebook_fingerprint: str, dataset_digest: str, image_size: int,
              k: int) -> str:
    """The cache key of a table: teacher, codebook, dataset, image size, K."""
    text = f"{teacher_name}|{codebook_fingerprint}|{dataset_digest}|{image_size}|{k}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.no_grad()
def compute_top_words(teacher: Teacher, word_embeddings: torch.Tensor, dataset: Dataset, k: int,
                      batch_size: int = FILL_BATCH, progress: bool = False) -> torch.Tensor:
    """(N, K) int64: `topk` of the teacher's relevance over every item of `dataset`, in order,
    exactly as `SemanticGuide.top_words` computes it for a batch."""
    from tqdm.auto import tqdm

    from spae_lab.data import collate

    out = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="teacher top words", unit="batch", disable=not progress, leave=False):
        images = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])["image"]
        relevance = teacher.relevance(images, word_embeddings)
        out.append(relevance.topk(k, dim=1).indices.cpu())
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def load_or_compute(teacher: Teacher, word_embeddings: torch.Tensor, codebook_fingerprint: str,
                    dataset: Dataset, k: int, image_size: int, progress: bool = False,
                    root: str | Path | None = None, compute: bool = True) -> TopWordsTable | None:
    """The top-words table of `dataset`, read from the cache when it was computed before, else
    computed now and written there (atomically: concurrent runs write the same table); with
    `compute=False`, None when it is not there."""
    key = table_key(teacher.name, codebook_fingerprint, dataset_fingerprint(dataset), image_size, k)
    path = Path(root or cache_dir() / "teacher_top_words") / f"{key}.safetensors"
    if path.exists():
        try:
            tensors, _ = read_safetensors(path, _FORMAT, TeacherCacheError, "teacher top-words table")
            ids = tensors["ids"]
            if ids.shape == (len(dataset), k):
                return TopWordsTable(ids, key)
        except (TeacherCacheError, KeyError):
            pass  # damaged or foreign: computed again and replaced
    if not compute:
        return None
    ids = compute_top_words(teacher, word_embeddings, dataset, k, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp:
        save_file({"ids": ids.to(torch.int32).contiguous()}, str(tmp),
                  metadata={"format": _FORMAT, "teacher": teacher.name, "k": str(k),
                            "images": str(len(dataset)), "image_size": str(image_size)})
    return TopWordsTable(ids, key)
