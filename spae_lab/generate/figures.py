"""The generation grid: in-context examples, then per query its condition, the LLM's image
decoded from 1, 2, ... layers, and the target (model code returns data, this draws it)."""

from __future__ import annotations

import torch


def _show(ax, image: torch.Tensor | None = None, title: str = "") -> None:
    ax.axis("off")
    if image is not None:
        ax.imshow(image.clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=7)


def generation_grid(result, max_queries: int = 6, max_context: int = 8):
    """A matplotlib figure of a `run_generation` result (`GenerationResult`): the first row shows
    in-context examples (their target images), each further row one query: condition, outputs per
    layer, target."""
    import matplotlib.pyplot as plt

    by_layer = result.by_layer  # (L, B, 3, S, S)
    layers, count = by_layer.shape[0], min(max_queries, by_layer.shape[1])
    context = result.context[:max_context]
    columns = max(layers + 2, len(context), 1)
    fig, axes = plt.subplots(count + 1, columns, figsize=(1.2 * columns, 1.3 * (count + 1)),
                             squeeze=False)
    for j in range(columns):
        caption, image = context[j] if j < len(context) else ("", None)
        _show(axes[0, j], image, caption)
    axes[0, 0].set_title(("context: " + context[0][0]) if context else "no examples", fontsize=7)
    conditions, targets = result.conditions, result.targets
    for i in range(count):
        row = axes[i + 1]
        condition = conditions[i] if conditions is not None else None
        if isinstance(condition, str):
            _show(row[0])
            row[0].text(0.5, 0.5, condition, ha="center", va="center", fontsize=8,
                        transform=row[0].transAxes)
        else:
            _show(row[0], condition, "condition" if i == 0 else "")
        for d in range(layers):
            _show(row[d + 1], by_layer[d, i], f"{d + 1} layer{'s' if d else ''}" if i == 0 else "")
        _show(row[layers + 1], targets[i] if targets is not None else None,
              "target" if i == 0 and targets is not None else "")
        for j in range(layers + 2, columns):
            _show(row[j])
    fig.tight_layout(pad=0.2)
    return fig
