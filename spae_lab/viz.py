"""Figures and widgets from plain data. Nothing here trains or calls an LLM.

- reconstructions: `reconstruction_grid` (one checkpoint), `reconstruction_comparison` (several side
  by side), `depth_metrics_figure` (PSNR/SSIM per depth), `image_row`;
- the token pyramid: `token_table` (words at pixel positions), `token_pyramid_figure` (static,
  survives HTML export), `token_pyramid_plotly` (hover, layer buttons), `token_pyramid_explorer`
  (ipywidgets: pick image and layer); relevance colours words when given;
- training: `training_curves_figure`, `LiveLossPlot` (updates one output in place in Jupyter).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from spae_lab.metrics import psnr


def _to_hwc(image: torch.Tensor):
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


# --- reconstructions ------------------------------------------------------------------------------


def _depth_label(depth: int, cumulative_tokens: Sequence[int]) -> str:
    return f"{depth + 1} layer{'s' if depth else ''}\n{cumulative_tokens[depth]} tok"


def _mosaic(rows: Sequence[torch.Tensor], gap: int = 1):
    """Rows of (B, 3, H, W) images -> one (rows*(H+gap), B*(W+gap), 3) array on white."""
    import numpy as np

    count, _, H, W = rows[0].shape
    mosaic = np.ones((len(rows) * (H + gap) - gap, count * (W + gap) - gap, 3), dtype=np.float32)
    for r, images in enumerate(rows):
        for c in range(count):
            mosaic[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = _to_hwc(images[c])
    return mosaic


def _draw_grid(fig, originals: torch.Tensor, by_depth: torch.Tensor, cumulative_tokens: Sequence[int],
               title: str | None = None) -> None:
    """One axes holding a mosaic (fast to draw, even for many images): originals, then each depth."""
    depths = by_depth.shape[0]
    H = originals.shape[-2]
    labels = ["original"] + [
        f"{_depth_label(d, cumulative_tokens)}, {psnr(by_depth[d], originals).mean():.1f} dB"
        for d in range(depths)
    ]
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(_mosaic([originals] + list(by_depth)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (H + 1) + H / 2 for r in range(depths + 1)], labels, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)


def reconstruction_grid(originals: torch.Tensor, by_depth: torch.Tensor, cumulative_tokens: list[int]):
    """A figure: originals in the top row, then one row per decoded depth, labelled with the token
    count and the row's mean PSNR. originals (B, 3, H, W), by_depth (L, B, 3, H, W), in [0, 1]."""
    depths, count = by_depth.shape[0], originals.shape[0]
    fig = plt.figure(figsize=(1.1 * count + 1.6, 1.1 * (depths + 1)))
    _draw_grid(fig, originals, by_depth, cumulative_tokens)
    fig.tight_layout()
    return fig


