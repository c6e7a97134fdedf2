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
from spae_lab.data import PLURALS
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
        hits += bool(lowered & {color, shape, PLURALS.get(shape, shape + "s")})
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
