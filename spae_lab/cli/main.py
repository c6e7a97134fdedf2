"""`spae-lab`: the command line, a thin layer over library functions.

Errors a user can fix (bad config key, missing dataset, wrong checkpoint) print one line and exit
with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from spae_lab.config import CodebookConfig, ConfigError, create_config, list_presets
from spae_lab.errors import SpaeError
from spae_lab.generate.cli import add_generate_parser

# Library modules are imported inside the commands that use them: `--help`, `presets` and
# `report --list` then answer without loading torch.

# SpaeError: every library error a user can fix (bad key, missing dataset, dead endpoint, ...).
# OSError: a read-only or full disk, a missing file. FloatingPointError: a diverging run ("loss
# became nan at step 12; lower train.lr").
USER_ERRORS = (SpaeError, OSError, FloatingPointError)


def is_user_error(error: BaseException) -> bool:
    """Errors that get one line and status 2 instead of a traceback. safetensors' own error type
    (a full disk while writing) is matched by name: importing safetensors here would slow start-up."""
    return isinstance(error, USER_ERRORS) or type(error).__name__ == "SafetensorError"


def _parse_sets(pairs: list[str]) -> dict:
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


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def read_yaml_mapping(path: str, error: type[Exception] = ConfigError) -> dict:
    """A YAML file holding a mapping (empty: {}); `error` for a missing, unreadable or other file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise error(f"cannot read {path}: {_first_line(e)}") from None
    if not isinstance(loaded, dict):
        raise error(f"{path} must hold a mapping of keys")
    return loaded


def config_from_args(args) -> object:
    """Preset, then a YAML file, then --set pairs, then the shortcut flags."""
    overrides: dict = {}
    if args.config:
        overrides.update(read_yaml_mapping(args.config))
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
    cfg = config_from_args(args)  # a bad config fails before torch is imported
    from spae_lab.training.loop import train

    out = Path(args.out or f"runs/{cfg.preset}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a run folder")
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
    images, captions = SyntheticScenes(num_images=args.count, image_size=size, split="heldout").images_and_captions()
    return [f"held-out scene {i}: {caption}" for i, caption in enumerate(captions)], images


def cmd_encode(args) -> int:
    from spae_lab.checkpoint import load_tokenizer

    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}")
    model = load_tokenizer(args.checkpoint)
    if args.layers is not None and not 1 <= args.layers <= model.num_layers:
        raise ConfigError(f"--layers must be in 1..{model.num_layers} for this tokenizer, got {args.layers}")
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
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.pyramid import TokenPyramid
    from spae_lab.views.figures import save_image

    model = load_tokenizer(args.checkpoint)
    pyramid = TokenPyramid.from_text(args.text, model.layout, model.codebook)
    path = save_image(model.decode(pyramid)[0], args.out)
    print(f"decoded {pyramid.num_layers} layers to {path}")
    return 0


def cmd_codebook(args) -> int:
    from spae_lab.codebook import load_codebook

    if args.max_size < 0:
        raise ConfigError(f"--max-size must be 0 (all lexical tokens) or more, got {args.max_size}")
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


def cmd_demo(args) -> int:
    from spae_lab.cli.main.demo import run_demo
    from spae_lab.views.report import summarize_runs

    runs = run_demo(args.out, train_first=args.train, steps=args.steps, minutes=args.minutes,
                    fresh=args.fresh, episodes=args.episodes, fewshot=not args.no_fewshot,
                    reports_dir=None if args.no_reports else args.reports,
                    notebook_timeout=args.notebook_timeout, progress=not args.quiet)
    if runs is None:
        return 0
    print(summarize_runs(runs, args.reports))
    return 1 if any(r.status != "succeeded" for r in runs) else 0


def cmd_report(args) -> int:
    from spae_lab.views.report import (
        find_notebooks,
        load_parameters_file,
        notebook_parameters,
        run_reports,
        summarize_runs,
        write_index,
    )

    notebooks = find_notebooks(args.notebooks, args.notebooks_dir)
    if args.list:
        for path in notebooks:
            print(path.stem)
            for name, p in notebook_parameters(path).items():
                print(f"  {name}: {p['inferred_type_name']} = {p['default']}  # {p['help']}")
        return 0
    if args.index_only:
        print(f"index: {write_index(args.out)}")
        return 0
    parameters, per_notebook = load_parameters_file(args.file) if args.file else ({}, {})
    parameters.update(_parse_sets(args.param or []))
    runs = run_reports(notebooks, parameters, per_notebook, reports_dir=args.out, tag=args.tag,
                       hide_code=not args.show_code, timeout=args.timeout)
    print(summarize_runs(runs, args.out))
    return 1 if any(r.status != "succeeded" for r in runs) else 0


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