def reconstruction_comparison(runs: dict[str, tuple[torch.Tensor, torch.Tensor, Sequence[int]]],
                              columns: int = 2):
    """Several checkpoints side by side, one `reconstruction_grid` each, `columns` to a row.

    runs: name -> (originals (B, 3, H, W), by_depth (L, B, 3, H, W), cumulative tokens per depth).
    """
    if not runs:
        raise ValueError("reconstruction_comparison needs at least one run")
    columns = min(columns, len(runs))
    rows = -(-len(runs) // columns)
    count = max(originals.shape[0] for originals, _, _ in runs.values())
    depths = max(by_depth.shape[0] for _, by_depth, _ in runs.values())
    fig = plt.figure(figsize=(columns * (1.0 * count + 1.6), rows * (1.0 * (depths + 1) + 0.4)),
                     layout="constrained")
    subfigs = fig.subfigures(rows, columns, squeeze=False).flatten()
    for subfig, (name, (originals, by_depth, tokens)) in zip(subfigs, runs.items(), strict=False):
        _draw_grid(subfig, originals, by_depth, tokens, title=name)
    return fig


def _records(table) -> list[dict]:
    """A pandas DataFrame or a list of dicts -> list of dicts."""
    return table.to_dict("records") if hasattr(table, "to_dict") else list(table)


def depth_metrics_figure(table):
    """PSNR and SSIM against the number of tokens decoded, one line per run.

    table: rows (dicts or a DataFrame) with keys run, tokens, psnr and optionally ssim.
    """
    rows = _records(table)
    metrics = ["psnr"] + (["ssim"] if rows and "ssim" in rows[0] else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for run in runs:
            points = [(r["tokens"], r[metric]) for r in rows if r["run"] == run]
            ax.plot(*zip(*points, strict=True), marker="o", label=run)
        ax.set_xscale("log")
        ax.set_xlabel("tokens decoded (layers 1..L)")
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM"}[metric])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
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
    """(3, H, W) in [0, 1] -> an image file in the format its extension names (.png, .jpg, ...),
    written atomically: a failed save leaves an existing file as it was."""
    from PIL import Image

    from spae_lab.data import DataError
    from spae_lab.io import atomic_write_path

    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if path.is_dir() or image_format is None:
        raise DataError(f"cannot save an image as {path}: give a file name ending in .png or .jpg")
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    with atomic_write_path(path) as tmp:
        Image.fromarray(array.astype("uint8")).save(tmp, format=image_format)
    return path


# --- the token pyramid ----------------------------------------------------------------------------


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
    latent grid, x and y of the cell centre in pixels, span (pixels per token side at this layer)
    and relevance (None without scores).

    relevance: optional list per layer of (B, n_l * n_l) or (n_l * n_l,) scores (see `token_scores`).
    """
    grid = pyramid.layout.grid
    cell = (image_size or grid) / grid  # pixels per latent cell
    rows = []
    for layer in range(pyramid.num_layers):
        words = pyramid.words(layer, image)
        scores = _relevance_of(relevance, layer, image)
        n = pyramid.layout.layer_sizes[layer]
        for index, ((row, col), word) in enumerate(zip(pyramid.positions(layer).tolist(), words, strict=True)):
            rows.append({
                "layer": layer + 1, "index": index, "word": word, "row": row, "col": col,
                "x": (col + 0.5) * cell, "y": (row + 0.5) * cell, "span": grid * cell / n,
                "relevance": None if scores is None else scores[index],
            })
    return rows


def _font_size(words: Sequence[str], spacing_inches: float, largest: float = 13.0) -> float:
    """Points such that the longest word fits the spacing between tokens."""
    longest = max([len(w) for w in words] + [3])
    return max(4.0, min(largest, 72 * spacing_inches / (0.72 * longest + 1.5)))


def _draw_layer(ax, hwc, tokens: list[dict], n: int, size: int, panel_inches: float, norm, colours) -> None:
    ax.imshow(hwc * 0.45 + 0.55, interpolation="nearest", extent=(0, size, size, 0))  # faded
    for k in range(1, n):
        ax.axhline(k * size / n, color="0.5", lw=0.5)
        ax.axvline(k * size / n, color="0.5", lw=0.5)
    font = _font_size([t["word"] for t in tokens], panel_inches / n)
    for t in tokens:
        face = colours(norm(t["relevance"])) if norm is not None else (1, 1, 1, 0.75)
        ax.text(t["x"], t["y"], t["word"], ha="center", va="center", fontsize=font, clip_on=True,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": face, "edgecolor": "none", "alpha": 0.85})
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)


def token_pyramid_figure(image: torch.Tensor, pyramid, image_index: int = 0,
                         layers: Sequence[int] | None = None, relevance=None, panel_inches: float = 3.2,
                         title: str | None = None, cmap: str = "viridis"):
    """A static figure: the image, then one panel per layer with each token's word written at its
    grid position over the (faded) image; thin lines mark the area each token of the layer stands
    for. Coarse layers (up to 4x4) share the first row with the image; finer layers get panels
    twice as large, two to a row, so their words stay legible. With `relevance` (a list per layer
    of per-token scores) words sit on a colour for their score.

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
    fine_rows = -(-len(fine) // 2)
    width = panel_inches * max(top_columns, 4 if fine else 0)
    heights = [panel_inches + 0.4] + [2 * panel_inches + 0.4] * fine_rows
    fig = plt.figure(figsize=(width, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    scored = [r["relevance"] for r in table if r["relevance"] is not None]
    norm = mpl.colors.Normalize(min(scored), max(scored)) if scored else None
    colours = mpl.colormaps[cmap]
    hwc = _to_hwc(image)
    top = subfigs[0].subplots(1, max(top_columns, 1), squeeze=False)[0]
    top[0].imshow(hwc, interpolation="nearest", extent=(0, size, size, 0))
    top[0].set_title("image", fontsize=10)
    panels = [(top[i + 1], layer, panel_inches) for i, layer in enumerate(coarse)]
    for row in range(fine_rows):
        axes = subfigs[row + 1].subplots(1, 2, squeeze=False)[0]
        for ax in axes:
            ax.set_axis_off()
        panels += [(ax, layer, 2 * panel_inches) for ax, layer in zip(axes, fine[2 * row:2 * row + 2], strict=False)]
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


def image_row(images: Sequence[torch.Tensor], titles: Sequence[str], inches: float = 1.8):
    """Images side by side with a title each. images: (3, H, W) tensors in [0, 1]."""
    fig, axes = plt.subplots(1, len(images), figsize=(inches * len(images), inches + 0.4), squeeze=False)
    for ax, image, title in zip(axes[0], images, titles, strict=True):
        ax.imshow(_to_hwc(image), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
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
    pixels = (_to_hwc(image) * 255).round().astype(np.uint8)
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
                       f"latent cell ({t['row']}, {t['col']}){rel}" for t, rel in zip(tokens, relevance_text, strict=True)],
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
    return widgets.VBox([widgets.HBox([picker, layer]), out])


def notebook_setup() -> None:
    """Plotly figures render both in JupyterLab (plotly's own mimetype) and in exported HTML
    (plotly.js inlined once, no MathJax from a CDN), so reports open offline."""
    import plotly.io as pio
    from plotly.io.base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        """plotly's "notebook" renderer without its MathJax <script> from a CDN."""

        def to_mimebundle(self, fig_dict):
            return {"text/html": pio.to_html(fig_dict, config=self.config, include_plotlyjs=False,
                                             include_mathjax=False, full_html=False,
                                             default_width="100%", default_height=525, validate=False)}

    pio.renderers["spae_lab_offline"] = OfflineNotebookRenderer()
    pio.renderers.default = "plotly_mimetype+spae_lab_offline"


# --- training -------------------------------------------------------------------------------------


def training_curves_figure(history: Sequence[dict], cumulative_tokens: Sequence[int] | None = None):
    """Training loss (log scale) and held-out PSNR per depth against the step.

    history: `train`'s records: {"step", "loss", ...} and {"step", "eval": {"psnr": [per depth]}}.
    """
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(9, 3.2))
    losses = [(r["step"], r["loss"]) for r in history if "loss" in r]
    if losses:
        ax_loss.plot(*zip(*losses, strict=True), color="C0")
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    evals = [(r["step"], r["eval"]["psnr"]) for r in history if "eval" in r]
    if evals:
        steps = [s for s, _ in evals]
        for depth in range(len(evals[0][1])):
            label = f"{depth + 1} layer{'s' if depth else ''}"
            if cumulative_tokens:
                label += f" ({cumulative_tokens[depth]} tok)"
            ax_psnr.plot(steps, [p[depth] for _, p in evals], marker="o", ms=3, label=label)
        ax_psnr.legend(fontsize=7)
    ax_psnr.set_xlabel("step")
    ax_psnr.set_ylabel("held-out PSNR (dB)")
    ax_psnr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class LiveLossPlot:
    """Training curves that redraw in place: call `update(history)` after each chunk of steps.

    In Jupyter one output is replaced each time (papermill and nbconvert keep the last one);
    elsewhere it only keeps the latest figure in `.figure`.
    """

    def __init__(self, cumulative_tokens: Sequence[int] | None = None):
        self.cumulative_tokens = cumulative_tokens
        self.figure = None
        self._handle = None

    def update(self, history: Sequence[dict]):
        self.figure = training_curves_figure(history, self.cumulative_tokens)
        plt.close(self.figure)  # shown through the display handle only, not again at cell end
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return self.figure
        if get_ipython() is None:
            return self.figure
        if self._handle is None:
            self._handle = display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)
        return self.figure


def fewshot_figure(summary):
    """Bars of few-shot accuracy per (method, decoding), one panel per way, with 95% CIs.

    `summary`: `spae_lab.fewshot.summarize` output (one row per method, ways, names, decoding,
    setting, with correct counts in `queries` * `accuracy`). Settings are pooled per bar.
    """
    import numpy as np

    from spae_lab.tables import wilson_interval

    df = summary.assign(correct=summary.accuracy * summary.queries)
    ways = sorted(df.ways.unique())
    fig, axes = plt.subplots(1, len(ways), figsize=(5.5 * len(ways), 3.6), squeeze=False)
    for ax, w in zip(axes[0], ways, strict=True):
        part = df[df.ways == w]
        pooled = part.groupby(["method", "names", "decoding"], sort=False)[["correct", "queries"]].sum()
        labels, acc, low, high = [], [], [], []
        for (method, names, decoding), row in pooled.iterrows():
            correct, total = int(round(row.correct)), int(row.queries)
            lo, hi = wilson_interval(correct, total)
            suffix = "" if decoding == "-" else f"\n{decoding}, {names} names"
            labels.append(f"{method}{suffix}")
            acc.append(correct / total)
            low.append(correct / total - lo)
            high.append(hi - correct / total)
        y = np.arange(len(labels))
        ax.barh(y, acc, xerr=[low, high], color="tab:blue", alpha=0.8, capsize=3)
        ax.axvline(1 / w, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy")
        ax.set_title(f"{w}-way")
    fig.tight_layout()
    return fig


def ablation_figure(table, random_relevance: float | None = None):
    """Two panels from an ablation table (`spae_lab.ablation.run_ablation`): held-out PSNR per
    decoded depth, and the teacher's relevance of the chosen words per layer; one line per variant.
    `random_relevance`: the mean relevance of a random word, drawn as a reference line."""
    styles = {"SAQ": "-", "RQ": "--"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for row in _records(table):
        psnr_cols = sorted((k for k in row if k.startswith("PSNR@")), key=lambda k: int(k[5:]))
        rel_cols = sorted((k for k in row if k.startswith("relevance L")), key=lambda k: int(k[11:]))
        name = row["variant"]
        style = styles.get(name.split()[0], "-")
        colour = "tab:orange" if "semantic" in name else "tab:blue"
        left.plot(range(1, len(psnr_cols) + 1), [row[k] for k in psnr_cols], style, color=colour,
                  marker="o", label=name)
        if rel_cols:
            right.plot(range(1, len(rel_cols) + 1), [row[k] for k in rel_cols], style, color=colour,
                       marker="o", label=name)
    if random_relevance is not None:
        right.axhline(random_relevance, color="grey", linewidth=1, linestyle=":", label="random word")
    left.set(xlabel="layers decoded", ylabel="held-out PSNR (dB)", title="reconstruction")
    right.set(xlabel="layer", ylabel="teacher score of the chosen words", title="relevance per layer")
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
