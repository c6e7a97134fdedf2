"""The clip tokenizer: a 2D+1D factorised CNN around a token pyramid over (time, rows, columns).

    clips (B, 3, T, S, S) in [0, 1]
      -> per frame: the image Encoder (2D) -> (B, C, T, G, G)
      -> temporal residual blocks (kernel 3 over time) and a strided temporal downsampling
      -> 1x1 projection into codebook space -> (B, T' * G * G, D)
      -> PyramidQuantizer over a clip layout (SAQ, frozen LLM codebook) -> TokenPyramid
      -> latents at any depth -> 1x1 projection back -> temporal upsampling and blocks
      -> per frame: the image Decoder (2D) -> clips

The pyramid covers the clip: layer 1 holds one word for the whole clip, finer layers hold t x n x n
words over (time, rows, columns) (`PyramidLayout(frames=T', time_sizes=...)`), and SAQ runs over
those regions as it does over an image's. The 2D halves are the image tokenizer's own `Encoder`
and `Decoder` (`spae_lab.model`), run on every frame; time is mixed at the latent resolution
(factorised as in MAGVIT-style 2D+1D video tokenizers: the smallest network that moves on a CPU).
`ClipSPAE` keeps `SPAE`'s API: `encode(clips) -> TokenPyramid`, `decode(pyramid, num_layers)`.
"""

from __future__ import annotations

import copy

import torch
from einops import rearrange
from torch import nn

from spae_lab.codebook import Codebook, load_codebook
from spae_lab.config import ModelConfig, apply_overrides
from spae_lab.model import SPAE, ShapeError, _norm
from spae_lab.pyramid import PyramidLayout
from spae_lab.quantizer import QuantizerOutput, unit_rms
from spae_lab.video.config import ClipConfig, ClipExperimentConfig, validate_clip


class TemporalBlock(nn.Module):
    """GroupNorm -> swish -> conv over time (kernel 3), twice, plus the skip: (B, C, T, H, W).
    The last convolution starts at zero, so a new block is the identity: a clip tokenizer started
    from an image tokenizer's weights begins as that tokenizer run frame by frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)),
            _norm(channels), nn.SiLU(), nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _temporal_stack(channels: int, blocks: int, factor: int, down: bool) -> nn.Sequential:
    """`blocks` temporal blocks around a change of frame rate by `factor` (a strided convolution
    over time down, a nearest repeat and a convolution up)."""
    layers: list[nn.Module] = [TemporalBlock(channels) for _ in range(blocks)]
    if factor > 1 and down:
        layers.append(nn.Conv3d(channels, channels, (factor, 1, 1), stride=(factor, 1, 1)))
    elif factor > 1:
        layers = [nn.Upsample(scale_factor=(factor, 1, 1), mode="nearest"),
                  nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)), *layers]
    return nn.Sequential(*layers)


def per_frame(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 2D network on every frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    B = x.shape[0]
    y = net(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", b=B)


class ClipSPAE(SPAE):
    """SPAE for short clips: the image tokenizer's 2D halves on each frame, time mixed between
    them, a covering pyramid over (time, rows, columns). Clips are (B, 3, T, S, S) in [0, 1]."""

    def __init__(self, config: ModelConfig, clip: ClipConfig, codebook: Codebook):
        super().__init__(config, codebook)
        self.clip_config = clip
        self.layout = PyramidLayout(config.latent_grid, tuple(config.layer_sizes), frames=clip.latent_frames,
                                    time_sizes=tuple(clip.layer_frames))
        self.quantizer.layout = self.layout
        width = config.latent_channels
        self.encoder_time = _temporal_stack(width, clip.temporal_blocks, clip.time_downsample, down=True)
        self.decoder_time = _temporal_stack(width, clip.temporal_blocks, clip.time_downsample, down=False)

    @property
    def frames(self) -> int:
        return self.clip_config.frames

    def check_images(self, clips: torch.Tensor) -> None:
        s, t = self.config.image_size, self.frames
        if clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[2:] != (t, s, s):
            raise ShapeError(f"this clip tokenizer takes clips of shape (B, 3, {t}, {s}, {s}) in [0, 1], got "
                             f"{tuple(clips.shape)}; `spae_lab.video.load_clip` reads a file to that shape")

    def _to_search_space(self, projection: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """(B, C, T', G, G) features -> (B, T' * G * G, D) vectors in search space, frame-major."""
        z = rearrange(per_frame(projection, features), "b d t h w -> b (t h w) d")
        return unit_rms(z) if self.config.normalize else z

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, 3, T, S, S) in [0, 1] -> encoder features (B, C, T', G, G)."""
        return self.encoder_time(per_frame(self.encoder, clips * 2 - 1))

    def encode_latents(self, clips: torch.Tensor) -> torch.Tensor:
        self.check_images(clips)
        return self._to_search_space(self.to_codebook, self.features(clips))

    def quantize(self, clips: torch.Tensor, score_layers: int = 0) -> tuple[torch.Tensor, QuantizerOutput]:
        """clips -> (latents z (B, T'*G*G, D), QuantizerOutput of every layer). With a bound
        `top_word_guide` (model.top_word "teacher"), the teacher's words fill the head layers."""
        self.check_images(clips)
        features = self.features(clips)
        z = self._to_search_space(self.to_codebook, features)
        head = self._to_search_space(self.semantic_head, features) if self.semantic_head is not None else None
        forced = None
        if self.top_word_guide is not None:
            top = self.top_word_guide.top_words(clips)
            forced = {layer: ids[:, :1] for layer, ids in enumerate(top[: self.config.semantic_head_layers])}
        return z, self.quantizer(z, score_layers, head, self.config.semantic_head_layers,
                                 self.config.head_gradient_scale, forced)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T'*G*G, D) codebook-space latents -> (B, 3, T, S, S) in [-1, 1] (unclamped)."""
        g, t = self.layout.grid, self.layout.frames
        x = rearrange(latents, "b (t h w) d -> b d t h w", t=t, h=g, w=g)
        return per_frame(self.decoder, self.decoder_time(per_frame(self.from_codebook, x)))


