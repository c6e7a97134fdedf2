"""Commands about tokenizers themselves: train, encode, decode, codebook, presets, pretrained,
train-teacher, ablate."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from spae_lab.cli import flags
from spae_lab.cli.flags import integer
from spae_lab.config import CodebookConfig, ConfigError, create_config, list_presets
from spae_lab.video.config import create_clip_config, list_clip_presets


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def parse_sets(pairs: list[str]) -> dict:
    """["key=value", ...] -> {key: YAML value}; ConfigError for anything else."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError as e:
            raise ConfigError(f"{key.strip()}: cannot parse {value!r} ({_first_line(e)})") from None
    return out


def read_yaml_mapping(path: str, error: type[Exception] = ConfigError) -> dict:
    """A YAML file holding a mapping (empty: {}); `error` for a missing, unreadable or other file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise error(f"cannot read {path}: {_first_line(e)}") from None
    if not isinstance(loaded, dict):
        raise error(f"{path} must hold a mapping of keys")
    return loaded


def config_from_args(args):
    """Preset, then a YAML file, then --set pairs, then the shortcut flags."""
    overrides: dict = {}
    if args.config:
        overrides.update(read_yaml_mapping(args.config))
    overrides.update(parse_sets(args.set or []))
    for flag, key in flags.CONFIG_SHORTCUTS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    if args.preset in list_clip_presets():  # clips (spae_lab.video)
        return create_clip_config(args.preset, overrides)
    return create_config(args.preset, overrides)


def cmd_train(args) -> int:
    cfg = config_from_args(args)  # a bad config fails before torch is imported
    from spae_lab.training.loop import train

    out = Path(args.out or f"runs/{cfg.preset}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a run folder")
    if hasattr(cfg, "clip"):  # a clip preset: the clip trainer
        from spae_lab.video.train import train_clips as train
    result = train(cfg, out, resume=args.resume, force=args.force, progress=not args.quiet)
    if result.rank == 0:  # under torchrun, rank 0 speaks for the job
        print(result.describe())
    return 0


def _load_images(model, args):
    """Images to encode: files given on the command line, else held-out synthetic scenes."""
    import torch

    from spae_lab.data import SyntheticScenes, load_image

    size = model.config.image_size
    if args.images:
        return [str(p) for p in args.images], torch.stack([load_image(p, size) for p in args.images])
    scenes = SyntheticScenes(num_images=args.count, image_size=size, split="heldout")
    images, captions = scenes.images_and_captions()
    return [f"held-out scene {i}: {caption}" for i, caption in enumerate(captions)], images


def cmd_encode(args) -> int:
    from spae_lab.checkpoint import load_tokenizer

    model = load_tokenizer(args.checkpoint)
    if args.layers is not None and args.layers > model.num_layers:
        raise ConfigError(f"--layers must be in 1..{model.num_layers} for this tokenizer, got {args.layers}")
    if hasattr(model, "clip_config"):  # a clip tokenizer: GIF, MP4 or folders of frames
        from spae_lab.video.cli import encode_clips

        return encode_clips(model, args)
    names, images = _load_images(model, args)
    pyramid = model.encode(images)
    for i, name in enumerate(names):
        print(f"== {name}")
        print(pyramid.to_text(args.layers, image=i) if args.text else pyramid.describe(args.layers, image=i))
    return 0


def cmd_decode(args) -> int:
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.pyramid import TokenPyramid
    from spae_lab.views.figures import save_image

    model = load_tokenizer(args.checkpoint)
    if hasattr(model, "clip_config"):  # a clip tokenizer: .gif, .mp4 or a .png strip of frames
        from spae_lab.video.cli import decode_clips

        return decode_clips(model, args)
    pyramid = TokenPyramid.from_text(args.text, model.layout, model.codebook)
    path = save_image(model.decode(pyramid)[0], args.out)
    print(f"decoded {pyramid.num_layers} layers to {path}")
    return 0


def cmd_codebook(args) -> int:
    from spae_lab.codebook import load_codebook

    cb = load_codebook(CodebookConfig(source=args.source, max_size=args.max_size or None))
    print(cb.describe())
    print("first words:", " ".join(cb.words[: args.show]))
    return 0


def cmd_presets(args) -> int:
    for name in list_presets():
        cfg = create_config(name)
        m = cfg.model
        print(f"{name:6s} {m.image_size}px, grid {m.latent_grid}, layers {m.layer_sizes}, "
              f"{cfg.train.steps} steps x batch {cfg.train.batch_size}, codebook {cfg.codebook.source} "
              f"(max {cfg.codebook.max_size})")
    if args.verbose:
        print(json.dumps(create_config(args.verbose).to_dict(), indent=2))
    return 0


def cmd_pretrained(args) -> int:
    """List the tokenizers that ship with the package, with their held-out figures."""
    from spae_lab import pretrained

    names = pretrained.available()
    if not names:
        print("no pretrained tokenizers in this installation")
        return 0
    if args.markdown:
        print(pretrained.markdown_table(names))
        return 0
    for name in names:
        card = pretrained.card(name)
        print(f"{name:14s} {pretrained.DESCRIPTIONS.get(name, card.get('description', ''))}")
        line = pretrained.headline(name)
        if line:
            print(f"{'':14s} held-out: {line}")
        if args.verbose and card:
            print(f"{'':14s} trained: {card.get('steps')} steps, {card.get('wall_minutes')} min on "
                  f"{card.get('machine')}; reproduce: {card.get('command')}")
    print("\nload one with spae_lab.load_tokenizer(NAME); any command taking a run folder takes NAME")
    return 0


def cmd_train_teacher(args) -> int:
    from spae_lab.teacher.train import TeacherConfig, train_teacher

    cfg = TeacherConfig(steps=args.steps, batch_size=args.batch_size, folders=tuple(args.folder or ()),
                        scenes=args.scenes, seed=args.seed, max_per_class=args.max_per_class)
    result = train_teacher(cfg, args.out, progress=not args.quiet)
    print(f"teacher: {Path(args.out) / 'teacher.safetensors'} ({result['minutes']} min)")
    for name, accuracy in result["zero_shot"].items():
        print(f"  zero-shot accuracy on held-out {name}: {accuracy:.1%} (chance {result['chance'][name]:.1%})")
    print(f"use it with: spae-lab train --set semantic.teacher=lit:{Path(args.out) / 'teacher.safetensors'}")
    return 0


def cmd_ablate(args) -> int:
    from spae_lab.tables import to_markdown
    from spae_lab.training.ablation import run_ablation

    overrides = config_from_args(args).to_dict()
    overrides.pop("preset")
    for section in ("model", "semantic"):  # the variants set these
        overrides[section].pop("quantizer", None)
        overrides[section].pop("enabled", None)
    overrides["model"].pop("semantic_head_layers")  # follows semantic.enabled
    table = run_ablation(args.out, args.preset, overrides, progress=not args.quiet)
    print(to_markdown(table))
    out = Path(args.out)
    print(f"written: {out / 'ablation.csv'}, {out / 'ablation.md'}, {out / 'ablation.png'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer")
    flags.config(p)
    flags.out(p, "", "run folder (default runs/<preset>)")
    flags.resume_or_force(p, "run (--resume: with its own settings, train.steps may grow; exact step for "
                          "step with one thread, train.num_threads=1)")
    flags.quiet(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="print images as their pyramid of words")
    p.add_argument("checkpoint", help="shipped name, checkpoint file or run folder")
    p.add_argument("images", nargs="*", help="image files; for a clip tokenizer GIF or MP4 files or folders of "
                   "frames (default: held-out synthetic scenes, or moving scenes)")
    p.add_argument("--count", type=integer(1, 10_000), default=1, help="held-out scenes to encode without images")
    p.add_argument("--layers", type=integer(1, 64), help="print the first N layers only")
    p.add_argument("--text", action="store_true", help="one line of words, as an LLM reads it")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a pyramid of words back to an image")
    p.add_argument("checkpoint", help="shipped name, checkpoint file or run folder")
    p.add_argument("text", help="words of the first layers, as printed by encode --text")
    flags.out(p, None, "image file to write (.png, .jpg, ...; an existing file is replaced); a clip tokenizer "
              "writes .gif, .mp4 or a .png strip of frames")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("codebook", help="build a codebook and report vocabulary sizes")
    p.add_argument("--source", default="smollm2", help="smollm2, a Hugging Face id/folder, random:V:D")
    p.add_argument("--max-size", type=integer(0, 10_000_000), default=8192, help="0 = all lexical tokens")
    p.add_argument("--show", type=integer(0, 10_000), default=40, help="how many words to print")
    p.set_defaults(func=cmd_codebook)

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--verbose", metavar="PRESET", choices=list_presets(), help="print one preset's full config")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("pretrained", help="list the pretrained tokenizers shipped with the package")
    p.add_argument("--verbose", action="store_true", help="also how each was trained")
    p.add_argument("--markdown", action="store_true", help="the figures as a Markdown table")
    p.set_defaults(func=cmd_pretrained)

    p = sub.add_parser("train-teacher", help="train the offline LiT teacher (CNN vs locked MiniLM)")
    flags.out(p, "runs/teacher", "folder for teacher.safetensors and its metrics")
    p.add_argument("--folder", action="append", help="ImageFolder folder or .tar(.gz) of class folders")
    p.add_argument("--steps", type=integer(1, 10_000_000), default=2000)
    p.add_argument("--batch-size", dest="batch_size", type=integer(2, 4096), default=128)
    p.add_argument("--scenes", type=integer(0), default=20000, help="synthetic scenes in the mix")
    p.add_argument("--max-per-class", dest="max_per_class", type=integer(1))
    flags.seed(p)
    flags.quiet(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("ablate", help="SAQ vs RQ, semantic loss on vs off: train all, print the table")
    flags.config(p)
    flags.out(p, "runs/ablation", "folder of the runs and the table")
    flags.quiet(p)
    p.set_defaults(func=cmd_ablate)
