"""Held-out figures of a clip tokenizer: what training logs, the card reports and the bars read.

Per depth d: PSNR of the clip decoded from d layers (all frames at once), and whether the words
of layers 1..d name the clip: its direction of motion ("left", "right", "up", "down"), its content
(a moving scene's colour or shape word, plural allowed; a moving digit's name), both. Per layer:
distinct words, perplexity, relative quantization error.
"""

from __future__ import annotations

import torch

from spae_lab.data import DIGIT_NAMES, PLURALS
from spae_lab.metrics import codebook_usage, psnr


def content_words(item: dict) -> set[str]:
    """The words that name what a clip shows: colour, shape and plural; or the digit's name."""
    if "digit" in item:
        return {DIGIT_NAMES[item["digit"]]}
    return {item["color"], item["shape"], PLURALS[item["shape"]]}


def word_hits(words: list[str], item: dict) -> dict[str, bool]:
    """Whether `words` hold the clip's direction word, a content word, both."""
    lowered = {w.lower() for w in words}
    direction, content = item["direction"] in lowered, bool(lowered & content_words(item))
    return {"direction_hit": direction, "content_hit": content, "both_hit": direction and content}


def clip_batches(dataset, batch_size: int):
    """(items, clips (B, 3, T, S, S)) of `dataset` in order."""
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield items, torch.stack([it["video"] for it in items])


@torch.no_grad()
def evaluate_clips(model, dataset, batch_size: int = 32) -> dict:
    """PSNR per depth (dB), word hits of layers 1..d per depth, distinct words, perplexity and
    relative quantization error per layer, over every clip of `dataset`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    L = model.num_layers
    psnr_sum, rel_err = torch.zeros(L), torch.zeros(L)
    hits = {k: torch.zeros(L) for k in ("direction_hit", "content_hit", "both_hit")}
    ids_per_layer: list[list[torch.Tensor]] = [[] for _ in range(L)]
    count = batches = 0
    for items, clips in clip_batches(dataset, batch_size):
        clips = clips.to(device)
        _, quant = model.quantize(clips)
        for depth in range(1, L + 1):
            recon = ((model.decode_latents(quant.latents[depth - 1]) + 1) / 2).clamp(0, 1)
            psnr_sum[depth - 1] += psnr(recon, clips).sum().cpu()
            for b, item in enumerate(items):
                words = [model.codebook.words[i] for layer in range(depth) for i in quant.ids[layer][b].tolist()]
                for key, hit in word_hits(words, item).items():
                    hits[key][depth - 1] += hit
        for layer, ids in enumerate(quant.ids):
            ids_per_layer[layer].append(ids.cpu())
        rel_err += quant.relative_error.cpu()
        count += len(items)
        batches += 1
    model.train(was_training)
    usage = [codebook_usage(torch.cat(ids), len(model.codebook)) for ids in ids_per_layer]
    return {"psnr": [round(float(v), 3) for v in psnr_sum / count],
            **{k: [round(float(v), 4) for v in h / count] for k, h in hits.items()},
            "relative_error": [round(float(v), 4) for v in rel_err / batches],
            "distinct_words": [u["distinct"] for u in usage],
            "perplexity": [round(u["perplexity"], 1) for u in usage],
            "clips": count}


@torch.no_grad()
def frame_by_frame(image_model, dataset, batch_size: int = 16) -> dict:
    """The reference a clip tokenizer is judged against: an image tokenizer on every frame. Per
    depth d of the image pyramid: the words a clip costs (frames x the image's words of d layers),
    the clip PSNR of the frames decoded from d layers, and whether the words of layer 1 of every
    frame (or of layers 1..d) hold the clip's direction and content words."""
    import torch.nn.functional as F

    L, size = image_model.num_layers, image_model.config.image_size
    psnr_sum = torch.zeros(L)
    hits = {k: torch.zeros(L) for k in ("direction_hit", "content_hit")}
    count, frames = 0, None
    for items, clips in clip_batches(dataset, batch_size):
        B, _, frames, H, W = clips.shape
        flat = clips.transpose(1, 2).reshape(B * frames, 3, H, W)
        if (H, W) != (size, size):
            flat = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pyramid = image_model.encode(flat.clamp(0, 1))
        for depth in range(1, L + 1):
            decoded = image_model.decode(pyramid, depth)
            if (H, W) != (size, size):
                decoded = F.interpolate(decoded, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
            psnr_sum[depth - 1] += psnr(decoded.view(B, frames, 3, H, W).transpose(1, 2), clips).sum()
            for b, item in enumerate(items):
                words = [w for t in range(frames) for w in pyramid.to_text(depth, image=b * frames + t).split()]
                for key in hits:
                    hits[key][depth - 1] += word_hits(words, item)[key]
        count += len(items)
    cumulative = image_model.layout.cumulative_tokens()
    return {"words_per_clip": [frames * c for c in cumulative], "psnr": [round(float(v), 3) for v in psnr_sum / count],
            **{k: [round(float(v), 4) for v in h / count] for k, h in hits.items()}, "clips": count}
