"""Every training loss term, its weight and its schedule.

Pixel terms need no download (no VGG/LPIPS weights): L2, L1 and image gradients. The quantizer's
commitment and codebook terms come from `quantizer`. The semantic term (SPAE's semantic guidance,
as we read Yu et al. 2023, section 3): the vector that picks a semantic layer's
token is pulled towards the teacher's top-K words for the image, as cross-entropy of a softmax over
negative squared distances to every codebook entry with the top-K *set* as target
(-log sum_{k in top-K} p_k: any of the K words may win). Learning rate and semantic weight follow
one schedule shape: linear warm-up, then cosine decay (`warmup_cosine`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spae_lab.config import ExperimentConfig, LossConfig
from spae_lab.quantizer import search_scores


def image_gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: penalises blurred edges, which a
    pure L2 loss tolerates. (B, C, H, W) x2 -> scalar."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(pred), dx(target)) + F.l1_loss(dy(pred), dy(target))


def reconstruction_losses(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Weighted pixel losses between prediction and target, both in [-1, 1] model space."""
    losses = {}
    if cfg.l2_weight:
        losses["l2"] = cfg.l2_weight * F.mse_loss(pred, target)
    if cfg.l1_weight:
        losses["l1"] = cfg.l1_weight * F.l1_loss(pred, target)
    if cfg.gradient_weight:
        losses["gradient"] = cfg.gradient_weight * image_gradient_loss(pred, target)
    return losses


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final_ratio: float) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay to `peak * final_ratio` at
    `total_steps` (learning rates, the semantic weight, the teacher's training)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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
    """`semantic_loss` from the quantizer's search scores (QuantizerOutput.scores),
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


def pixel_and_codebook_losses(out, images: torch.Tensor, cfg: ExperimentConfig, model) -> dict[str, torch.Tensor]:
    """The weighted terms every step has, images or clips: pixels (L2, image gradients),
    commitment, and the codebook term when latents are projected into codebook space."""
    losses = reconstruction_losses(out.reconstructions.float(), images * 2 - 1, cfg.loss)
    losses["commitment"] = cfg.loss.commitment_weight * out.quant.commitment_loss
    if model.quantizer.projection is not None:
        losses["codebook"] = cfg.loss.codebook_weight * out.quant.codebook_loss
    return losses


def training_losses(out, images: torch.Tensor, cfg: ExperimentConfig, model, guide=None,
                    step: int = 0, indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every weighted loss term of one training step, by name (their sum is the loss).

    out: the model's forward output (reconstructions in [-1, 1], quantizer output); images (B, 3,
    S, S) in [0, 1]; `guide` (a `semantic.SemanticGuide`) is needed when the semantic loss is on;
    `indices` (B,), the images' dataset indices, let it read the teacher's top-K words from its
    cached table instead of running the teacher.
    """
    losses = pixel_and_codebook_losses(out, images, cfg, model)
    if cfg.semantic.enabled:
        top_ids = guide.top_words(images, indices)
        # distances computed once: the quantizer's search scores feed the softmax
        losses["semantic"] = guide.weight(step, cfg.train.steps) * semantic_loss_from_scores(
            out.quant.scores, top_ids, cfg.semantic.top_k, cfg.semantic.temperature,
            model.quantizer.dim, cfg.semantic.layer_weights, cfg.semantic.loss_form)
    return losses
