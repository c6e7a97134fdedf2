"""Training losses that need no download (no VGG/LPIPS weights): pixel L2/L1 and image gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spae_lab.config import LossConfig


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
