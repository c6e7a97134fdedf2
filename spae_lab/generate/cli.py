"""`spae-lab generate TASK --tokenizer NAME_OR_RUN [--input FOLDER_OR_TAR] --out OUT`.

Wired into `spae_lab.cli.main` with `add_generate_parser(sub)`; the command calls `run_generation`.
Library modules are imported inside `cmd_generate`, so `--help` does not load torch.
"""

from __future__ import annotations

TASK_CHOICES = ("class", "arithmetic", "inpaint", "outpaint", "flip", "shift", "denoise", "edit")


def add_generate_parser(subparsers):
    """Add the `generate` command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("generate", help="in-context generation: a frozen LLM writes images "
                              "as token pyramids (class, arithmetic, inpaint, outpaint, flip, "
                              "shift, denoise; edit: swap the top word, no LLM)")
    p.add_argument("task", choices=TASK_CHOICES)
    p.add_argument("--tokenizer", required=True, help="shipped tokenizer (digits, cifar10, ...) "
                   "or run folder / checkpoint")
    p.add_argument("--input", help="images: a folder or tar archive (or a dataset name); default: "
                   "the tokenizer's own held-out data (CIFAR-10: the shipped sample if the "
                   "training archive is not here)")
    p.add_argument("--context", help="where in-context examples come from (same kinds as "
                   "--input); default: the input images, queries never among them")
    p.add_argument("--out", default="runs/generate", help="folder for images, CSV, prompts, cache")
    p.add_argument("--backend", default="hf:smollm2",
                   help="hf:<id or folder> or openai:<model>@<base_url> (key from $OPENAI_API_KEY)")
    p.add_argument("--images", type=int, default=20, help="image tasks: query images (0 = all)")
    p.add_argument("--examples", type=int, default=10, help="image tasks: in-context example pairs")
    p.add_argument("--examples-per-class", type=int, default=2,
                   help="class: context examples of each digit")
    p.add_argument("--episodes", type=int, default=5,
                   help="class / arithmetic: context draws, one image per digit each")
    p.add_argument("--class-context", choices=["mixed", "last", "same"], default="last",
                   help="class / arithmetic: examples of every label, those showing the requested "
                   "label moved next to the query (last, the default), not moved (mixed), or only "
                   "those (same)")
    p.add_argument("--layers", type=int, default=0, help="layers the LLM writes (0 = all)")
    p.add_argument("--tokens-per-call", type=int, default=2, help="words per LLM call (V2L: 2)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; else sampled")
    p.add_argument("--schedule", type=float, nargs=3, metavar=("START", "END", "COUNT"),
                   default=(0.50, 0.23, 10),
                   help="denoise: replacement ratio of the first and last context copy, copies")
    p.add_argument("--corruption", choices=["masked", "random"], default="masked",
                   help="inpaint/outpaint: the region's words become those of the image with the "
                   "region painted grey (masked), or random words")
    p.add_argument("--vocabulary", choices=["codebook", "context", "position", "known"],
                   default="position",
                   help="words the LLM may write: any codebook word, the words the examples use "
                   "in that layer, the words the examples hold at that position, or the query's "
                   "own given words of that layer")
    p.add_argument("--no-repeat-ngram", type=int, default=0,
                   help="never repeat an n-gram within the layer being written (0 = off)")
    p.add_argument("--word", help="edit: the codebook word that replaces each image's top word")
    p.add_argument("--seed", type=int, default=0, help="context draws, corruptions, sampling")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)
    return p


def cmd_generate(args) -> int:
    import json

    from spae_lab.generate.decode import DecodeConfig
    from spae_lab.generate.run import GenerationConfig, run_generation
    from spae_lab.generate.tasks import CorruptionSchedule

    if args.task == "edit":
        from spae_lab.generate.edit import run_edit
        from spae_lab.generate.run import GenerationError

        if not args.word:
            raise GenerationError("edit needs --word WORD (a codebook word to put on top)")
        result = run_edit(args.tokenizer, args.word, input=args.input, out=args.out,
                          images=args.images, seed=args.seed)
        print(json.dumps(result.summary, indent=2))
        print(f"images (NAME_original.png, NAME_edited.png) and results.csv in {args.out}")
        return 0
    start, end, count = args.schedule
    config = GenerationConfig(
        examples=args.examples, examples_per_class=args.examples_per_class,
        episodes=args.episodes, images=args.images, class_context=args.class_context,
        layers=args.layers, seed=args.seed, corruption=args.corruption,
        decode=DecodeConfig(tokens_per_call=args.tokens_per_call, temperature=args.temperature,
                            seed=args.seed, vocabulary=args.vocabulary,
                            no_repeat_ngram=args.no_repeat_ngram),
        schedule=CorruptionSchedule(start, end, int(count)))
    result = run_generation(args.task, args.tokenizer, input=args.input, out=args.out,
                            backend=args.backend, config=config, context=args.context,
                            progress=not args.quiet)
    print(json.dumps(result.summary, indent=2))
    print(f"images, results.csv, prompts and the LLM cache in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m spae_lab.generate TASK ...`: the same command as `spae-lab generate TASK ...`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m spae_lab.generate")
    add_generate_parser(parser.add_subparsers(dest="command"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(["generate", *argv])
    return args.func(args)
