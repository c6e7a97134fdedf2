"""The token pyramid: which grid positions each layer's tokens sit on, and the tokens themselves.

Layout (SPAE, dilation subsampling). The encoder gives a G x G grid of latents. Layer l of the
pyramid holds n_l x n_l tokens, one per s x s region of the grid (stride s = G / n_l), drawn at the
region's centred position (offset s // 2). A token stands for its whole region: every cell of the
region counts it in its stream, coarse to fine (the covering pyramid, docs/method.md). For G = 8 and
layers (1, 2, 4, 8, 8) the cumulative token counts are 1, 5, 21, 85, 149.

`TokenPyramid` holds one batch's token ids per layer, with their words, and reads and writes them
as text (what an LLM sees). The quantizers that choose the tokens live in `spae_lab.quantizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from numbers import Integral

import torch

from spae_lab.codebook import Codebook
from spae_lab.errors import SpaeError


class PyramidError(SpaeError, ValueError):
    """Token ids or text that do not fit the pyramid (wrong counts, unknown words)."""


@dataclass(frozen=True)
class PyramidLayout:
    """Which grid positions each layer selects. `grid` and every layer size are powers of two."""

    grid: int
    layer_sizes: tuple[int, ...]
    # clips (spae_lab.video): the latent grid is frames x grid x grid, and layer l holds
    # time_sizes[l] x n_l x n_l tokens, each covering its (frames / t) x stride x stride region.
    # Images: frames 1, time_sizes None.
    frames: int = 1
    time_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        g = self.grid
        if g < 1 or g & (g - 1):
            raise PyramidError(f"grid must be a power of two, got {g}")
        for n in self.layer_sizes:
            if n < 1 or n > g or g % n or n & (n - 1):
                raise PyramidError(f"layer size {n} must be a power of two dividing the grid {g}")
        if self.time_sizes is None:
            if self.frames != 1:
                raise PyramidError(f"a layout of {self.frames} latent frames needs time_sizes")
            return
        f = self.frames
        if f < 1 or f & (f - 1) or len(self.time_sizes) != len(self.layer_sizes):
            raise PyramidError(f"a clip layout covers a power-of-two number of frames with one time size per "
                               f"layer, got frames {f}, time sizes {self.time_sizes}")
        for t in self.time_sizes:
            if t < 1 or t > f or f % t or t & (t - 1):
                raise PyramidError(f"time size {t} must be a power of two dividing the frames {f}")
        if list(self.time_sizes) != sorted(self.time_sizes):
            raise PyramidError(f"time sizes must go coarse to fine, got {self.time_sizes}")

    @property
    def num_layers(self) -> int:
        return len(self.layer_sizes)

    @property
    def num_positions(self) -> int:
        return self.frames * self.grid * self.grid

    def tokens_per_layer(self) -> list[int]:
        return [self.time_size(layer) * n * n for layer, n in enumerate(self.layer_sizes)]

    def time_size(self, layer: int) -> int:
        """Tokens over time of `layer` (0-based): 1 for images."""
        return 1 if self.time_sizes is None else self.time_sizes[layer]

    def region(self, layer: int) -> tuple[int, int, int, int]:
        """(grid, stride, frames, time stride) of `layer`'s regions: what `quantizer.region_mean`
        and `quantizer.add_spread` take."""
        return self.grid, self.stride(layer), self.frames, self.frames // self.time_size(layer)

    def layer_shape(self, layer: int) -> str:
        """'2x2' for an image layer, '2x2x2' (time x rows x columns) for a clip layer."""
        n = self.layer_sizes[layer]
        return f"{n}x{n}" if self.time_sizes is None else f"{self.time_sizes[layer]}x{n}x{n}"

    def cumulative_tokens(self) -> list[int]:
        out, total = [], 0
        for n in self.tokens_per_layer():
            total += n
            out.append(total)
        return out

    def stride(self, layer: int) -> int:
        """Grid cells per side of the region one token of `layer` (0-based) stands for."""
        return self.grid // self.layer_sizes[layer]

    def coords(self, layer: int) -> torch.Tensor:
        """(n_l * n_l, 2) row, col grid coordinates selected by `layer` (0-based), row-major.
        Clips: (t_l * n_l * n_l, 3) frame, row, col, frame-major (the order of a layer's tokens)."""
        n = self.layer_sizes[layer]
        stride = self.grid // n
        axis = stride // 2 + stride * torch.arange(n)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        plane = torch.stack([rows.flatten(), cols.flatten()], dim=1)
        if self.time_sizes is None:
            return plane
        t, time_stride = self.time_sizes[layer], self.region(layer)[3]
        times = (time_stride // 2 + time_stride * torch.arange(t)).repeat_interleave(n * n)
        return torch.cat([times[:, None], plane.repeat(t, 1)], dim=1)

    @cached_property
    def positions(self) -> list[torch.Tensor]:
        """Per layer, (n_l * n_l,) flat indices (row * grid + col) of its selected positions."""
        return [(c[:, 0] * self.grid + c[:, 1]) for c in (self.coords(i) for i in range(self.num_layers))]


@dataclass
class TokenPyramid:
    """The tokens of a batch of images: per layer, codebook rows at grid positions, and their words.

    `ids[l]` is (B, n_l * n_l), row-major over the layer's selected positions (see `positions`).
    """

    ids: list[torch.Tensor]
    layout: PyramidLayout
    codebook: Codebook

    def __post_init__(self) -> None:
        """Refuse ids that do not fit: per layer (at least one, at most the layout's) an integer
        tensor (B, n_l * n_l) with the same B >= 1, each id a row of the codebook (0..V-1; a -1
        would otherwise wrap around to the last word)."""
        if not isinstance(self.ids, (list, tuple)) or not 1 <= len(self.ids) <= self.layout.num_layers:
            count = len(self.ids) if isinstance(self.ids, (list, tuple)) else type(self.ids).__name__
            raise PyramidError(f"a pyramid holds 1..{self.layout.num_layers} layers of ids, got {count}")
        self.ids = list(self.ids)
        sizes, vocabulary = self.layout.tokens_per_layer(), len(self.codebook)
        for layer, ids in enumerate(self.ids):
            if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex \
                    or ids.dtype == torch.bool:
                what = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
                raise PyramidError(f"layer {layer + 1}: token ids must be an integer tensor, got {what}")
            batch = self.ids[0].shape[0] if self.ids[0].ndim else 0
            if ids.ndim != 2 or ids.shape != (batch, sizes[layer]) or batch < 1:
                raise PyramidError(f"layer {layer + 1} needs ids of shape (B, {sizes[layer]}) with the same "
                                   f"B >= 1 in every layer, got {tuple(ids.shape)}")
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocabulary:
                raise PyramidError(f"layer {layer + 1}: token ids must be in 0..{vocabulary - 1} (the rows of "
                                   f"this codebook), got {low}..{high}")

    def __len__(self) -> int:
        return self.ids[0].shape[0]

    def __getitem__(self, index: int) -> TokenPyramid:
        return TokenPyramid([t[index : index + 1] for t in self.ids], self.layout, self.codebook)

    @property
    def num_layers(self) -> int:
        return len(self.ids)

    def positions(self, layer: int) -> torch.Tensor:
        """(n_l * n_l, 2) row, col of layer `layer` (0-based) on the latent grid."""
        return self.layout.coords(layer)

    def llm_token_ids(self, layer: int) -> torch.Tensor:
        """(B, n_l * n_l) ids of these words in the LLM's own tokenizer."""
        return self.codebook.token_ids[self.ids[layer].cpu()]

    def words(self, layer: int, image: int = 0) -> list[str]:
        return [self.codebook.words[i] for i in self.ids[layer][image].tolist()]

    def check_layers(self, num_layers: int | None) -> int:
        """`num_layers` checked against this pyramid (None: all its layers; 0 is an error, not
        "all")."""
        if num_layers is None:
            return self.num_layers
        whole = isinstance(num_layers, Integral) and not isinstance(num_layers, bool)
        if not whole or not 1 <= num_layers <= self.num_layers:
            raise PyramidError(f"num_layers must be in 1..{self.num_layers} (None: all), got {num_layers!r}")
        return int(num_layers)

    def to_text(self, num_layers: int | None = None, image: int = 0) -> str:
        """The words of the first `num_layers` layers, coarse to fine, space separated: what an LLM
        reads. `from_text` parses it back."""
        num_layers = self.check_layers(num_layers)
        return " ".join(w for layer in range(num_layers) for w in self.words(layer, image))

    def describe(self, num_layers: int | None = None, image: int = 0) -> str:
        """One line per layer: 'layer 2 (2x2): word word word word'."""
        num_layers = self.check_layers(num_layers)
        lines = []
        for layer in range(num_layers):
            lines.append(f"layer {layer + 1} ({self.layout.layer_shape(layer)}): " + " ".join(self.words(layer, image)))
        return "\n".join(lines)

    @classmethod
    def from_text(cls, texts: str | list[str], layout: PyramidLayout, codebook: Codebook) -> TokenPyramid:
        """Parse `to_text` output (one string per image) back into a pyramid of the layers it
        covers. The word count must be a cumulative layer count (1, 5, 21, ...)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for text in texts:
            words = text.split()
            try:
                rows.append([codebook.index_of(w) for w in words])
            except KeyError as e:
                raise PyramidError(str(e.args[0])) from None
        lengths = {len(r) for r in rows}
        cumulative = layout.cumulative_tokens()
        if len(lengths) != 1 or (n_words := lengths.pop()) not in cumulative:
            raise PyramidError(
                f"a pyramid text holds a cumulative layer count of words {cumulative}, "
                f"got {sorted({len(r) for r in rows})}"
            )
        num_layers = cumulative.index(n_words) + 1
        ids_all = torch.tensor(rows, dtype=torch.long)
        ids, start = [], 0
        for count in layout.tokens_per_layer()[:num_layers]:
            ids.append(ids_all[:, start : start + count])
            start += count
        return cls(ids, layout, codebook)
