"""SPAE for short clips: a clip becomes a pyramid of a frozen LLM's words over (time, rows, columns).

    from spae_lab import MovingScenes, load_tokenizer
    tokenizer = load_tokenizer("moving-scenes")            # a clip tokenizer, loaded as an image one
    clip = MovingScenes(1, split="heldout")[0]["video"]     # (3, T, H, W) in [0, 1]
    pyramid = tokenizer.encode(clip[None])                 # layer 1: what it shows; layer 2: how it moves
    clips = tokenizer.decode(pyramid, num_layers=3)        # any prefix of layers decodes

Modules: `data` (moving scenes and digits, exact captions), `readers` (GIF, MP4, folders of frames),
`config` (the `clip` section and the clip presets), `model` (`ClipSPAE`), `teacher` (the clip teacher
that knows motion), `semantic` (one teacher reading per guided layer), `train`, `evaluate`,
`reading` (few-shot and VQA on clips by a frozen LLM), `writing` (in-context continuation),
`figures` (animated views), `cli` (the command line's clip paths).

Names are imported on first use: `import spae_lab.video` loads no torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DIRECTIONS": "spae_lab.video.data",
    "ClipScene": "spae_lab.video.data",
    "MovingDigits": "spae_lab.video.data",
    "MovingScenes": "spae_lab.video.data",
    "render_moving_scene": "spae_lab.video.data",
    "ClipError": "spae_lab.video.readers",
    "ClipFolderDataset": "spae_lab.video.readers",
    "load_clip": "spae_lab.video.readers",
    "save_clip": "spae_lab.video.readers",
    "ClipExperimentConfig": "spae_lab.video.config",
    "create_clip_config": "spae_lab.video.config",
    "list_clip_presets": "spae_lab.video.config",
    "ClipSPAE": "spae_lab.video.model",
    "load_clip_teacher": "spae_lab.video.teacher",
    "ClipGuide": "spae_lab.video.semantic",
    "train_clips": "spae_lab.video.train",
    "evaluate_clips": "spae_lab.video.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spae_lab.video' has no attribute {name!r}")
