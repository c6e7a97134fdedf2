"""Every figure a tokenizer is judged by.

Images (on [0, 1]): PSNR, SSIM, both per decoding depth. Tokens: codebook usage (distinct words,
perplexity, the share of the most used word: a hub-token alarm). Words: the teacher's relevance of
the chosen words, whether an image's words name it (caption words of a synthetic scene, the class
name or a plain synonym), and the random-word reference every such rate is compared with.
"""

from __future__ import annotations

import torch

from spae_lab.data.scenes import PLURALS


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image. (B, C, H, W) x2 in [0, 1] -> (B,)."""
    mse = (images.float() - references.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(images: torch.Tensor, references: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), per image, averaged over channels and positions.
    (B, C, H, W) x2 in [0, 1] -> (B,). Gaussian window (11, sigma 1.5), shrunk for small images;
    valid positions only (no padding)."""
    x, y = images.float(), references.float()
    B, C, H, W = x.shape
    size = min(window, H, W)
    g = _gaussian_window(size, sigma).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(C, 1, size, size).contiguous()  # (C, 1, k, k)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel, groups=C)

    c1, c2 = 0.01**2, 0.03**2  # (K * data range)^2 with data range 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(dim=1)


def metrics_by_depth(originals: torch.Tensor, by_depth: torch.Tensor) -> dict[str, list[float]]:
    """Mean PSNR (dB) and SSIM of decodes from 1..L layers against the originals.
    originals (B, 3, H, W), by_depth (L, B, 3, H, W) -> {"psnr": [L], "ssim": [L]}."""
    return {
        "psnr": [psnr(d, originals).mean().item() for d in by_depth],
        "ssim": [ssim(d, originals).mean().item() for d in by_depth],
    }


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Distinct words and perplexity of the empirical token distribution (a hub-token alarm)."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {
        "distinct": int((counts > 0).sum()),
        "perplexity": float(entropy.exp()),
        "top_share": float(probs.max()),
    }


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


def random_words(codebook, num_images: int, per_image: int = 5, seed: int = 0) -> list[list[str]]:
    """`per_image` codebook words drawn at random for each of `num_images` images: the trivial
    reference that word-hit rates are compared with."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(codebook), (num_images, per_image), generator=generator)
    return [[codebook.words[j] for j in row] for row in draws.tolist()]
