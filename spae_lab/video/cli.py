"""The command line's clip paths: `spae-lab encode` and `decode` with a clip tokenizer, and the
clip trainer behind `spae-lab train --preset video-small`. The parser stays in `spae_lab.cli`;
these functions take its parsed arguments."""

from __future__ import annotations

from pathlib import Path

from spae_lab.config import ConfigError


def is_clip_tokenizer(model) -> bool:
    return hasattr(model, "clip_config")


def encode_clips(model, args) -> int:
    """Print clips (files or folders of frames given, else held-out moving scenes) as words."""
    import torch

    from spae_lab.video.data import MovingScenes
    from spae_lab.video.readers import load_clip

    size, frames = model.config.image_size, model.frames
    if args.images:
        names = [str(p) for p in args.images]
        clips = torch.stack([load_clip(p, size, frames) for p in args.images])
    else:
        scenes = MovingScenes(args.count, "heldout", model.experiment_config.train.seed, size, frames)
        names = [f"held-out clip {i}: {scenes.scene(i).caption}" for i in range(args.count)]
        clips = torch.stack([scenes[i]["video"] for i in range(args.count)])
    pyramid = model.encode(clips)
    for i, name in enumerate(names):
        print(f"== {name}")
        print(pyramid.to_text(args.layers, image=i) if args.text else pyramid.describe(args.layers, image=i))
    return 0


def decode_clips(model, args) -> int:
    """Words -> a clip file: .gif or .mp4 (animated), or .png (the frames side by side)."""
    from spae_lab.pyramid import TokenPyramid
    from spae_lab.video.readers import save_clip

    suffix = Path(args.out).suffix.lower()
    if suffix not in (".gif", ".mp4", ".png"):
        raise ConfigError(f"--out for a clip tokenizer: a .gif, .mp4 or .png file, got {args.out!r}")
    pyramid = TokenPyramid.from_text(args.text, model.layout, model.codebook)
    clip = model.decode(pyramid)[0]
    if suffix == ".png":
        from spae_lab.views.figures import save_image

        path = save_image(clip.transpose(0, 1).permute(1, 2, 0, 3).reshape(3, clip.shape[2], -1), args.out)
    else:
        path = save_clip(clip, args.out, scale=4)
    print(f"decoded {pyramid.num_layers} layers to {path} ({model.frames} frames)")
    return 0
