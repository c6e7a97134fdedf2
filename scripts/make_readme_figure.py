"""The README's picture: held-out CIFAR-10 images, their words by layer, their decodes at each depth.

Uses the shipped `cifar10` tokenizer on the shipped `cifar10-sample` (300 CIFAR-10 images that
neither the tokenizer nor its teacher trained on): one image per chosen class, a row each, with the
original, the decode from 1, 2, ... all layers, and beneath each decode the words that layer added
(layers 1 and 2 in full, deeper layers by count). Deterministic: the same PNG every run.

    .venv/bin/python scripts/make_readme_figure.py                  # docs/images/pyramid_cifar10.png
    .venv/bin/python scripts/make_readme_figure.py --classes cat ship --out /tmp/x.png
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "pyramid_cifar10.png"
# Classes whose first sample image reads well at 32 px; any CIFAR-10 class name works.
DEFAULT_CLASSES = ("airplane", "automobile", "bird", "horse")
WORDS_SHOWN = 4  # a layer's words written out in full up to this many; deeper layers by count


def layer_caption(words: list[str]) -> str:
    """The words a layer adds, as a short caption under its decode."""
    if len(words) <= WORDS_SHOWN:
        return "\n".join(textwrap.wrap(" ".join(words), 16))
    return f"+{len(words)} words\n({' '.join(words[:2])} ...)"


def make_figure(classes: tuple[str, ...], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from spae_lab import load_tokenizer
    from spae_lab.data import make_dataset
    from spae_lab.io import atomic_write_path
    from spae_lab.metrics import psnr
    from spae_lab.views.figures import to_hwc

    torch.set_num_threads(1)
    tokenizer = load_tokenizer("cifar10")
    sample = make_dataset("cifar10-sample", tokenizer.config.image_size)
    unknown = sorted(set(classes) - set(sample.classes))
    if unknown:
        raise SystemExit(f"not CIFAR-10 classes: {', '.join(unknown)}; choose from {', '.join(sample.classes)}")
    index = [list(sample.labels).index(sample.classes.index(name)) for name in classes]
    images = torch.stack([sample[i]["image"] for i in index])
    with torch.no_grad():
        pyramid = tokenizer.encode(images)
        by_depth = tokenizer.decode_every_depth(pyramid)  # (L, B, 3, H, W)
    layers, tokens = pyramid.num_layers, tokenizer.layout.cumulative_tokens()

    fig, axes = plt.subplots(len(classes), layers + 1, figsize=(1.55 * (layers + 1), 2.05 * len(classes)),
                             squeeze=False)
    for row, name in enumerate(classes):
        axes[row, 0].imshow(to_hwc(images[row]), interpolation="nearest")
        axes[row, 0].set_xlabel(f"{name}\n(held out)", fontsize=8)
        for depth in range(layers):
            ax = axes[row, depth + 1]
            ax.imshow(to_hwc(by_depth[depth, row]), interpolation="nearest")
            quality = psnr(by_depth[depth, row : row + 1], images[row : row + 1]).item()
            ax.set_xlabel(f"{layer_caption(pyramid.words(depth, image=row))}\n{quality:.1f} dB",
                          fontsize=7)
            if row == 0:
                ax.set_title(f"{depth + 1} layer{'s' if depth else ''}, {tokens[depth]} tok", fontsize=8)
        if row == 0:
            axes[row, 0].set_title("original", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), help="one image per class")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(make_figure(tuple(args.classes), args.out))


if __name__ == "__main__":
    main()
