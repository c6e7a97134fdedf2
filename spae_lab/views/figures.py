"""Figures and widgets from plain data. Nothing here trains or calls an LLM.

- reconstructions: `reconstruction_grid` (one checkpoint), `reconstruction_comparison` (several side
  by side), `depth_metrics_figure` (PSNR/SSIM per depth), `image_row`;
- training: `training_curves_figure`, `LiveLossPlot` (updates one output in place in Jupyter);
- results: `fewshot_figure`, `ablation_figure`; `notebook_setup` for plotly in notebooks.

The token pyramid's own figures are in `spae_lab.views.pyramid_figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from spae_lab.io import atomic_save_figure
from spae_lab.metrics import psnr


def to_hwc(image: torch.Tensor):
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
            mosaic[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = to_hwc(images[c])
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
    by_depth = model.decode_every_depth(pyramid)
    fig = reconstruction_grid(images.cpu(), by_depth.cpu(), model.layout.cumulative_tokens())
    path = Path(path)
    atomic_save_figure(fig, path, dpi=110)
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


def image_row(images: Sequence[torch.Tensor], titles: Sequence[str], inches: float = 1.8):
    """Images side by side with a title each. images: (3, H, W) tensors in [0, 1]."""
    fig, axes = plt.subplots(1, len(images), figsize=(inches * len(images), inches + 0.4), squeeze=False)
    for ax, image, title in zip(axes[0], images, titles, strict=True):
        ax.imshow(to_hwc(image), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


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
    """Training curves that redraw in place: pass `update` as `train(..., on_record=plot.update)`.

    It redraws when the history has advanced `every_steps` steps since the last drawing (or when
    `force`d: call `update(result.history, force=True)` after training for the final curves). In
    Jupyter one output is replaced each time (papermill and nbconvert keep the last one);
    elsewhere it only keeps the latest figure in `.figure`.
    """

    def __init__(self, cumulative_tokens: Sequence[int] | None = None, every_steps: int = 1):
        self.cumulative_tokens = cumulative_tokens
        self.every_steps = every_steps
        self.figure = None
        self._handle = None
        self._drawn_step: int | None = None

    def update(self, history: Sequence[dict], force: bool = False):
        step = history[-1].get("step", 0) if history else 0
        if not force and self._drawn_step is not None and step - self._drawn_step < self.every_steps:
            return self.figure
        self._drawn_step = step
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

    `summary`: `spae_lab.reading.fewshot.summarize` output (one row per method, ways, names, decoding,
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
    """Two panels from an ablation table (`spae_lab.training.ablation.run_ablation`): held-out PSNR per
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
