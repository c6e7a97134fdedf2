"""Quantizers over a frozen codebook: SAQ and RQ on the token pyramid, with the exact inverse.

Quantizers, at a position with latent z and c tokens already chosen there (running sum S):
- SAQ, streaming average quantization (SPAE, Yu et al. 2023; the paper gives no formula, this
  is our reading of it): k = argmin_k || (c+1) z - S - e_k ||^2, and the position's
  latent estimate is the running *mean* zhat = (S + e_k) / (c + 1). Every target stays at
  codebook scale, so deep tokens remain real words.
- RQ, residual quantization: k = argmin_k || z - S - e_k ||^2, estimate zhat = S + e_k.

The covering pyramid (docs/method.md): a token of layer l stands for its whole s x s region. Its
target is computed from the region's mean latent, and every cell of the region counts it in its
stream, so after d layers every cell holds exactly d tokens and decodes from their mean (SAQ) or sum
(RQ). Each added layer refines every cell it covers, and any prefix of layers gives a full latent grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spae_lab.pyramid import PyramidError, PyramidLayout

# One nearest-word search chunk, in float32 elements of the (rows x V) score matrix per torch thread:
# 4 MB a thread stays in cache between the product that writes it and the argmax that reads it
# (docs/performance.md).
SEARCH_CHUNK_ELEMENTS = 1 << 20


def nearest_codes(
    targets: torch.Tensor, codebook: torch.Tensor, half_sq_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Index of the nearest codebook row (L2) for every target row.

    targets (N, D), codebook (V, D) -> (N,) int64. argmin ||t - e||^2 = argmax (t.e - ||e||^2 / 2):
    one matrix product per chunk of rows, so the extra memory stays bounded whatever N is
    (SEARCH_CHUNK_ELEMENTS floats of scores per torch thread, 4 MB: small enough to be read back
    from cache by the argmax). The bias rides in the product as one more column
    ([t, 1] . [e, -||e||^2 / 2]), and the score buffer is reused across chunks: no extra pass over
    the scores and no fresh pages per chunk (see benchmarks/bench_search.py).
    """
    if half_sq_norms is None:
        half_sq_norms = 0.5 * codebook.pow(2).sum(dim=1)
    N, D = targets.shape
    V = codebook.shape[0]
    out = torch.empty(N, dtype=torch.long, device=targets.device)
    if N == 0:
        return out
    rows = min(N, max(1, SEARCH_CHUNK_ELEMENTS * torch.get_num_threads() // V))
    # exact ids: the search runs in the codebook's dtype even under a bf16 autocast region
    with torch.autocast(targets.device.type, enabled=False), torch.no_grad():
        augmented = torch.cat([codebook, -half_sq_norms.to(codebook.dtype)[:, None]], dim=1)  # (V, D+1)
        queries = torch.cat([targets.to(codebook.dtype), targets.new_ones(N, 1, dtype=codebook.dtype)], dim=1)
        scores = targets.new_empty(rows, V, dtype=codebook.dtype)  # reused: (rows, V)
        for start in range(0, N, rows):
            n = min(rows, N - start)
            chunk_scores = scores if n == rows else scores[:n]
            torch.mm(queries[start : start + n], augmented.t(), out=chunk_scores)  # (n, D+1) x (D+1, V)
            out[start : start + n] = argmax_rows(chunk_scores)
    return out


# Words per block of `argmax_rows`: a divisor of the codebook size.
_ARGMAX_BLOCKS = (64, 32, 16, 8)


def argmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """scores (..., V) -> (...,) int64: exactly `scores.argmax(-1)` (the first maximum; NaN counts
    as the maximum, as in torch.argmax), computed on CPUs in two passes that vectorise.

    torch's CPU argmax along the last dimension does not vectorise (docs/performance.md). Here the
    maxima of blocks of b words come from amax, the argmax then runs over the V / b block maxima (the
    first block holding the row's maximum) and over the b words of that block. Other devices, and a
    V that no block size divides, use argmax."""
    V = scores.shape[-1]
    b = next((b for b in _ARGMAX_BLOCKS if V % b == 0 and V > b), None)
    if scores.device.type != "cpu" or b is None:
        return scores.argmax(dim=-1)
    flat = scores.reshape(-1, V // b, b)  # (R, V/b, b)
    block = flat.amax(dim=-1).argmax(dim=-1)  # (R,) first block holding the row's maximum
    inside = flat.gather(1, block.view(-1, 1, 1).expand(-1, 1, b))  # (R, 1, b) that block's scores
    offset = inside.argmax(dim=-1).view(-1)  # (R,) first maximum inside that block
    return block.mul_(b).add_(offset).view(scores.shape[:-1])


def search_scores(targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """targets (..., D), table (V, D) -> (..., V) scores t.e - ||e||^2 / 2, with gradient.

    argmax over V is the nearest word, and -||t - e||^2 = 2 * score - ||t||^2: a softmax over
    2 * score / T is the softmax over negative squared distances / T (the row constant cancels),
    so the semantic loss can reuse the quantizer's product instead of computing distances again.
    """
    half_sq_norms = 0.5 * table.pow(2).sum(dim=1)
    flat = targets.reshape(-1, targets.shape[-1])
    return torch.addmm(half_sq_norms, flat, table.t(), beta=-1.0).view(*targets.shape[:-1], -1)


@dataclass
class QuantizerOutput:
    latents: torch.Tensor  # (depths, B, G*G, D): straight-through, filled latent grid per depth
    ids: list[torch.Tensor]  # per layer (B, n_l * n_l) codebook rows
    commitment_loss: torch.Tensor  # scalar: mean_l || z - sg(zhat_l) ||^2 at layer l's positions
    codebook_loss: torch.Tensor  # scalar: mean_l || sg(z) - zhat_l ||^2; trains the projection only
    relative_error: torch.Tensor  # (L,) ||z - zhat_l|| / ||z|| at layer l's positions: a health figure
    targets: list[torch.Tensor]  # per layer (B, n_l * n_l, D): the vectors that picked the tokens
    # per layer of the first `score_layers` (B, n_l * n_l, V): t.e - ||e||^2 / 2 (`search_scores`),
    # with gradient; the same product picked those layers' ids (computed once, shared with the
    # semantic loss). Empty unless forward(z, score_layers=k) asked for them.
    scores: list[torch.Tensor] = field(default_factory=list)


class PyramidQuantizer(nn.Module):
    """SAQ or RQ of a latent grid onto a frozen codebook (a buffer, never trained).

    With `projection_dim`, the search space is a trainable linear map of the frozen rows
    (V2L-Tokenizer's projector): the vocabulary and each word's LLM embedding stay fixed, only the
    shared map is learned: with the frozen geometry alone the search collapsed to a single word in
    trials (docs/recipe.md).

    Follows the contract of vector-quantize-pytorch: forward(z) gives quantized latents, indices and
    losses; `dequantize(ids, num_layers)` is the exact inverse at any prefix of layers.
    """

    def __init__(self, layout: PyramidLayout, codebook: torch.Tensor, mode: str = "saq",
                 projection_dim: int | None = None, normalize_rows: bool = False):
        super().__init__()
        if mode not in ("saq", "rq"):
            raise ValueError(f"mode must be 'saq' or 'rq', got {mode!r}")
        self.layout = layout
        self.mode = mode
        self.register_buffer("codebook", codebook.float().contiguous(), persistent=False)
        self.normalize_rows = normalize_rows
        self.projection = None
        if projection_dim:
            self.projection = nn.Linear(codebook.shape[1], projection_dim, bias=False)
            # orthonormal rows keep unit-RMS codebook rows at unit RMS after projection
            nn.init.orthogonal_(self.projection.weight)

    @property
    def dim(self) -> int:
        """Dimension of the search space (what the encoder must produce)."""
        return self.projection.out_features if self.projection is not None else self.codebook.shape[1]

    def table(self) -> torch.Tensor:
        """(V, dim) the codebook in search space: the frozen rows, projected if configured, and
        scaled to unit RMS per row if `normalize_rows` (then the search ranks by cosine)."""
        table = self.projection(self.codebook) if self.projection is not None else self.codebook
        return unit_rms(table) if self.normalize_rows else table

    def forward(self, z: torch.Tensor, score_layers: int = 0,
                head: torch.Tensor | None = None, head_layers: int = 0,
                head_gradient_scale: float = 1.0,
                forced_ids: dict[int, torch.Tensor] | None = None) -> QuantizerOutput:
        """z (B, G*G, D) -> QuantizerOutput; all layers are quantized, in float32 even under a
        bf16 autocast (running sums and SAQ targets lose words in bf16). For the first
        `score_layers` layers the search keeps its (B, n, V) scores, with gradient, in `scores`.
        With `head` (B, G*G, D), the first `head_layers` layers pick their tokens from it instead
        of z (a separate projection for the semantic layers); the decoder's gradient at depths up
        to `head_layers` goes to the head, scaled by `head_gradient_scale`, deeper ones to z.
        `forced_ids` {layer: (B, n*n) ids} imposes those layers' words; the later layers are picked
        after them, so the running mean corrects for them."""
        with torch.autocast(z.device.type, enabled=False):
            head = head.float() if head is not None else None
            return self._quantize(z.float(), score_layers, head, head_layers, head_gradient_scale,
                                  forced_ids or {})

    def _pick(self, target: torch.Tensor, table: torch.Tensor, half_sq_norms: torch.Tensor,
              keep_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """target (B, n, D) -> (ids (B, n), scores (B, n, V) with gradient, or None)."""
        B, n, D = target.shape
        if keep_scores:  # one product serves the search and the semantic loss
            scores = search_scores(target, table)
            return argmax_rows(scores.detach()), scores
        ids = nearest_codes(target.detach().reshape(-1, D), table.detach(), half_sq_norms)
        return ids.view(B, n), None

    def _straight_through(self, estimates: list[torch.Tensor], z: torch.Tensor,
                          head: torch.Tensor | None, head_layers: int,
                          head_gradient_scale: float) -> torch.Tensor:
        """(depths, B, G*G, D): the value is each depth's quantized latent grid; the decoder's
        gradient at each depth reaches the vectors that picked that depth's words (the head gets
        a scaled share, z all of it), and the projection through the chosen words. The head must see
        reconstruction's gradient, or layer 2 repeats layer 1's words (docs/recipe.md)."""
        latents = torch.stack(estimates)
        if z.requires_grad or (head is not None and head.requires_grad):
            through_head = head_gradient_scale * (head - head.detach()) if head is not None else None
            latents = latents + torch.stack([
                through_head if head is not None and depth <= head_layers else z - z.detach()
                for depth in range(1, len(estimates) + 1)])
        return latents

    def _quantize(self, z: torch.Tensor, score_layers: int, head: torch.Tensor | None, head_layers: int,
                  head_gradient_scale: float, forced_ids: dict[int, torch.Tensor]) -> QuantizerOutput:
        """The covering pyramid: a token of layer l is picked for its s x s region from the
        region's mean latent, and every cell of the region counts it. Regions nest (layer sizes
        are powers of two, coarse to fine), so the running sum is constant over each region of
        the next layer and every cell holds l tokens after l layers."""
        B, N, D = z.shape
        table = self.table()
        half_sq_norms = 0.5 * table.detach().pow(2).sum(1)
        sums = z.new_zeros(B, N, D)
        ids, commit, codebook_terms, rel_err, estimates, targets, scores = [], [], [], [], [], [], []
        for layer in range(self.layout.num_layers):
            source = head if head is not None and layer < head_layers else z
            region = self.layout.region(layer)  # grid, stride (and, for clips, frames, time stride)
            z_region = region_mean(source, *region)  # (B, n*n, D)
            prev_sum = region_mean(sums, *region)  # constant over each region
            if self.mode == "saq":  # SPAE: streaming average quantization
                target = (layer + 1) * z_region - prev_sum
            else:  # residual quantization
                target = z_region - prev_sum
            targets.append(target)  # with gradient, for the semantic loss
            # the semantic loss moves the vectors that pick words, not the words: the table's
            # projection is left to reconstruction (keeps the semantic pull off appearance)
            layer_ids, layer_scores = self._pick(target, table.detach(), half_sq_norms,
                                                 layer < score_layers)
            if forced_ids and layer in forced_ids:  # imposed words (the scores stay, for the loss)
                layer_ids = forced_ids[layer].to(layer_ids.device, layer_ids.dtype).view_as(layer_ids)
            if layer_scores is not None:
                scores.append(layer_scores)
            words = table[layer_ids].to(z.dtype)  # (B, n*n, D)
            region_estimate = prev_sum + words
            if self.mode == "saq":
                region_estimate = region_estimate / (layer + 1)
            sums = add_spread(sums, words, *region)
            estimates.append(sums / (layer + 1) if self.mode == "saq" else sums)
            ids.append(layer_ids)
            # commitment: pull the encoder's region mean towards its quantized estimate
            err = z_region - region_estimate.detach()
            commit.append(err.pow(2).mean())
            codebook_terms.append((z_region.detach() - region_estimate).pow(2).mean())
            rel_err.append(err.detach().norm() / z_region.detach().norm().clamp(min=1e-8))
        latents = self._straight_through(estimates, z, head, head_layers, head_gradient_scale)
        codebook_loss = torch.stack(codebook_terms).mean() if self.projection is not None else z.new_zeros(())
        return QuantizerOutput(latents, ids, torch.stack(commit).mean(), codebook_loss,
                               torch.stack(rel_err), targets, scores)

    def dequantize(self, ids: list[torch.Tensor], num_layers: int | None = None) -> torch.Tensor:
        """Exact inverse: token ids of the first `num_layers` layers -> (B, G*G, D) latent grid."""
        num_layers = num_layers or len(ids)
        if not 1 <= num_layers <= min(len(ids), self.layout.num_layers):
            raise PyramidError(f"num_layers must be in 1..{min(len(ids), self.layout.num_layers)}")
        B = ids[0].shape[0]
        table = self.table()
        sums = table.new_zeros(B, self.layout.num_positions, table.shape[1])
        for layer in range(num_layers):
            pos = self.layout.positions[layer].to(sums.device)
            if ids[layer].shape != (B, pos.numel()):
                raise PyramidError(
                    f"layer {layer + 1} needs ids of shape ({B}, {pos.numel()}), got {tuple(ids[layer].shape)}"
                )
            words = table[ids[layer].to(sums.device)]
            sums = add_spread(sums, words, *self.layout.region(layer))
        return sums / num_layers if self.mode == "saq" else sums


def region_mean(x: torch.Tensor, grid: int, stride: int, frames: int = 1, time_stride: int = 1) -> torch.Tensor:
    """(B, G*G, D) per-cell vectors -> (B, n*n, D) means over each stride x stride region,
    row-major over regions (n = G / stride). Clips: (B, F*G*G, D) -> (B, m*n*n, D) over regions
    of time_stride x stride x stride cells (m = F / time_stride), frame-major."""
    if frames > 1:
        B, _, D = x.shape
        n, m = grid // stride, frames // time_stride
        return x.view(B, m, time_stride, n, stride, n, stride, D).mean(dim=(2, 4, 6)).reshape(B, m * n * n, D)
    if stride == 1:
        return x
    B, _, D = x.shape
    n = grid // stride
    return x.view(B, n, stride, n, stride, D).mean(dim=(2, 4)).reshape(B, n * n, D)


def spread(x: torch.Tensor, grid: int, stride: int) -> torch.Tensor:
    """(B, n*n, D) one vector per region -> (B, G*G, D), every cell of a region reading its
    region's vector (the inverse layout of `region_mean`)."""
    if stride == 1:
        return x
    B, _, D = x.shape
    n = grid // stride
    return (x.view(B, n, 1, n, 1, D).expand(B, n, stride, n, stride, D).reshape(B, grid * grid, D))


def add_spread(sums: torch.Tensor, x: torch.Tensor, grid: int, stride: int, frames: int = 1,
               time_stride: int = 1) -> torch.Tensor:
    """sums (B, G*G, D) + spread(x (B, n*n, D)): the same values (and gradients), in one broadcast
    add instead of a copy of the spread grid and an add. Clips: sums (B, F*G*G, D), x (B, m*n*n,
    D) over regions of time_stride x stride x stride cells (see `region_mean`)."""
    if frames > 1:
        B, _, D = x.shape
        n, m = grid // stride, frames // time_stride
        grown = sums.view(B, m, time_stride, n, stride, n, stride, D) + x.view(B, m, 1, n, 1, n, 1, D)
        return grown.view(B, frames * grid * grid, D)
    if stride == 1:
        return sums + x
    B, _, D = x.shape
    n = grid // stride
    return (sums.view(B, n, stride, n, stride, D) + x.view(B, n, 1, n, 1, D)).view(B, grid * grid, D)


def unit_rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each vector (last dim) to root-mean-square 1, i.e. norm sqrt(dim)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def standardize(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre the codebook and scale it to unit RMS per dimension.

    LLM embedding rows share one strong mean direction (about half their squared norm in SmolLM2),
    so an unnormalised encoder must learn that offset first. A shift and a uniform scale change no
    nearest neighbour: searching (z - mean) / scale in the standardized table picks the same words
    as searching z in the raw one. Returns (standardized, mean (D,), scale ()).
    """
    mean = embeddings.mean(dim=0)
    centred = embeddings - mean
    scale = centred.pow(2).mean().sqrt()
    return centred / scale, mean, scale


__all__ = [
    "PyramidQuantizer",
    "add_spread",
    "argmax_rows",
    "QuantizerOutput",
    "nearest_codes",
    "region_mean",
    "search_scores",
    "spread",
    "standardize",
    "unit_rms",
]