def cmd_fewshot(args) -> int:
    from spae_lab.llm.spec import parse_backend_spec

    parse_backend_spec(args.backend)  # a bad spec fails here, before any folder or model is made
    for flag, value, least in (("timeout", args.llm_timeout, 1e-3), ("retries", args.llm_retries, 0),
                               ("concurrency", args.llm_concurrency, 1)):
        if not value >= least:  # NaN fails too; checked for every backend, used by openai ones
            raise ConfigError(f"--llm-{flag}: {flag} must be >= {least:g}, got {value}")
    from spae_lab.reading.episodes import FewShotConfig, select_settings
    from spae_lab.reading.fewshot import run_experiment

    config = FewShotConfig(ways=tuple(args.ways), settings=select_settings(args.settings), names=tuple(args.names),
                           decodings=tuple(args.decoding), prompt_format=args.format,
                           episodes=args.episodes, seed=args.seed, calibration=args.calibration)
    backend = args.backend
    if backend.startswith("openai:"):
        from spae_lab.llm import load_backend

        backend = load_backend(backend, endpoint=args.llm_endpoint, timeout=args.llm_timeout,
                               max_retries=args.llm_retries, concurrency=args.llm_concurrency)
    result = run_experiment(args.out, args.tokenizer, baseline=args.baseline,
                            dataset=args.dataset, max_per_class=args.max_per_class or None,
                            split=args.split,
                            layers=args.layers, baseline_max_tokens=args.baseline_max_tokens,
                            backend=backend, references=tuple(args.references),
                            config=config, progress=not args.quiet)
    print(result.paths["table_md"].read_text())
    print(f"tables and per-query records in {args.out}")
    return 0


