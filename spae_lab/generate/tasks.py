"""Generation tasks on token pyramids: corruptions, prompts (examples and queries), no-LLM fills.

Tasks (`TASKS`):
- `class`: class-conditional digits, "An image of 7:" -> the words of a 7;
- `arithmetic`: SPAE's demo, "An image of 1+7:" -> the words of an 8 (sums up to 9);
- `inpaint`: the words of the centre cells (the tokens whose region lies inside the central half
  of the grid) replaced by those of the image with its centre painted grey (`corruption="masked"`,
  an image with a hole) or by random words ("random"); the LLM rewrites them, every other word is
  given;
- `outpaint`: the same for the bottom half;
- `flip`, `shift`: the image mirrored left-right, or rolled right by a quarter of its width; the
  LLM writes every word of the target from the input's words;
- `denoise`: V2L's in-context denoising: the context holds copies of the query's own words with
  random replacement at falling ratios (`CorruptionSchedule`), the LLM writes the next copy.

Image-to-image tasks other than `denoise` learn from example pairs "Input: <words> Output:
<words>" of other images (by example). Layers are shown up to the layer being written, for the
examples' inputs and outputs alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spae_lab.generate.decode import Example, Query, words_text

TASKS = ("class", "arithmetic", "inpaint", "outpaint", "flip", "shift", "denoise")
IMAGE_TASKS = ("inpaint", "outpaint", "flip", "shift", "denoise")


@dataclass(frozen=True)
class CorruptionSchedule:
    """Random replacement ratios of the in-context copies, falling linearly (V2L: 10 copies from
    0.50 to 0.23, 2 words per call, greedy)."""

    start: float = 0.50  # share of words replaced in the first (noisiest) copy
    end: float = 0.23  # ... in the last copy, the one just before the LLM's
    count: int = 10  # copies in the context

    def ratios(self) -> list[float]:
        if self.count == 1:
            return [self.start]
        step = (self.end - self.start) / (self.count - 1)
        return [round(self.start + i * step, 4) for i in range(self.count)]


V2L_SCHEDULE = CorruptionSchedule()

Pyramid = list[list[int]]  # per layer, codebook rows


def pyramids_of(ids: Sequence[torch.Tensor]) -> list[Pyramid]:
    """TokenPyramid.ids (per layer (B, n)) -> per image, per layer, a list of rows."""
    return [[layer[b].tolist() for layer in ids] for b in range(ids[0].shape[0])]


def to_ids(pyramids: Sequence[Pyramid]) -> list[torch.Tensor]:
    """The inverse of `pyramids_of`: per layer (B, n) int64."""
    return [torch.tensor([p[layer] for p in pyramids], dtype=torch.long)
            for layer in range(len(pyramids[0]))]


def random_replace(pyramid: Pyramid, ratio: float, vocab_size: int,
                   generator: torch.Generator) -> Pyramid:
    """A copy with round(ratio * tokens) positions, drawn over all layers, set to random rows."""
    flat = [r for layer in pyramid for r in layer]
    count = round(ratio * len(flat))
    positions = torch.randperm(len(flat), generator=generator)[:count]
    values = torch.randint(vocab_size, (count,), generator=generator)
    for p, v in zip(positions.tolist(), values.tolist(), strict=True):
        flat[p] = v
    out, start = [], 0
    for layer in pyramid:
        out.append(flat[start:start + len(layer)])
        start += len(layer)
    return out


def region_mask(layout, box: tuple[int, int, int, int]) -> list[list[bool]]:
    """Per layer, per token: does its region (stride x stride cells) lie inside `box` = (row0,
    row1, col0, col1) in grid cells, end exclusive?"""
    r0, r1, c0, c1 = box
    masks = []
    for layer in range(layout.num_layers):
        s, n = layout.stride(layer), layout.layer_sizes[layer]
        masks.append([r0 <= (i // n) * s and (i // n + 1) * s <= r1 and
                      c0 <= (i % n) * s and (i % n + 1) * s <= c1 for i in range(n * n)])
    return masks


def task_box(task: str, grid: int) -> tuple[int, int, int, int]:
    """The corrupted region of inpaint (the central half) or outpaint (the bottom half), in cells."""
    if task == "inpaint":
        return (grid // 4, grid - grid // 4, grid // 4, grid - grid // 4)
    if task == "outpaint":
        return (grid // 2, grid, 0, grid)
    raise ValueError(f"{task!r} has no region")


def mask_words(pyramid: Pyramid, mask: list[list[bool]], vocab_size: int,
               generator: torch.Generator) -> Pyramid:
    """Masked positions replaced by random rows."""
    return [[int(torch.randint(vocab_size, (1,), generator=generator)) if m else r
             for r, m in zip(layer, layer_mask, strict=True)]
            for layer, layer_mask in zip(pyramid, mask, strict=True)]


def paint_region(images: torch.Tensor, box: tuple[int, int, int, int], grid: int,
                 value: float = 0.5) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> a copy with the cells of `box` (row0, row1, col0, col1 on a
    `grid`-cell grid) painted `value` (grey): an image with a hole."""
    S = images.shape[-1]
    r0, r1, c0, c1 = (v * S // grid for v in box)
    out = images.clone()
    out[..., r0:r1, c0:c1] = value
    return out


def merge_masked(pyramid: Pyramid, other: Pyramid, mask: list[list[bool]]) -> Pyramid:
    """`pyramid` with its masked positions taken from `other` (same layout)."""
    return [[o if m else r for r, o, m in zip(rows, other_rows, layer_mask, strict=True)]
            for rows, other_rows, layer_mask in zip(pyramid, other, mask, strict=True)]


def nearest_known_fill(pyramid: Pyramid, mask: list[list[bool]], layout) -> Pyramid:
    """The no-LLM fill: each masked token copies the nearest unmasked token of its layer (grid
    distance; ties: the first in row-major order); a layer with nothing known keeps its words."""
    out = []
    for layer, (rows, layer_mask) in enumerate(zip(pyramid, mask, strict=True)):
        n = layout.layer_sizes[layer]
        known = [i for i, m in enumerate(layer_mask) if not m]
        filled = list(rows)
        for i, m in enumerate(layer_mask):
            if m and known:
                j = min(known, key=lambda k: ((k // n - i // n) ** 2 + (k % n - i % n) ** 2, k))
                filled[i] = rows[j]
        out.append(filled)
    return out


def majority_fill(copies: Sequence[Pyramid]) -> Pyramid:
    """The no-LLM denoiser: at each position the most common row among the copies (ties: the
    one in the latest copy)."""
    out = []
    for layer in range(len(copies[0])):
        rows = []
        for pos in range(len(copies[0][layer])):
            seen = [c[layer][pos] for c in copies]
            rows.append(max(reversed(seen), key=seen.count))
        out.append(rows)
    return out


def transform_images(task: str, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> the target images of flip (mirror left-right) or shift (roll right by S/4)."""
    if task == "flip":
        return images.flip(-1)
    if task == "shift":
        return images.roll(images.shape[-1] // 4, dims=-1)
    raise ValueError(f"{task!r} is not an image transform")


def transform_tokens(task: str, pyramid: Pyramid, layout) -> Pyramid:
    """The no-LLM reference of flip and shift: the same move applied to each layer's token grid
    (a shift of a quarter moves a layer of n < 4 tokens per side by a fraction: it stays)."""
    out = []
    for layer, rows in enumerate(pyramid):
        n = layout.layer_sizes[layer]
        grid = torch.tensor(rows).view(n, n)
        if task == "flip":
            grid = grid.flip(-1)
        elif n >= 4:
            grid = grid.roll(n // 4, dims=-1)
        out.append(grid.flatten().tolist())
    return out


# --- prompts --------------------------------------------------------------------------------------


def class_condition(label: str) -> str:
    return f"An image of {label}:"


def class_example(label: str, target: Pyramid) -> Example:
    return Example([class_condition(label)] * len(target), target)


def class_query(label: str, tokens_per_layer: Sequence[int]) -> Query:
    return Query([class_condition(label)] * len(tokens_per_layer),
                 [[None] * n for n in tokens_per_layer])


def pair_conditions(source: Pyramid, words: Sequence[str]) -> list[str]:
    """'Input: <source words, layers 1..l> Output:' for l = 1..L."""
    return [f"Input:{words_text(source[:depth], words)} Output:"
            for depth in range(1, len(source) + 1)]


def pair_example(source: Pyramid, target: Pyramid, words: Sequence[str]) -> Example:
    return Example(pair_conditions(source, words), target)


def pair_query(source: Pyramid, words: Sequence[str], known: list[list[int | None]]) -> Query:
    return Query(pair_conditions(source, words), known)


def denoise_context(pyramid: Pyramid, schedule: CorruptionSchedule, vocab_size: int,
                    generator: torch.Generator) -> tuple[list[Example], Query, list[Pyramid]]:
    """V2L's in-context denoising of one pyramid: (examples = its corrupted copies at the
    schedule's ratios, the query that writes the next copy, the copies)."""
    copies = [random_replace(pyramid, r, vocab_size, generator) for r in schedule.ratios()]
    examples = [Example(["Copy:"] * len(pyramid), c) for c in copies]
    query = Query(["Copy:"] * len(pyramid), [[None] * len(layer) for layer in pyramid])
    return examples, query, copies
