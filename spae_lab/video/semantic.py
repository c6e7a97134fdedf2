"""Semantic guidance for clips: one teacher, one reading of the words per guided layer.

A clip has two things to say in its first words: what it shows and how it moves. The clip
teacher (`spae_lab.video.teacher`) scores every codebook word for a clip; each guided layer reads
the words through its own template (`clip.word_templates`): layer 1 as a thing ("{}": "red",
"circle"), layer 2 as a motion ("moving {}": "moving left"), so the teacher's top words differ by
layer and layer 2's target is the direction. The layers' targets are disjoint, later
layers first: under "{}" a clip's top words mix "red", "circle" and "left", and layer 1 takes its
top K among the words layer 2 does not target, so it names what the clip shows. The loss per layer
is the image one (`losses.semantic_loss_from_scores`: the picking vector pulled towards the layer's
top-K words).
The training set's top words are computed once per dataset and kept on disk, as for images.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import save_file

from spae_lab.assets import cache_dir
from spae_lab.codebook import Codebook
from spae_lab.io import atomic_write_path, read_safetensors
from spae_lab.losses import semantic_loss_from_scores, warmup_cosine
from spae_lab.teacher import Teacher, TeacherError
from spae_lab.video.config import ClipExperimentConfig
from spae_lab.video.teacher import load_clip_teacher

_FORMAT = "spae_lab.clip_top_words.v1"


class ClipGuide:
    """A clip teacher bound to one codebook and one template per guided layer."""

    def __init__(self, teacher: Teacher, codebook: Codebook, templates: tuple[str, ...], top_k: tuple[int, ...]):
        if len(templates) < len(top_k):
            raise TeacherError(f"one word template per guided layer: {len(top_k)} layers, templates {templates}")
        self.teacher, self.codebook, self.top_k = teacher, codebook, tuple(top_k)
        self.templates = tuple(templates[: len(top_k)])
        self.word_embeddings = [teacher.word_embeddings(codebook, t) for t in self.templates]  # (V, E) each
        self.tables: list[torch.Tensor] | None = None  # per layer (N, K) over the training set

    @classmethod
    def from_config(cls, cfg: ClipExperimentConfig, codebook: Codebook, device="cpu") -> ClipGuide:
        return cls(load_clip_teacher(cfg.semantic.teacher, device), codebook, cfg.clip.word_templates,
                   cfg.semantic.top_k)

    @torch.no_grad()
    def relevance(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """Per guided layer, (B, V) the teacher's score of every word read through its template."""
        emb = self.teacher.embed_images(clips).float()
        return [emb @ words.to(emb.device).t() for words in self.word_embeddings]

    @torch.no_grad()
    def top_words(self, clips: torch.Tensor, indices: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per guided layer, (B, K) codebook rows of its most relevant words, best first; read from
        the training set's tables when `indices` (B,) are given and the tables are computed."""
        if indices is not None and self.tables is not None:
            return [table[indices.cpu()].to(clips.device) for table in self.tables]
        relevance, top = self.relevance(clips), []
        for scores, k in zip(relevance[::-1], self.top_k[::-1], strict=True):  # later layers first
            for taken in top:  # targets are disjoint: a later layer's words are not an earlier one's
                scores = scores.scatter(1, taken, float("-inf"))
            top.append(scores.topk(k, dim=1).indices)
        return top[::-1]

    def cache_top_words(self, dataset, batch_size: int = 64) -> list[torch.Tensor]:
        """The top words of every clip of `dataset` (a training set), computed once and kept in
        the cache folder under teacher, codebook, templates, K and the dataset's settings."""
        settings = {k: v for k, v in sorted(vars(dataset).items()) if isinstance(v, (int, float, str))}
        identity = json.dumps([self.teacher.name, self.codebook.fingerprint(), self.templates, self.top_k,
                               type(dataset).__name__, settings], sort_keys=True)
        path = cache_dir() / "clip_top_words" / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.safetensors"
        if path.exists():
            tensors, _ = read_safetensors(path, _FORMAT, TeacherError, "clip top-words table")
            self.tables = [tensors[f"layer{i}"].long() for i in range(len(self.top_k))]
            return self.tables
        parts: list[list[torch.Tensor]] = [[] for _ in self.top_k]
        for start in range(0, len(dataset), batch_size):
            clips = torch.stack([dataset[i]["video"] for i in range(start, min(start + batch_size, len(dataset)))])
            for part, ids in zip(parts, self.top_words(clips), strict=True):
                part.append(ids.cpu())
        self.tables = [torch.cat(p) for p in parts]
        with atomic_write_path(path) as tmp:
            save_file({f"layer{i}": t.to(torch.int32).contiguous() for i, t in enumerate(self.tables)}, str(tmp),
                      metadata={"format": _FORMAT, "identity": identity})
        return self.tables

    def loss(self, scores: list[torch.Tensor], top: list[torch.Tensor], cfg: ClipExperimentConfig,
             dim: int) -> torch.Tensor:
        """Mean over the guided layers of the image semantic loss, each layer against its own top
        words. scores: per guided layer (B, n, V) the quantizer's search scores."""
        s = cfg.semantic
        weights = s.layer_weights or (1.0,) * len(self.top_k)
        return torch.stack([semantic_loss_from_scores([layer_scores], ids, (k,), s.temperature, dim, (w,),
                                                      s.loss_form)
                            for layer_scores, ids, k, w in zip(scores, top, self.top_k, weights, strict=True)]
                           ).mean()

    @staticmethod
    def weight(step: int, total_steps: int, cfg: ClipExperimentConfig) -> float:
        s = cfg.semantic
        return warmup_cosine(step, total_steps, s.warmup_steps, s.weight, s.final_weight_ratio)