def clip_layout_summary(model: ClipSPAE) -> str:
    """'8 frames of 32 px; latent 4 x 8 x 8; layers 1x1x1, 1x1x1, ... (1, 2, 10, 74, 330 words)'."""
    layout = model.layout
    shapes = ", ".join(layout.layer_shape(layer) for layer in range(layout.num_layers))
    counts = ", ".join(str(c) for c in layout.cumulative_tokens())
    return (f"{model.frames} frames of {model.config.image_size} px; latent {layout.frames} x {layout.grid} x "
            f"{layout.grid}; layers {shapes} ({counts} words)")


def create_clip_tokenizer(cfg: ClipExperimentConfig) -> ClipSPAE:
    """A freshly initialised clip tokenizer for `cfg` (what `checkpoint.create_tokenizer` gives for
    a clip config); `model.top_word` "teacher" binds the clip teacher that then picks the words of
    the head layers at encoding."""
    model = ClipSPAE(cfg.model, cfg.clip, load_codebook(cfg.codebook))
    model.experiment_config = cfg
    if cfg.model.top_word == "teacher":
        from spae_lab.video.semantic import ClipGuide

        model.top_word_guide = ClipGuide.from_config(cfg, model.codebook)
    return model


def with_inference_settings(model: ClipSPAE, overrides: dict) -> ClipSPAE:
    """The same weights in a clip tokenizer that reads clips with `overrides` applied to its config
    (e.g. `model.top_word = "teacher"`: the clip teacher picks the head layers' words at encoding,
    as the shipped image tokenizer `cifar10` takes layer 1's word from its teacher)."""
    cfg = copy.deepcopy(model.experiment_config)
    apply_overrides(cfg, overrides)
    validate_clip(cfg)
    reader = create_clip_tokenizer(cfg)
    reader.load_state_dict(model.state_dict())
    return reader.train(model.training)
