"""Semantic guidance: a teacher bound to the codebook names the words the top layer should pick.

SPAE (reconstructed, see shared/docs/spae-method.md section 1): the vector that picks a semantic
layer's token is pulled towards the teacher's top-K words for the image. The loss itself
(`losses.semantic_loss`) and its weight schedule (`losses.warmup_cosine`) live with the other
loss terms; this module holds the teacher side: relevance of every word, top-K targets, and
health metrics of the words chosen.
"""

from __future__ import annotations

import torch

from spae_lab.codebook import Codebook
from spae_lab.config import SemanticConfig
from spae_lab.losses import warmup_cosine
from spae_lab.teacher import Teacher, load_teacher


class SemanticGuide:
    """A teacher bound to one codebook: relevance of every word, top-K targets, health metrics."""

    def __init__(self, teacher: Teacher, codebook: Codebook, config: SemanticConfig):
        self.teacher = teacher
        self.codebook = codebook
        self.config = config
        self.word_embeddings = teacher.word_embeddings(codebook)  # (V, E), cached on disk

    @classmethod
    def from_config(cls, config: SemanticConfig, codebook: Codebook, device="cpu") -> SemanticGuide:
        return cls(load_teacher(config.teacher, device), codebook, config)

    @torch.no_grad()
    def relevance(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V) teacher score of every codebook word for every image."""
        return self.teacher.relevance(images, self.word_embeddings)

    @torch.no_grad()
    def top_words(self, images: torch.Tensor) -> torch.Tensor:
        """(B, max K) codebook rows of the most relevant words, best first."""
        return self.relevance(images).topk(max(self.config.top_k), dim=1).indices

    def weight(self, step: int, total_steps: int) -> float:
        """The semantic loss weight at `step` (`losses.warmup_cosine`)."""
        c = self.config
        return warmup_cosine(step, total_steps, c.warmup_steps, c.weight, c.final_weight_ratio)
