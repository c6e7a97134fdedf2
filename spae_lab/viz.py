"""Figures from plain data. Nothing here trains or calls an LLM."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from spae_lab.metrics import psnr


def _to_hwc(image: torch.Tensor):
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def reconstruction_grid(originals: torch.Tensor, by_depth: torch.Tensor, cumulative_tokens: list[int]):
    """A figure: originals in the top row, then one row per decoded depth, labelled with the token
    count and the row's mean PSNR. originals (B, 3, H, W), by_depth (L, B, 3, H, W), in [0, 1]."""
    depths, count = by_depth.shape[0], originals.shape[0]
    fig, axes = plt.subplots(depths + 1, count, figsize=(1.1 * count + 1.6, 1.1 * (depths + 1)),
                             squeeze=False)
    rows = [("original", originals)] + [
        (f"{d + 1} layer{'s' if d else ''}\n{cumulative_tokens[d]} tok, "
         f"{psnr(by_depth[d], originals).mean():.1f} dB", by_depth[d])
        for d in range(depths)
    ]
    for r, (label, images) in enumerate(rows):
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(_to_hwc(images[c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    return fig


@torch.no_grad()
def save_reconstruction_figure(model, dataset, path: str | Path, num_images: int = 8) -> Path:
    """Decode the first `num_images` of `dataset` from every depth of `model` and save the grid."""
    from spae_lab.data import collate

    device = next(model.parameters()).device
    images = collate([dataset[i] for i in range(min(num_images, len(dataset)))])["image"].to(device)
    pyramid = model.encode(images)
    by_depth = torch.stack([model.decode(pyramid, d) for d in range(1, model.num_layers + 1)])
    fig = reconstruction_grid(images.cpu(), by_depth.cpu(), model.layout.cumulative_tokens())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """(3, H, W) in [0, 1] -> PNG file."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    Image.fromarray(array.astype("uint8")).save(path)
    return path
