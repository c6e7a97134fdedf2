"""Image quality metrics on [0, 1] images."""

from __future__ import annotations

import torch


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image. (B, C, H, W) x2 in [0, 1] -> (B,)."""
    mse = (images.float() - references.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))
