"""Held-out evaluation of a tokenizer: what training logs and what the cards report.

Per depth: PSNR, and on labelled data whether the first d layers name the image (its colour or
shape word on synthetic scenes, its class word on labelled folders); per layer: codebook usage,
relative quantization error and, with a teacher, the relevance of the chosen words.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from spae_lab.data import collate
from spae_lab.metrics import (
    caption_word_hits,
    chosen_word_relevance,
    class_word_hits,
    codebook_usage,
    psnr,
)
from spae_lab.model import SPAE
from spae_lab.semantic import SemanticGuide


@torch.no_grad()
def evaluate(model: SPAE, dataset: Dataset, batch_size: int = 64,
             guide: SemanticGuide | None = None) -> dict:
    """Held-out PSNR per depth (dB), codebook usage and relative quantization error per layer;
    with a teacher, the relevance of the chosen words per layer (score, rank among all words);
    on synthetic scenes, the fraction of images whose first d layers hold their colour or shape
    word, per depth d."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    L = model.num_layers
    psnr_sum = torch.zeros(L)
    rel_err = torch.zeros(L)
    relevance_sum = torch.zeros(L, 2)
    random_word_relevance = 0.0  # mean score of all words: the level of a word picked at random
    hits = torch.zeros(L)
    ids_per_layer: list[list[torch.Tensor]] = [[] for _ in range(L)]
    names = class_names_of(dataset)  # labelled data: the class-word hit rate per depth
    count = batches = 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        images = batch["image"].to(device)
        _, quant = model.quantize(images)
        if guide is not None:
            relevance = guide.relevance(images)
            per_layer = chosen_word_relevance(relevance, quant.ids)
            random_word_relevance += float(relevance.mean(dim=1).sum())
            relevance_sum += torch.tensor([[r["score"], r["rank"]] for r in per_layer]) * images.shape[0]
        if "color" in batch or (names and "label" in batch):
            for depth in range(1, L + 1):
                per_image = [[model.codebook.words[i] for layer in range(depth)
                              for i in quant.ids[layer][b].tolist()] for b in range(len(images))]
                if "color" in batch:
                    rate = caption_word_hits(per_image, batch["color"], batch["shape"])
                else:
                    rate = class_word_hits(per_image, [names[k] for k in batch["label"].tolist()])
                hits[depth - 1] += rate * len(images)
        for depth in range(1, model.num_layers + 1):
            latents = quant.latents[depth - 1]
            recon = ((model.decode_latents(latents) + 1) / 2).clamp(0, 1)
            psnr_sum[depth - 1] += psnr(recon, images).sum().cpu()
        for layer, ids in enumerate(quant.ids):
            ids_per_layer[layer].append(ids.cpu())
        rel_err += quant.relative_error.cpu()
        count += images.shape[0]
        batches += 1
    model.train(was_training)
    usage = [codebook_usage(torch.cat(ids), len(model.codebook)) for ids in ids_per_layer]
    result = {
        "psnr": [round(float(v), 3) for v in psnr_sum / count],
        "relative_error": [round(float(v), 4) for v in rel_err / batches],
        "distinct_words": [u["distinct"] for u in usage],
        "perplexity": [round(u["perplexity"], 1) for u in usage],
    }
    if guide is not None:
        result["relevance"] = [round(float(v), 4) for v in relevance_sum[:, 0] / count]
        result["relevance_rank"] = [round(float(v), 1) for v in relevance_sum[:, 1] / count]
        result["relevance_random"] = round(random_word_relevance / count, 4)
    if "color" in batch:
        result["caption_hit"] = [round(float(v), 4) for v in hits / count]
    elif names and "label" in batch:
        result["class_hit"] = [round(float(v), 4) for v in hits / count]
    return result


def class_names_of(dataset: Dataset) -> list[str] | None:
    """The class names of a labelled dataset (through Subset wrappers), or None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    return list(names) if names else None
