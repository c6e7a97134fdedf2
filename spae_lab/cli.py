"""`spae-lab`: the command line, a thin layer over library functions.

Errors a user can fix (bad config key, missing dataset, wrong checkpoint) print one line and exit
with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from spae_lab.codebook import CodebookError
from spae_lab.config import ConfigError, CodebookConfig, create_config, list_presets
from spae_lab.data import DataError
from spae_lab.model import ShapeError
from spae_lab.pyramid import PyramidError
from spae_lab.teacher import TeacherError
from spae_lab.train import CheckpointError

USER_ERRORS = (ConfigError, DataError, CodebookError, CheckpointError, ShapeError, PyramidError,
               TeacherError, FileNotFoundError)


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else value
    return out


def config_from_args(args) -> object:
    """Preset, then a YAML file, then --set pairs, then the shortcut flags."""
    overrides: dict = {}
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config} must hold a mapping of config keys")
        overrides.update(loaded)
    overrides.update(_parse_sets(args.set or []))
    for flag, key in (("steps", "train.steps"), ("batch_size", "train.batch_size"),
                      ("dataset", "data.dataset"), ("seed", "train.seed"),
                      ("minutes", "train.max_minutes"), ("device", "train.device"),
                      ("quantizer", "model.quantizer")):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    return create_config(args.preset, overrides)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", choices=list_presets())
    p.add_argument("--config", help="YAML file of config keys (dotted or nested)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=5e-4")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--dataset", help="scenes, digits, mnist, or an ImageFolder folder / .tar(.gz)")
    p.add_argument("--seed", type=int)
    p.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quantizer", choices=["saq", "rq"])


def cmd_train(args) -> int:
    from spae_lab.train import train

    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.preset}")
    result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    if result.rank == 0:  # under torchrun, rank 0 speaks for the job
        _print_result(result)
    return 0


def _print_result(result) -> None:
    if result.initial_psnr:
        print("held-out PSNR per depth before training (dB):", _fmt(result.initial_psnr))
    print(f"held-out PSNR per depth after {result.step} steps (dB): ", _fmt(result.heldout_psnr))
    print(f"checkpoint: {result.run_dir / 'checkpoint.safetensors'}")


def _fmt(values) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _load_images(model, args):
    """Images to encode: files given on the command line, else held-out synthetic scenes."""
    import torch

    from spae_lab.data import SyntheticScenes, load_image

    size = model.config.image_size
    if args.images:
        return [str(p) for p in args.images], torch.stack([load_image(p, size) for p in args.images])
    scenes = SyntheticScenes(num_images=args.count, image_size=size, split="heldout")
    items = [scenes[i] for i in range(args.count)]
    return [f"held-out scene {i}: {it['caption']}" for i, it in enumerate(items)], torch.stack(
        [it["image"] for it in items])


def cmd_encode(args) -> int:
    from spae_lab.train import load_tokenizer

    model = load_tokenizer(args.checkpoint)
    names, images = _load_images(model, args)
    pyramid = model.encode(images)
    for i, name in enumerate(names):
        print(f"== {name}")
        if args.text:
            print(pyramid.to_text(args.layers, image=i))
        else:
            print(pyramid.describe(args.layers, image=i))
    return 0


def cmd_decode(args) -> int:
    from spae_lab.pyramid import TokenPyramid
    from spae_lab.train import load_tokenizer
    from spae_lab.viz import save_image

    model = load_tokenizer(args.checkpoint)
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


def cmd_demo(args) -> int:
    """Train a small tokenizer on synthetic scenes, print a held-out scene as words, save figures."""
    from spae_lab.data import SyntheticScenes
    from spae_lab.train import train
    from spae_lab.viz import save_reconstruction_figure

    cfg = create_config("small", {"train.steps": args.steps, "train.max_minutes": args.minutes})
    out = Path(args.out)
    print(f"Training the 'small' SPAE tokenizer on synthetic scenes ({cfg.train.steps} steps, "
          f"{cfg.model.image_size}px, frozen SmolLM2 codebook); run folder {out}")
    result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    _print_result(result)
    from spae_lab.train import load_tokenizer

    model = load_tokenizer(out)
    scenes = SyntheticScenes(num_images=8, image_size=cfg.model.image_size, split="heldout")
    item = scenes[0]
    pyramid = model.encode(item["image"][None])
    print(f"\nA held-out scene ({item['caption']}) as its pyramid of SmolLM2 words:")
    print(pyramid.describe())
    figure = save_reconstruction_figure(model, scenes, out / "reconstruction.png")
    print(f"\nreconstructions from 1..{model.num_layers} layers: {figure}")
    return 0


def cmd_train_teacher(args) -> int:
    from spae_lab.teacher_train import TeacherConfig, train_teacher

    cfg = TeacherConfig(steps=args.steps, batch_size=args.batch_size, folders=tuple(args.folder or ()),
                        scenes=args.scenes, seed=args.seed, max_per_class=args.max_per_class)
    result = train_teacher(cfg, args.out, progress=not args.quiet)
    print(f"teacher: {Path(args.out) / 'teacher.safetensors'} ({result['minutes']} min)")
    for name, accuracy in result["zero_shot"].items():
        print(f"  zero-shot accuracy on held-out {name}: {accuracy:.1%} (chance {result['chance'][name]:.1%})")
    print(f"use it with: spae-lab train --set semantic.teacher=lit:{Path(args.out) / 'teacher.safetensors'}")
    return 0


def cmd_ablate(args) -> int:
    from spae_lab.ablation import run_ablation, to_markdown

    overrides = config_from_args(args).to_dict()
    overrides.pop("preset")
    for section in ("model", "semantic"):  # the variants set these
        overrides[section].pop("quantizer", None)
        overrides[section].pop("enabled", None)
    table = run_ablation(args.out, args.preset, overrides, progress=not args.quiet)
    print(to_markdown(table))
    print(f"written: {Path(args.out) / 'ablation.csv'}, {Path(args.out) / 'ablation.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spae-lab", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a tokenizer")
    _add_config_flags(p)
    p.add_argument("--out", help="run folder (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="print images as their pyramid of words")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("images", nargs="*", help="image files (default: held-out synthetic scenes)")
    p.add_argument("--count", type=int, default=1, help="held-out scenes to encode without images")
    p.add_argument("--layers", type=int, help="print the first N layers only")
    p.add_argument("--text", action="store_true", help="one line of words, as an LLM reads it")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a pyramid of words back to an image")
    p.add_argument("checkpoint")
    p.add_argument("text", help="words of the first layers, as printed by encode --text")
    p.add_argument("--out", default="decoded.png")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("codebook", help="build a codebook and report vocabulary sizes")
    p.add_argument("--source", default="smollm2", help="smollm2, a Hugging Face id/folder, random:V:D")
    p.add_argument("--max-size", type=int, default=8192, help="0 = all lexical tokens")
    p.add_argument("--show", type=int, default=40, help="how many words to print")
    p.set_defaults(func=cmd_codebook)

    p = sub.add_parser("train-teacher", help="train the offline LiT teacher (CNN vs locked MiniLM)")
    p.add_argument("--out", default="runs/teacher")
    p.add_argument("--folder", action="append", help="ImageFolder folder or .tar(.gz) of class folders")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    p.add_argument("--scenes", type=int, default=20000, help="synthetic scenes in the mix")
    p.add_argument("--max-per-class", dest="max_per_class", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("ablate", help="SAQ vs RQ, semantic loss on vs off: train all, print the table")
    _add_config_flags(p)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--verbose", metavar="PRESET", help="print one preset's full config")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("demo", help="the main job: train a small tokenizer, print words, save figures")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--minutes", type=float, default=None, help="optional wall-clock budget")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"spae-lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