def cmd_scene_qa(args) -> int:
    from spae_lab.llm.spec import parse_backend_spec

    parse_backend_spec(args.backend)  # a bad spec fails here, before any folder or model is made
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.reading.scene_qa import run_scene_qa
    from spae_lab.tables import to_markdown

    result = run_scene_qa(load_tokenizer(args.tokenizer), args.backend, args.out, layers=args.layers,
                          num_examples=args.examples, num_queries=args.queries,
                          decodings=tuple(args.decoding), seed=args.seed, progress=not args.quiet)
    print("VQA on held-out scenes (accuracy, 95% CI):")
    print(to_markdown(result.vqa.round(3)))
    print("Captioning (fraction of captions naming ...):")
    print(to_markdown(result.captioning.round(3)))
    print(f"captions and tables in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spae-lab", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a tokenizer")
    _add_config_flags(p)
    p.add_argument("--out", help="run folder (default runs/<preset>)")
    once = p.add_mutually_exclusive_group()  # an existing run in --out is kept unless one of these says otherwise
    once.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with its "
                      "own settings (train.steps may grow); exact step for step with one thread (train.num_threads=1)")
    once.add_argument("--force", action="store_true", help="replace the run in --out: its files (checkpoint, metrics, "
                      "figures) are removed first")
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
    p.add_argument("--out", required=True, help="image file to write (.png, .jpg, ...; an existing file is replaced)")
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

    p = sub.add_parser("fewshot", help="few-shot classification by a frozen LLM reading image words")
    p.add_argument("tokenizer", help="SPAE run folder or checkpoint (trained with semantic guidance)")
    p.add_argument("--baseline", help="LQAE-style run (one layer, no semantic loss) on the same codebook")
    p.add_argument("--baseline-max-tokens", type=int, help="words per image of the baseline (default all)")
    p.add_argument("--dataset", help="evaluation images, used whole (cifar10-sample, a folder, a .tar); "
                   "default: the held-out split of the tokenizer's training data")
    p.add_argument("--split", choices=["all", "heldout"],
                   help="part of --dataset to use (default: all of a given dataset, else heldout)")
    p.add_argument("--max-per-class", type=int, default=200,
                   help="images per class to draw episodes from (0 = every image)")
    p.add_argument("--layers", type=int, default=1,
                   help="SPAE pyramid layers per image (1: the top word; 2: 5 words)")
    p.add_argument("--ways", type=int, nargs="+", default=[2, 5])
    p.add_argument("--episodes", type=int, default=20, help="episodes per (ways, shots)")
    p.add_argument("--settings", default="frozen7",
                   help="frozen7 (Frozen's 7 settings), quick (T-1s-0r) or labels such as T-3s-0r,T-5s-0r")
    p.add_argument("--names", nargs="+", choices=["real", "nonsense"], default=["real", "nonsense"])
    p.add_argument("--decoding", nargs="+", choices=["likelihood", "constrained", "open"],
                   default=["likelihood"])
    p.add_argument("--format", choices=["spae", "v2l"], default="spae", help="prompt format")
    p.add_argument("--calibration", choices=["content-free", "none"], default="content-free",
                   help="likelihood ranking: subtract each name's score for an 'N/A' image, or not")
    p.add_argument("--references", nargs="*", choices=["pixels", "teacher"], default=["pixels", "teacher"],
                   help="no-LLM 1-NN references")
    p.add_argument("--backend", default="hf:smollm2",
                   help="hf:<id or folder> or openai:<model>@<base_url> (key from $OPENAI_API_KEY)")
    p.add_argument("--llm-endpoint", choices=["completions", "chat"], default="completions",
                   help="openai backends: chat cannot rank by likelihood")
    p.add_argument("--llm-timeout", type=float, default=60.0,
                   help="openai backends: seconds per request, the whole reply included (a total deadline)")
    p.add_argument("--llm-retries", type=int, default=6,
                   help="openai backends: retries per request")
    p.add_argument("--llm-concurrency", type=int, default=4,
                   help="openai backends: parallel requests (1 or more)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/fewshot", help="folder: episodes, LLM cache, tables")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_fewshot)

    p = sub.add_parser("scene-qa", help="captioning and VQA on held-out synthetic scenes from the words")
    p.add_argument("tokenizer", help="run folder or checkpoint trained on the scenes")
    p.add_argument("--layers", type=int, default=2, help="pyramid layers per image (2 = 5 words)")
    p.add_argument("--examples", type=int, default=8, help="in-context examples (training scenes)")
    p.add_argument("--queries", type=int, default=60, help="held-out scenes asked about")
    p.add_argument("--decoding", nargs="+", choices=["likelihood", "constrained", "open"],
                   default=["constrained", "open"])
    p.add_argument("--backend", default="hf:smollm2", help="hf:<id or folder> or openai:<model>@<url>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/scene_qa")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_scene_qa)

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--verbose", metavar="PRESET", help="print one preset's full config")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("pretrained", help="list the pretrained tokenizers shipped with the package")
    p.add_argument("--verbose", action="store_true", help="also how each was trained")
    p.add_argument("--markdown", action="store_true", help="the figures as a Markdown table")
    p.set_defaults(func=cmd_pretrained)

    p = sub.add_parser("demo", help="the main job: train a small tokenizer, print words, run the notebook reports")
    p.add_argument("--out", default="runs/demo", help="folder for figures, few-shot tables (and --train's run)")
    p.add_argument("--train", action="store_true",
                   help="train the scenes tokenizer from scratch first (the shipped recipe, minutes)")
    p.add_argument("--steps", type=int, default=None, help="with --train: steps (default: the recipe's)")
    p.add_argument("--minutes", type=float, default=None, help="with --train: optional wall-clock budget")
    p.add_argument("--fresh", action="store_true", help="with --train: retrain even if --out holds a checkpoint")
    p.add_argument("--episodes", type=int, default=40, help="few-shot episodes per way")
    p.add_argument("--no-fewshot", dest="no_fewshot", action="store_true", help="skip the few-shot part")
    p.add_argument("--reports", default="reports", help="folder of the notebook reports")
    p.add_argument("--no-reports", dest="no_reports", action="store_true", help="skip the notebook reports")
    p.add_argument("--notebook-timeout", dest="notebook_timeout", type=float, default=300,
                   help="seconds one notebook cell may run")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="run notebooks with papermill into reports/ (HTML, config.json, index)")
    p.add_argument("notebooks", nargs="*", help="names or paths (default: every notebook); e.g. tour 03")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                   help="parameter (YAML value) for every notebook that declares KEY")
    p.add_argument("-f", "--file", help="YAML parameters: top-level keys, plus `notebooks: {name: {...}}`")
    p.add_argument("--tag", default="default", help="run name: reports/<date>_<notebook>_<tag>/")
    p.add_argument("--out", default="reports", help="reports folder")
    p.add_argument("--show-code", dest="show_code", action="store_true", help="keep code cells in the HTML")
    p.add_argument("--timeout", type=float, default=None, help="seconds one cell may run")
    p.add_argument("--notebooks-dir", dest="notebooks_dir", help="where to look for notebooks (./notebooks)")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters")
    p.add_argument("--index-only", dest="index_only", action="store_true", help="only rewrite index.html")
    p.set_defaults(func=cmd_report)
    add_generate_parser(sub)  # `generate`: spae_lab/generate/cli.py
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader of our output left (`spae-lab presets | head`): stop quietly, as `cat` does;
        # stdout goes to /dev/null so that Python's own flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug or not is_user_error(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever was said
        print(f"spae-lab {args.command}: error: {message}", file=sys.stderr)
        return 2

