"""The SPAE autoencoder: a VQGAN/MAGVIT-style CNN around the token pyramid.

    images (B, 3, S, S) in [0, 1]
      -> Encoder -> (B, C, G, G) -> 1x1 projection into codebook space -> (B, G*G, D)
      -> PyramidQuantizer (frozen LLM codebook, SAQ or RQ) -> TokenPyramid
      -> latent grid at any depth -> 1x1 projection back -> Decoder -> images

`encode` and `decode` are the calls most people need; `forward` is the training path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from spae_lab.codebook import Codebook
from spae_lab.config import ModelConfig
from spae_lab.errors import SpaeError
from spae_lab.pyramid import PyramidError, PyramidLayout, TokenPyramid
from spae_lab.quantizer import PyramidQuantizer, QuantizerOutput, standardize, unit_rms


class ShapeError(SpaeError, ValueError):
    """Images that do not fit the model: shape, dtype, values outside [0, 1], NaN or inf."""


# How far outside [0, 1] a pixel may lie and still be taken (resampling overshoots a little).
RANGE_TOLERANCE = 1e-3


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv, twice, plus a (projected) skip connection."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    """(B, 3, S, S) -> (B, latent_channels, S / 2**(stages-1), same)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mults]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        channels = widths[0]
        for stage, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers.append(ResBlock(channels, width))
                channels = width
            if stage < len(widths) - 1:
                layers.append(nn.Conv2d(channels, channels, 4, stride=2, padding=1))  # downsample
        layers += [ResBlock(channels, channels), _norm(channels), nn.SiLU()]
        layers.append(nn.Conv2d(channels, config.latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent_channels, G, G) -> (B, 3, S, S), mirroring the encoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mults][::-1]
        channels = widths[0]
        layers: list[nn.Module] = [
            nn.Conv2d(config.latent_channels, channels, 3, padding=1),
            ResBlock(channels, channels),
        ]
        for stage, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers.append(ResBlock(channels, width))
                channels = width
            if stage < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(channels, channels, 3, padding=1)]
        layers += [_norm(channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class SPAEOutput:
    reconstructions: torch.Tensor  # (B, 3, S, S) in model space [-1, 1] (not clamped)
    depths: torch.Tensor  # (B,) number of layers each image was decoded from
    quant: QuantizerOutput


class SPAE(nn.Module):
    """Semantic Pyramid AutoEncoder over a frozen LLM codebook."""

    def __init__(self, config: ModelConfig, codebook: Codebook):
        super().__init__()
        self.config = config
        self.codebook = codebook
        self.layout = PyramidLayout(config.latent_grid, tuple(config.layer_sizes))
        table = codebook.embeddings.float()
        if config.standardize_codebook:
            table, _, _ = standardize(table)
        self.quantizer = PyramidQuantizer(self.layout, table, config.quantizer,
                                          config.codebook_projection_dim, config.normalize)
        search_dim = self.quantizer.dim
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.project_to_codebook:
            self.to_codebook = nn.Conv2d(config.latent_channels, search_dim, 1)
            self.from_codebook = nn.Conv2d(search_dim, config.latent_channels, 1)
        elif config.latent_channels != search_dim:
            raise ValueError(
                f"without a projection, latent_channels ({config.latent_channels}) must equal the "
                f"codebook search dimension ({search_dim})"
            )
        else:
            self.to_codebook = self.from_codebook = nn.Identity()
        # The semantic layers pick their words from their own projection of the encoder features,
        # which leaves the shared latents to reconstruction: pulling those towards the teacher's
        # words costs PSNR at every depth (docs/recipe.md).
        self.semantic_head = None
        # model.top_word "teacher": the guide (a `semantic.SemanticGuide`, not a submodule: its
        # weights are the teacher's, not this checkpoint's) that picks layer 1's word at encoding;
        # `checkpoint.create_tokenizer` binds it
        self.top_word_guide = None
        if config.semantic_head_layers and config.semantic_head_mlp:
            # per-cell MLP: in the covering pyramid layer 1 reads the mean of its outputs over the
            # grid, so "is there a triangle anywhere" needs a non-linearity before the mean
            self.semantic_head = nn.Sequential(
                nn.Conv2d(config.latent_channels, config.latent_channels, 1), nn.SiLU(),
                nn.Conv2d(config.latent_channels, search_dim, 1))
        elif config.semantic_head_layers:
            self.semantic_head = nn.Conv2d(config.latent_channels, search_dim, 1)

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    def check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (s, s):
            raise ShapeError(
                f"this tokenizer takes images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}; "
                f"resize them (spae_lab.data.load_image does) or use a checkpoint for that size"
            )

    def check_values(self, images: torch.Tensor) -> torch.Tensor:
        """The public calls' images (`encode`, `reconstruct`): a float tensor (B, 3, S, S), B >= 1,
        finite values in [0, 1] (within RANGE_TOLERANCE). float64/float16/bfloat16 are cast to the
        model's dtype and device; uint8 and other types are a ShapeError saying what to do (uint8:
        divide by 255). Returns the images ready for the encoder."""
        if not isinstance(images, torch.Tensor):
            raise ShapeError(f"images must be a torch.Tensor (B, 3, S, S) in [0, 1], got {type(images).__name__}"
                             " (a numpy array: torch.from_numpy(array))")
        if images.dtype == torch.uint8:
            raise ShapeError("images are uint8 (0..255): pass images.float() / 255 (values in [0, 1])")
        if not images.dtype.is_floating_point:
            raise ShapeError(f"images must be floating point in [0, 1], got {images.dtype}")
        self.check_images(images)
        if images.shape[0] == 0:
            raise ShapeError("an empty batch: pass at least one image (B >= 1)")
        weight = next(self.parameters())
        images = images.to(device=weight.device, dtype=weight.dtype)
        if not torch.isfinite(images).all():
            raise ShapeError("images hold NaN or inf values")
        low, high = images.aminmax()
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ShapeError(f"image values must lie in [0, 1], got {low.item():.4g}..{high.item():.4g} "
                             f"(from [-1, 1]: (x + 1) / 2; from 0..255: x / 255)")
        return images

    def _to_search_space(self, projection: nn.Module, features: torch.Tensor) -> torch.Tensor:
        z = rearrange(projection(features), "b d h w -> b (h w) d")
        if self.config.normalize:
            # Latents and words on one sphere (unit RMS): nearest = most similar direction. An
            # unnormalised latent drifts away from the codebook's scale, and a latent rescaled to a
            # learnable codebook's scale lets both shrink together (docs/recipe.md).
            z = unit_rms(z)
        return z

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> encoder latents in codebook space (B, G*G, D)."""
        self.check_images(images)
        return self._to_search_space(self.to_codebook, self.encoder(images * 2 - 1))

    def quantize(self, images: torch.Tensor, score_layers: int = 0) -> tuple[torch.Tensor, QuantizerOutput]:
        """images -> (latents z (B, G*G, D), QuantizerOutput of every layer)."""
        self.check_images(images)
        features = self.encoder(images * 2 - 1)
        z = self._to_search_space(self.to_codebook, features)
        head = None
        if self.semantic_head is not None:
            head = self._to_search_space(self.semantic_head, features)
        forced = None
        if self.top_word_guide is not None:  # layer 1: the teacher's most relevant word
            self.top_word_guide.teacher.to(images.device)
            forced = {0: self.top_word_guide.top_words(images)[:, :1]}
        return z, self.quantizer(z, score_layers, head, self.config.semantic_head_layers,
                                 self.config.head_gradient_scale, forced)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, G*G, D) codebook-space latents -> (B, 3, S, S) in [-1, 1] (unclamped)."""
        grid = self.layout.grid
        x = rearrange(latents, "b (h w) d -> b d h w", h=grid, w=grid)
        return self.decoder(self.from_codebook(x))

    def forward(self, images: torch.Tensor, depths: torch.Tensor | None = None,
                score_layers: int = 0) -> SPAEOutput:
        """Training path: quantize every layer, decode image b from `depths[b]` layers (default:
        all). Gradients reach the encoder through the straight-through estimator. The search
        scores of the first `score_layers` layers come back in `quant.scores` (semantic loss)."""
        B = images.shape[0]
        _, quant = self.quantize(images, score_layers)
        if depths is None:
            depths = torch.full((B,), self.num_layers, dtype=torch.long, device=images.device)
        latents = quant.latents[depths - 1, torch.arange(B, device=images.device)]  # (B, N, D)
        return SPAEOutput(self.decode_latents(latents), depths, quant)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> TokenPyramid:
        """images (B, 3, S, S) in [0, 1] -> TokenPyramid (ids, positions, words per layer).
        Images are checked first (`check_values`): a ShapeError says what does not fit."""
        _, quant = self.quantize(self.check_values(images))
        return TokenPyramid([i.cpu() for i in quant.ids], self.layout, self.codebook)

    @torch.no_grad()
    def decode(self, pyramid: TokenPyramid, num_layers: int | None = None) -> torch.Tensor:
        """The first `num_layers` layers of `pyramid` (None: all it has; 0 is an error) -> images
        (B, 3, S, S) in [0, 1]."""
        if not isinstance(pyramid, TokenPyramid):
            raise PyramidError(f"decode takes a TokenPyramid (encode's output or TokenPyramid.from_text), "
                               f"got {type(pyramid).__name__}")
        num_layers = pyramid.check_layers(num_layers)
        if pyramid.layout != self.layout:
            raise PyramidError(f"these tokens sit on another pyramid ({pyramid.layout.layer_sizes} on a "
                               f"{pyramid.layout.grid}x{pyramid.layout.grid} grid) than this tokenizer's "
                               f"({self.layout.layer_sizes} on {self.layout.grid}x{self.layout.grid})")
        if pyramid.codebook is not self.codebook and (
                pyramid.codebook.fingerprint() != self.codebook.fingerprint()):
            raise PyramidError(f"these tokens index another codebook ({pyramid.codebook.source}, "
                               f"{len(pyramid.codebook)} words) than this tokenizer's "
                               f"({self.codebook.source}, {len(self.codebook)} words)")
        device = next(self.parameters()).device
        latents = self.quantizer.dequantize([i.to(device) for i in pyramid.ids], num_layers)
        return ((self.decode_latents(latents) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def decode_every_depth(self, pyramid: TokenPyramid) -> torch.Tensor:
        """Decodes from the first 1, 2, ..., L layers: (L, B, 3, S, S) in [0, 1], the rows of a
        reconstruction grid and of a PSNR-per-depth table."""
        return torch.stack([self.decode(pyramid, d) for d in range(1, len(pyramid.ids) + 1)])

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, num_layers: int | None = None) -> torch.Tensor:
        """decode(encode(images), num_layers)."""
        return self.decode(self.encode(images), num_layers)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to save: everything but the frozen codebook (which is rebuilt from its source)."""
        return {k: v for k, v in self.state_dict().items() if k != "quantizer.codebook"}
