"""Semantic guidance: the teacher's most relevant words become targets for the upper layers.

SPAE (reconstructed, see shared/docs/spae-method.md section 1): for the top (semantic) layers, the
vector that picks each token is pulled towards the teacher's top-K words for the image:
cross-entropy of a softmax over negative squared distances to every codebook entry, with the top-K
set as target. Here the target is the *set*: the loss is -log sum_{k in top-K} p_k, so any of the K
words may win (the argmin lands in the set when the loss is low). K grows with depth. The weight
follows a schedule (linear warm-up, then cosine towards `final_weight_ratio`).
"""

from __future__ import annotations

import math

import torch

from spae_lab.codebook import Codebook
from spae_lab.config import SemanticConfig
from spae_lab.pyramid import search_scores
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
        c = self.config
        if step < c.warmup_steps:
            return c.weight * (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, total_steps - c.warmup_steps))
        ratio = c.final_weight_ratio + (1 - c.final_weight_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return c.weight * ratio


def semantic_loss(targets: list[torch.Tensor], table: torch.Tensor, top_ids: torch.Tensor,
                  top_k: tuple[int, ...], temperature: float,
                  layer_weights: tuple[float, ...] | None = None, form: str = "any") -> torch.Tensor:
    """Mean over the semantic layers of -log P(token in the image's top-K words), each layer's
    term multiplied by its entry of `layer_weights` (default 1).

    targets: per layer (B, n, D) vectors that pick the tokens (SAQ/RQ targets, with gradient);
    table (V, D) the codebook in search space; top_ids (B, >= max K). The logits are negative
    squared distances divided by temperature * D (D-independent scale for unit-RMS vectors).
    Training takes the same loss from the quantizer's own scores (`semantic_loss_from_scores`).
    """
    scores = [search_scores(t, table) for t in targets[: len(top_k)]]
    return semantic_loss_from_scores(scores, top_ids, top_k, temperature, table.shape[1],
                                     layer_weights, form)


def semantic_loss_from_scores(scores: list[torch.Tensor], top_ids: torch.Tensor, top_k: tuple[int, ...],
                              temperature: float, dim: int,
                              layer_weights: tuple[float, ...] | None = None,
                              form: str = "any") -> torch.Tensor:
    """`spae_lab.semantic.semantic_loss` from the quantizer's search scores (QuantizerOutput.scores),
    so the distances to every word are computed once per step.

    scores: per layer (B, n, V) t.e - ||e||^2 / 2; -||t - e||^2 = 2 * score - ||t||^2 and the
    row constant ||t||^2 cancels in the softmax, so the logits 2 * score / (temperature * dim)
    give exactly semantic_loss's log-probabilities. top_ids (B, >= max K).
    """
    weights = layer_weights or (1.0,) * len(top_k)
    losses = []
    for layer_scores, k, weight in zip(scores, top_k, weights, strict=True):
        log_probs = torch.log_softmax(layer_scores * (2.0 / (temperature * dim)), dim=-1)
        wanted = log_probs.gather(-1, top_ids[:, None, :k].expand(-1, layer_scores.shape[1], -1))
        if form == "each":  # cross-entropy against the K words as a uniform target
            losses.append(-weight * wanted.mean(-1).mean())
        else:  # -log P(the chosen word is one of the K)
            losses.append(-weight * wanted.logsumexp(-1).mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def chosen_word_relevance(relevance: torch.Tensor, ids: list[torch.Tensor]) -> list[dict[str, float]]:
    """Per layer: mean teacher score of the chosen words and their mean rank among all words
    (1 = the most relevant word of the vocabulary). relevance (B, V); ids per layer (B, n)."""
    out = []
    for layer_ids in ids:
        scores = relevance.gather(1, layer_ids.to(relevance.device))  # (B, n)
        # rank = 1 + number of words scoring strictly higher than the chosen one
        ranks = 1 + (relevance[:, None, :] > scores[:, :, None]).sum(-1).float()
        out.append({"score": float(scores.mean()), "rank": float(ranks.mean())})
    return out


def caption_word_hits(words_per_image: list[list[str]], colors: list[str], shapes: list[str]) -> float:
    """Fraction of images whose words include their colour or shape word (plural allowed)."""
    hits = 0
    for words, color, shape in zip(words_per_image, colors, shapes, strict=True):
        lowered = {w.lower() for w in words}
        hits += bool(lowered & {color, shape, shape + "s", shape + "es"})
    return hits / max(1, len(words_per_image))


# Plain synonyms that count as naming a class (plurals are added by `class_word_hits`). Generic
# words ("animal", "vehicle", "pets") do not count: they fit half the classes of CIFAR-10.
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "airplane": ("plane", "aircraft", "aeroplane", "airliner", "jet", "jets", "planes", "airplanes"),
    "automobile": ("car", "cars", "auto", "sedan", "automobiles"),
    "bird": ("birds",),
    "cat": ("cats", "kitten", "kitty", "kittens"),
    "deer": ("stag", "fawn", "elk", "moose"),
    "dog": ("dogs", "puppy", "pup", "puppies"),
    "frog": ("frogs", "toad", "toads"),
    "horse": ("horses", "pony", "stallion", "mare"),
    "ship": ("ships", "boat", "boats", "vessel", "vessels"),
    "truck": ("trucks", "lorry"),
}


def class_words(class_name: str) -> set[str]:
    """The lower-case words that name `class_name`: itself, its plural and plain synonyms."""
    name = class_name.lower()
    return {name, name + "s", name + "es", *CLASS_SYNONYMS.get(name, ())}


def class_word_hits(words_per_image: list[list[str]], class_names: list[str]) -> float:
    """Fraction of images whose words include their class name, its plural or a plain synonym."""
    hits = 0
    for words, name in zip(words_per_image, class_names, strict=True):
        hits += bool({w.lower() for w in words} & class_words(name))
    return hits / max(1, len(words_per_image))


def random_words(codebook: Codebook, num_images: int, per_image: int = 5, seed: int = 0) -> list[list[str]]:
    """`per_image` codebook words drawn at random for each of `num_images` images: the trivial
    reference that word-hit rates are compared with."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(codebook), (num_images, per_image), generator=generator)
    return [[codebook.words[j] for j in row] for row in draws.tolist()]
