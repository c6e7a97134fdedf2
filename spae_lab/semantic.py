"""Semantic guidance: a teacher bound to the codebook names the words the top layer should pick.

SPAE (Yu et al. 2023, as we read its section 3): the vector that picks a semantic layer's token is
pulled towards the teacher's top-K words for the image. The loss itself (`losses.semantic_loss`)
and its weight schedule (`losses.warmup_cosine`) live with the other loss terms; this module holds
the teacher side: relevance of every word, top-K targets (live, or read from a table computed once
per training set: `spae_lab.teacher.cache`), and health metrics of the words chosen.
"""

from __future__ import annotations

import torch

from spae_lab.codebook import Codebook
from spae_lab.config import SemanticConfig
from spae_lab.losses import warmup_cosine
from spae_lab.teacher import Teacher, load_teacher
from spae_lab.teacher.cache import TopWordsTable, load_or_compute


class SemanticGuide:
    """A teacher bound to one codebook: relevance of every word, top-K targets, health metrics."""

    def __init__(self, teacher: Teacher, codebook: Codebook, config: SemanticConfig):
        self.teacher = teacher
        self.codebook = codebook
        self.config = config
        # (V, E), cached on disk; each word read through the config's template ("a photo of a {}")
        self.word_embeddings = teacher.word_embeddings(codebook, config.word_template)
        self.cached: TopWordsTable | None = None  # the training set's top-K words (cache_top_words)

    @classmethod
    def from_config(cls, config: SemanticConfig, codebook: Codebook, device="cpu") -> SemanticGuide:
        return cls(load_teacher(config.teacher, device), codebook, config)

    @torch.no_grad()
    def relevance(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V) teacher score of every codebook word for every image."""
        return self.teacher.relevance(images, self.word_embeddings)

    @torch.no_grad()
    def top_words(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """(B, max K) codebook rows of the most relevant words, best first. With the images'
        dataset `indices` (B,) and a table from `cache_top_words`, read from the table (the same
        words, without the teacher's forward)."""
        if indices is not None and self.cached is not None:
            return self.cached.lookup(indices).to(images.device)
        return self.relevance(images).topk(max(self.config.top_k), dim=1).indices

    def cache_top_words(self, dataset, progress: bool = False, compute: bool = True) -> TopWordsTable | None:
        """Compute (or read from the on-disk cache) the top-K words of every item of `dataset`, the
        training set whose indices `top_words` will be given. The teacher is frozen and the items
        are fixed, so the table holds what the live path computes. `compute=False`: only a table
        already on disk (else None, and `top_words` runs the teacher)."""
        words = self.codebook.fingerprint() + ("" if self.config.word_template == "{}" else
                                               f"|{self.config.word_template}")
        self.cached = load_or_compute(self.teacher, self.word_embeddings, words,
                                      dataset, max(self.config.top_k), _image_size(dataset), progress,
                                      compute=compute)
        return self.cached

    def weight(self, step: int, total_steps: int) -> float:
        """The semantic loss weight at `step` (`losses.warmup_cosine`)."""
        c = self.config
        return warmup_cosine(step, total_steps, c.warmup_steps, c.weight, c.final_weight_ratio)


def _image_size(dataset) -> int:
    """Side of the dataset's images (part of a table's cache key)."""
    return int(dataset[0]["image"].shape[-1]) if len(dataset) else 0
