"""Image quality metrics on [0, 1] images."""

from __future__ import annotations

import torch


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
