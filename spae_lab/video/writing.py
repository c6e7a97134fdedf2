"""Writing clips with a frozen LLM: in-context continuation of a clip's later frames.

The LLM sees example pairs from training clips: "Input:" the words of a clip whose later frames
are frozen (its last known frame repeated: all that is known of a clip from its first frames),
"Output:" the words of the whole clip. For each held-out clip it reads the same input and writes
the output's words layer by layer (SPAE's progressive in-context decoding, `spae_lab.generate`):
every token whose region covers a later frame, the clip-wide words of the top layers included
(how the clip moves); tokens of the first frames are given. The result is judged on the later
frames (PSNR against the true clip) beside the trivial references: copying the last frame
(pixels), the frozen clip's own words, and the no-LLM fill (each later token copies the token at
its place in the last known time slot of its layer).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from spae_lab.generate import tasks as T
from spae_lab.generate.decode import DecodeConfig, count_calls, make_writer, progressive_decode
from spae_lab.generate.run import decode_rows
from spae_lab.io import atomic_write_json, atomic_write_text
from spae_lab.metrics import psnr


@dataclass
class ContinuationConfig:
    known_frames: int = 4  # frames given (the first ones); the LLM writes the tokens of the rest
    examples: int = 6  # in-context example pairs (training clips)
    clips: int = 10  # held-out clips to continue
    layers: int = 0  # layers the LLM writes (0: all)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 0  # which training clips are the examples


@dataclass
class ContinuationResult:
    """What `run_continuation` returns (summary.json and results.csv hold the first two)."""

    summary: dict  # mean PSNR of the later frames per method, direction words written, calls
    records: pd.DataFrame  # one row per continued clip
    decoded: dict[str, torch.Tensor]  # (B, 3, T, S, S) clips by method ("LLM", "no-LLM fill", ...)
    truth: torch.Tensor  # (B, 3, T, S, S): the true clips
    written: list[T.Pyramid]  # per clip, the words the LLM wrote (codebook rows per layer)


def freeze_after(clips: torch.Tensor, known_frames: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> a copy whose frames from `known_frames` on repeat the last known one."""
    out = clips.clone()
    out[:, :, known_frames:] = clips[:, :, known_frames - 1 : known_frames]
    return out


def later_mask(layout, known_latent_frames: int) -> list[list[bool]]:
    """Per layer, per token: does its region reach a latent frame from `known_latent_frames` on?"""
    masks = []
    for layer in range(layout.num_layers):
        n, time_stride = layout.layer_sizes[layer], layout.region(layer)[3]
        masks.append([(i // (n * n) + 1) * time_stride > known_latent_frames
                      for i in range(layout.tokens_per_layer()[layer])])
    return masks


def last_slot_fill(pyramid: T.Pyramid, mask: list[list[bool]], layout) -> T.Pyramid:
    """The no-LLM fill: each masked token copies the token at its (row, column) in the last known
    time slot of its layer; a layer with no known slot keeps its words."""
    out = []
    for layer, (rows, layer_mask) in enumerate(zip(pyramid, mask, strict=True)):
        plane = layout.layer_sizes[layer] ** 2
        known = [i // plane for i, m in enumerate(layer_mask) if not m]
        last = max(known) if known else None
        out.append([rows[last * plane + i % plane] if m and last is not None else r
                    for i, (r, m) in enumerate(zip(rows, layer_mask, strict=True))])
    return out


def _rows(model, clips: torch.Tensor) -> list[T.Pyramid]:
    return T.pyramids_of(model.encode(clips).ids)


def run_continuation(model, train, heldout, backend, out: str | Path, config: ContinuationConfig | None = None,
                     progress: bool = True) -> ContinuationResult:
    """Continue `config.clips` held-out clips from their first frames (see the module docstring).
    `backend`: a spec or an LLMBackend; answers cached in out/llm_cache.sqlite; summary.json and results.csv
    written there. Returns a `ContinuationResult`."""
    from tqdm.auto import tqdm

    from spae_lab.llm import CachedBackend, load_backend

    cfg = config or ContinuationConfig()
    T_frames = model.frames
    if not 1 <= cfg.known_frames < T_frames or cfg.known_frames % model.clip_config.time_downsample:
        raise ValueError(f"known_frames must be in 1..{T_frames - 1} and a multiple of the temporal "
                         f"downsampling {model.clip_config.time_downsample}, got {cfg.known_frames}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # the LLM cache opens in it before anything is written
    inner = load_backend(backend) if isinstance(backend, str) else backend
    llm = inner if isinstance(inner, CachedBackend) else CachedBackend(inner, out / "llm_cache.sqlite")
    words, layout = model.codebook.words, model.layout
    layers = cfg.layers or model.num_layers
    mask = later_mask(layout, cfg.known_frames // model.clip_config.time_downsample)[:layers]
    example_ids = random.Random(cfg.seed).sample(range(len(train)), cfg.examples)
    ex_clips = torch.stack([train[i]["video"] for i in example_ids])
    examples = [T.pair_example(src[:layers], tgt[:layers], words) for src, tgt in
                zip(_rows(model, freeze_after(ex_clips, cfg.known_frames)), _rows(model, ex_clips), strict=True)]
    truth = torch.stack([heldout[i]["video"] for i in range(cfg.clips)])
    frozen = freeze_after(truth, cfg.known_frames)
    inputs = [p[:layers] for p in _rows(model, frozen)]
    queries = [T.pair_query(p, words, [[None if m else r for r, m in zip(lr, lm, strict=True)]
                                       for lr, lm in zip(p, mask, strict=True)]) for p in inputs]
    writer = make_writer(llm, words, cfg.decode, model.codebook.fingerprint())
    bar = tqdm(total=count_calls(queries, cfg.decode.tokens_per_call, layers), desc="continue clips",
               disable=not progress)
    try:
        written = progressive_decode(writer, examples, queries, layout.tokens_per_layer(), layers,
                                     lambda: bar.update(1))
    finally:
        bar.close()
        if llm is not inner:
            llm.cache.close()
    fills = [last_slot_fill(p, mask, layout) for p in inputs]
    decoded = {"LLM": decode_rows(model, written, layers), "no-LLM fill": decode_rows(model, fills, layers),
               "frozen clip's words": decode_rows(model, inputs, layers),
               "copy the last frame (pixels)": frozen,
               "true clip's words": decode_rows(model, [p[:layers] for p in _rows(model, truth)], layers)}
    later = slice(cfg.known_frames, T_frames)
    records = []
    for k in range(cfg.clips):
        scene = heldout.scene(k)
        row = {"clip": k, "caption": scene.caption, "direction": scene.direction,
               "words_written": " ".join(words[r] for layer in written[k][:2] for r in layer)}
        for name, clips in decoded.items():
            row[f"psnr_later: {name}"] = float(psnr(clips[k : k + 1, :, later], truth[k : k + 1, :, later]))
        row["direction word written"] = scene.direction in row["words_written"].split()
        records.append(row)
    frame = pd.DataFrame(records)
    summary = {"clips": cfg.clips, "known_frames": cfg.known_frames, "layers": layers,
               **{c: round(float(frame[c].mean()), 3) for c in frame.columns if c.startswith("psnr_later")},
               "direction_word_written": float(frame["direction word written"].mean()),
               "every_word_in_codebook": all(0 <= r < len(words) for p in written for lr in p for r in lr),
               "calls_computed": writer.calls, "config": asdict(cfg)}
    atomic_write_json(out / "summary.json", summary, within=out)
    atomic_write_text(out / "results.csv", frame.to_csv(index=False), within=out)
    return ContinuationResult(summary, frame, decoded, truth, written)
