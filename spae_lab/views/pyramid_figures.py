"""Figures and widgets of the token pyramid: which word sits where, at every layer.

`token_table` (words at pixel positions), `token_pyramid_figure` (static, survives HTML export),
`token_pyramid_plotly` (hover, layer buttons), `token_pyramid_explorer` (ipywidgets: pick image
and layer); a teacher's relevance colours the words when given (`token_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from spae_lab.views.figures import to_hwc


def token_scores(pyramid, word_scores: torch.Tensor) -> list[torch.Tensor]:
    """Per-token scores from per-word scores: a teacher's relevance (B, V) over codebook rows ->
    a list per layer of (B, n_l * n_l), read at the pyramid's ids."""
    return [word_scores.gather(1, ids.to(word_scores.device)).cpu() for ids in pyramid.ids]


def _relevance_of(relevance, layer: int, image: int) -> list[float] | None:
    """One image's scores of one layer, from a list per layer of (B, n) or (n,) scores."""
    if relevance is None:
        return None
    scores = torch.as_tensor(relevance[layer]).float()
    return (scores[image] if scores.dim() == 2 else scores).tolist()


def token_table(pyramid, image: int = 0, image_size: int | None = None, relevance=None) -> list[dict]:
    """The words of one image, one dict per token: layer (1-based), index, word, row and col on the
    latent grid, x and y of the centre of the region the token stands for in pixels, span (pixels
    per token side at this layer) and relevance (None without scores).

    relevance: optional list per layer of (B, n_l * n_l) or (n_l * n_l,) scores (see `token_scores`).
    """
    grid = pyramid.layout.grid
    cell = (image_size or grid) / grid  # pixels per latent cell
    rows = []
    for layer in range(pyramid.num_layers):
        words = pyramid.words(layer, image)
        scores = _relevance_of(relevance, layer, image)
        n = pyramid.layout.layer_sizes[layer]
        stride = grid // n  # a word stands for its stride x stride region: drawn at the region's centre
        for index, ((row, col), word) in enumerate(zip(pyramid.positions(layer).tolist(), words, strict=True)):
            rows.append({
                "layer": layer + 1, "index": index, "word": word, "row": row, "col": col,
                "x": (col - stride // 2 + stride / 2) * cell, "y": (row - stride // 2 + stride / 2) * cell,
                "span": grid * cell / n,
                "relevance": None if scores is None else scores[index],
            })
    return rows


def _font_size(words: Sequence[str], spacing_inches: float, largest: float = 13.0) -> float:
    """Points such that the longest word fits the spacing between tokens."""
    longest = max([len(w) for w in words] + [3])
    return max(4.0, min(largest, 72 * spacing_inches / (0.62 * longest + 1.0)))


def _draw_layer(ax, hwc, tokens: list[dict], n: int, size: int, panel_inches: float, norm, colours) -> None:
    ax.imshow(hwc * 0.45 + 0.55, interpolation="nearest", extent=(0, size, size, 0))  # faded
    for k in range(1, n):
        ax.axhline(k * size / n, color="0.5", lw=0.5)
        ax.axvline(k * size / n, color="0.5", lw=0.5)
    font = _font_size([t["word"] for t in tokens], panel_inches / n)
    for t in tokens:
        face = colours(norm(t["relevance"])) if norm is not None else (1, 1, 1, 0.75)
        dark = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] < 0.5  # white words on dark colours
        ax.text(t["x"], t["y"], t["word"], ha="center", va="center", fontsize=font, clip_on=True,
                color="white" if dark else "black",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": face, "edgecolor": "none", "alpha": 0.9})
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)


