"""Views of clips from plain tensors: still grids, and animations that play in JupyterLab and in
the HTML report (GIFs inlined as data URIs: no file beside the page, no JavaScript, no network).
Nothing here trains or calls an LLM."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import torch

from spae_lab.video.readers import gif_bytes
from spae_lab.views.figures import reconstruction_grid


def frames_of(clip: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) -> (T, 3, H, W): a clip's frames as a batch of images."""
    return clip.transpose(0, 1)


def clip_reconstruction_grid(clip: torch.Tensor, by_depth: torch.Tensor, cumulative_tokens: Sequence[int]):
    """One clip's frames (columns) as given and decoded from 1, 2, ... layers (rows), with each
    row's token count and PSNR. clip (3, T, H, W); by_depth (L, 3, T, H, W)."""
    return reconstruction_grid(frames_of(clip), torch.stack([frames_of(c) for c in by_depth]),
                               list(cumulative_tokens))


def animation_html(clips: dict[str, torch.Tensor], scale: int = 4, fps: float = 4.0, title: str | None = None) -> str:
    """A row of labelled, looping animations (inline GIFs) as HTML: `IPython.display.HTML(...)`
    shows it in JupyterLab, and nbconvert keeps it in the report as it is."""
    cells = []
    for label, clip in clips.items():
        data = base64.b64encode(gif_bytes(clip, scale, fps)).decode()
        cells.append(f'<figure style="display:inline-block;margin:4px;text-align:center">'
                     f'<img src="data:image/gif;base64,{data}" style="image-rendering:pixelated"/>'
                     f'<figcaption style="font-size:11px;max-width:{clip.shape[-1] * scale}px">'
                     f"{html.escape(label)}</figcaption></figure>")
    head = f"<div style='font-weight:bold'>{html.escape(title)}</div>" if title else ""
    return f"<div>{head}{''.join(cells)}</div>"
