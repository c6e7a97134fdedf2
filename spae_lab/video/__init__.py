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

from spae_lab import lazy_exports

# name -> the module that defines it, by module
_EXPORTS = {name: f"spae_lab.video.{module}" for module, names in {
    "data": ("DIRECTIONS", "ClipScene", "MovingDigits", "MovingScenes", "render_moving_scene"),
    "readers": ("ClipError", "ClipFolderDataset", "load_clip", "save_clip"),
    "config": ("ClipExperimentConfig", "create_clip_config", "list_clip_presets"),
    "model": ("ClipSPAE",),
    "teacher": ("load_clip_teacher",),
    "semantic": ("ClipGuide",),
    "train": ("train_clips",),
    "evaluate": ("evaluate_clips",),
}.items() for name in names}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