def token_pyramid_figure(image: torch.Tensor, pyramid, image_index: int = 0,
                         layers: Sequence[int] | None = None, relevance=None, panel_inches: float = 3.2,
                         title: str | None = None, cmap: str = "viridis"):
    """A static figure: the image, then one panel per layer with each token's word written at its
    grid position over the (faded) image; thin lines mark the area each token of the layer stands
    for. Coarse layers (up to 4x4) share the first row with the image; finer layers get a row
    each, four panels wide, so their words stay legible (about 9 pt on an 8x8 layer at the
    default size, read on a 1,280 px page). With `relevance` (a list per layer of per-token
    scores) words sit on a colour for their score.

    image (3, H, W) in [0, 1]; pyramid: the image's TokenPyramid (or a batch, with `image_index`);
    layers: 1-based layers to draw (default all).
    """
    import matplotlib as mpl

    layers = list(layers or range(1, pyramid.num_layers + 1))
    size = image.shape[-1]
    table = token_table(pyramid, image_index, size, relevance)
    sides = {layer: pyramid.layout.layer_sizes[layer - 1] for layer in layers}
    coarse = [layer for layer in layers if sides[layer] <= 4]
    fine = [layer for layer in layers if sides[layer] > 4]
    top_columns = 1 + len(coarse)
    fine_rows = len(fine)
    width = panel_inches * max(top_columns, 4 if fine else 0)
    fine_inches = panel_inches * 4
    heights = [panel_inches + 0.4] + [fine_inches + 0.4] * fine_rows
    fig = plt.figure(figsize=(width, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    scored = [r["relevance"] for r in table if r["relevance"] is not None]
    norm = mpl.colors.Normalize(min(scored), max(scored)) if scored else None
    colours = mpl.colormaps[cmap]
    hwc = to_hwc(image)
    top = subfigs[0].subplots(1, max(top_columns, 1), squeeze=False)[0]
    top[0].imshow(hwc, interpolation="nearest", extent=(0, size, size, 0))
    top[0].set_title("image", fontsize=10)
    panels = [(top[i + 1], layer, panel_inches) for i, layer in enumerate(coarse)]
    for row, layer in enumerate(fine):
        ax = subfigs[row + 1].subplots(1, 1)
        ax.set_axis_off()
        panels.append((ax, layer, fine_inches))
    for ax in top:
        ax.set_axis_off()
    for ax, layer, inches in panels:
        n = sides[layer]
        tokens = [r for r in table if r["layer"] == layer]
        _draw_layer(ax, hwc, tokens, n, size, inches, norm, colours)
        ax.set_title(f"layer {layer} ({n}x{n}, {len(tokens)} words)", fontsize=10)
    if norm is not None:
        subfigs[0].colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=colours), ax=list(top), shrink=0.8,
                            label="relevance")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def token_pyramid_plotly(image: torch.Tensor, pyramid, image_index: int = 0, relevance=None,
                         active_layer: int = 1, title: str | None = None, width: int = 640):
    """An interactive plotly figure: the image with each token's word at its grid position, hover
    for word, layer, grid cell and relevance; buttons switch between layers (they work in exported
    HTML too). image (3, H, W) in [0, 1]; active_layer is 1-based."""
    import numpy as np
    import plotly.graph_objects as go

    size = image.shape[-1]
    table = token_table(pyramid, image_index, size, relevance)
    pixels = (to_hwc(image) * 255).round().astype(np.uint8)
    plot_px = width - 120
    fig = go.Figure(go.Image(z=pixels, x0=0.5, dx=1, y0=0.5, dy=1, hoverinfo="skip"))
    scored = [r["relevance"] for r in table if r["relevance"] is not None]
    num_layers = pyramid.num_layers
    for layer in range(1, num_layers + 1):
        tokens = [r for r in table if r["layer"] == layer]
        n = pyramid.layout.layer_sizes[layer - 1]
        font = _font_size([t["word"] for t in tokens], plot_px / n / 72)
        marker = {"symbol": "square", "size": min(0.8 * plot_px / n, 60), "opacity": 0.7,
                  "color": "white", "line": {"width": 0}}
        if scored:
            marker.update(color=[t["relevance"] for t in tokens], colorscale="Viridis",
                          cmin=min(scored), cmax=max(scored),
                          colorbar={"title": {"text": "relevance"}})
        relevance_text = [("" if t["relevance"] is None else f"<br>relevance {t['relevance']:.3f}")
                          for t in tokens]
        fig.add_trace(go.Scatter(
            x=[t["x"] for t in tokens], y=[t["y"] for t in tokens], mode="markers+text",
            text=[t["word"] for t in tokens], textfont={"size": font, "color": "black"},
            marker=marker, name=f"layer {layer}", visible=layer == active_layer,
            hovertext=[f"<b>{t['word']}</b><br>layer {layer} ({n}x{n}), token {t['index']}<br>"
                       f"latent cell ({t['row']}, {t['col']}){rel}"
                       for t, rel in zip(tokens, relevance_text, strict=True)],
            hoverinfo="text",
        ))
    buttons = [
        {"label": f"layer {layer}", "method": "update",
         "args": [{"visible": [True] + [k == layer for k in range(1, num_layers + 1)]}]}
        for layer in range(1, num_layers + 1)
    ]
    fig.update_layout(
        width=width, height=width - 40, title=title, showlegend=False,
        margin={"l": 20, "r": 20, "t": 80, "b": 20},
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons,
                      "active": active_layer - 1, "x": 0, "y": 1.08, "xanchor": "left"}],
    )
    fig.update_xaxes(visible=False, range=[0, size])
    fig.update_yaxes(visible=False, range=[size, 0], scaleanchor="x")
    return fig


def token_pyramid_explorer(images: torch.Tensor, pyramid, captions: Sequence[str] | None = None,
                           relevance=None):
    """ipywidgets: pick an image and a layer, see `token_pyramid_plotly` for them. Needs a live
    kernel (exported HTML keeps the static figures instead). images (B, 3, H, W) in [0, 1]."""
    import ipywidgets as widgets

    captions = list(captions or [f"image {i}" for i in range(len(images))])
    picker = widgets.Dropdown(options=[(f"{i}: {c}", i) for i, c in enumerate(captions)], value=0,
                              description="image")
    layer = widgets.IntSlider(value=1, min=1, max=pyramid.num_layers, description="layer")
    out = widgets.Output()

    def redraw(_=None):
        # Set the Output widget's outputs directly rather than capturing `display` inside it: no
        # output redirection for a notebook runner to emulate.
        figure = token_pyramid_plotly(images[picker.value], pyramid, picker.value, relevance,
                                      active_layer=layer.value, title=captions[picker.value])
        bundle = figure._repr_mimebundle_(include=None, exclude=None)  # the active plotly renderers
        out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    picker.observe(redraw, names="value")
    layer.observe(redraw, names="value")
    redraw()
    for widget, name in ((picker, "image"), (layer, "layer")):  # the browser test finds them by class
        widget.add_class("spae-control")
        widget.add_class(f"spae-control-{name}")
    out.add_class("spae-output-map")
    box = widgets.VBox([widgets.HBox([picker, layer]), out])
    box.add_class("spae-app")
    box.add_class("spae-token-explorer")
    return box
