"""Quantizers over a frozen codebook: SAQ and RQ on the token pyramid, with the exact inverse.

Quantizers, at a position with latent z and c tokens already chosen there (running sum S):
- SAQ, streaming average quantization (SPAE, Yu et al. 2023; the paper gives no formula, this
  is our reading of it): k = argmin_k || (c+1) z - S - e_k ||^2, and the position's
  latent estimate is the running *mean* zhat = (S + e_k) / (c + 1). Every target stays at
  codebook scale, so deep tokens remain real words.
- RQ, residual quantization: k = argmin_k || z - S - e_k ||^2, estimate zhat = S + e_k.

Two readings of what a coarse token stands for (the README's 'How it works'):
- covering (`PyramidLayout(cover=True)`, the default of every preset): a token of layer l stands for
  its whole s x s region. Its target is computed from the region's mean latent, and every cell of
  the region counts it in its stream, so after d layers every cell holds exactly d tokens and
  decodes from their mean (SAQ) or sum (RQ). Each added layer refines every cell it covers.
- cell (`cover=False`, checkpoints from before): a token stands for the one centred cell it sits
  on. Decoding a prefix of d layers: positions already selected read their zhat; every other cell
  reads the zhat of the position that the finest layer <= d selected in its cell (nearest-neighbour
  fill). Layers of different sizes never share a cell, so SAQ never averages across the top
  layers and layer 1 stops counting once layer 2 is decoded (measured: layer 2 added 0.06 dB).
Either way any prefix of layers gives a full latent grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spae_lab.pyramid import PyramidError, PyramidLayout

# One nearest-word search chunk, in float32 elements of the (rows x V) score matrix per torch thread:
# 4 MB a thread stays in cache between the product that writes it and the argmax that reads it.
# 2,048 targets x 8,192 words on 1 thread: 29 ms in 128-row chunks, 83 ms in one 64 MB chunk.
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

    torch's CPU argmax along the last dimension does not vectorise (1.4 ms for 128 x 8,192 scores,
    12x an amax of the same). Here the maxima of blocks of b words come from amax, the argmax then
    runs over the V / b block maxima (the first block holding the row's maximum) and over the b
    words of that block: 0.3 ms. Other devices, and a V that no block size divides, use argmax."""
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
    shared map is learned. Searching 8,192 words in 576 dimensions with frozen geometry collapsed
    to a single word in trials; a 64-d learned view of the same words did not, and costs 9x less.

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

    def _estimate(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Latent estimate from running sums: the mean (SAQ) or the sum (RQ)."""
        if self.mode == "rq":
            return sums
        return sums / counts.clamp(min=1).to(sums.dtype)[:, None]

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
        `forced_ids` {layer: (B, n*n) ids} imposes those layers' words (covering pyramid only); the
        later layers are picked after them, so the running mean corrects for them."""
        with torch.autocast(z.device.type, enabled=False):
            head = head.float() if head is not None else None
            if forced_ids and not self.layout.cover:
                raise ValueError("forced_ids needs the covering pyramid (model.coarse_tokens 'cover')")
            if self.layout.cover:
                return self._quantize_cover(z.float(), score_layers, head, head_layers,
                                            head_gradient_scale, forced_ids or {})
            return self._quantize(z.float(), score_layers, head, head_layers, head_gradient_scale)

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
        a scaled share, z all of it), and the projection through the chosen words. Sending the
        head's depths' gradient to z left the head blind to reconstruction, and layer 2 repeated
        layer 1's words (no PSNR gained from 1 to 2)."""
        latents = torch.stack(estimates)
        if z.requires_grad or (head is not None and head.requires_grad):
            through_head = head_gradient_scale * (head - head.detach()) if head is not None else None
            latents = latents + torch.stack([
                through_head if head is not None and depth <= head_layers else z - z.detach()
                for depth in range(1, len(estimates) + 1)])
        return latents

    def _quantize_cover(self, z: torch.Tensor, score_layers: int = 0,
                        head: torch.Tensor | None = None, head_layers: int = 0,
                        head_gradient_scale: float = 1.0,
                        forced_ids: dict[int, torch.Tensor] | None = None) -> QuantizerOutput:
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

    def _quantize(self, z: torch.Tensor, score_layers: int = 0,
                  head: torch.Tensor | None = None, head_layers: int = 0,
                  head_gradient_scale: float = 1.0) -> QuantizerOutput:
        B, N, D = z.shape
        table = self.table()
        half_sq_norms = 0.5 * table.detach().pow(2).sum(1)
        sums = z.new_zeros(B, N, D)
        ids, commit, codebook_terms, rel_err, estimates, targets, scores = [], [], [], [], [], [], []
        for layer, pos in enumerate(self.layout.positions):
            pos = pos.to(z.device)
            prior = self.layout.prior_counts[layer].to(z.device)
            source = head if head is not None and layer < head_layers else z
            z_sel, prev_sum = source[:, pos], sums[:, pos]
            if self.mode == "saq":  # SPAE: streaming average quantization
                target = (prior + 1).to(z.dtype)[None, :, None] * z_sel - prev_sum
            else:  # residual quantization
                target = z_sel - prev_sum
            targets.append(target)  # with gradient, for the semantic loss
            layer_ids, layer_scores = self._pick(target, table, half_sq_norms, layer < score_layers)
            if layer_scores is not None:
                scores.append(layer_scores)
            sums = sums.index_add(1, pos, table[layer_ids].to(z.dtype))
            estimate = self._estimate(sums, self.layout.counts_after[layer].to(z.device))
            estimates.append(estimate)
            ids.append(layer_ids)
            # commitment: pull the encoder towards its own quantized estimate (codebook frozen)
            err = z_sel - estimate[:, pos].detach()
            commit.append(err.pow(2).mean())
            codebook_terms.append((z_sel.detach() - estimate[:, pos]).pow(2).mean())
            rel_err.append(err.detach().norm() / z_sel.detach().norm().clamp(min=1e-8))
        filled = [self._fill(est, depth) for depth, est in enumerate(estimates, start=1)]
        latents = self._straight_through(filled, z, head, head_layers, head_gradient_scale)
        codebook_loss = torch.stack(codebook_terms).mean() if self.projection is not None else z.new_zeros(())
        return QuantizerOutput(latents, ids, torch.stack(commit).mean(), codebook_loss,
                               torch.stack(rel_err), targets, scores)

    def _fill(self, estimate: torch.Tensor, depth: int) -> torch.Tensor:
        """(B, G*G, D) estimate after `depth` layers -> every cell reads its representative."""
        return estimate[:, self.layout.fill_index[depth - 1].to(estimate.device)]

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
            if self.layout.cover:
                sums = add_spread(sums, words, *self.layout.region(layer))
            else:
                sums = sums.index_add(1, pos, words)
        if self.layout.cover:
            return sums / num_layers if self.mode == "saq" else sums
        counts = self.layout.counts_after[num_layers - 1].to(sums.device)
        return self._fill(self._estimate(sums, counts), num_layers)


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
