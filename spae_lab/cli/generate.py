"""`spae-lab generate TASK --tokenizer NAME_OR_RUN [--input FOLDER_OR_TAR] --out OUT`: a frozen LLM
writes images as token pyramids (`spae_lab.generate.run_generation`); `edit` swaps the top word."""

from __future__ import annotations

from spae_lab.cli import flags
from spae_lab.cli.flags import integer, number

TASK_CHOICES = ("class", "arithmetic", "inpaint", "outpaint", "flip", "shift", "denoise", "edit")


def cmd_generate(args) -> int:
    import json

    from spae_lab.generate.decode import DecodeConfig
    from spae_lab.generate.run import GenerationConfig, GenerationError, run_generation
    from spae_lab.generate.tasks import CorruptionSchedule

    if args.task == "edit":
        from spae_lab.generate.edit import run_edit

        if not args.word:
            raise GenerationError("edit needs --word WORD (a codebook word to put on top)")
        result = run_edit(args.tokenizer, args.word, input=args.input, out=args.out,
                          images=args.images, seed=args.seed, force=args.force)
        print(json.dumps(result.summary, indent=2))
        print(f"images (NAME_original.png, NAME_edited.png) and results.csv in {args.out}")
        return 0
    start, end, count = args.schedule
    if not (0 <= end <= 1 and 0 <= start <= 1 and count == int(count) and 1 <= count <= 100):
        raise GenerationError(f"--schedule takes two ratios in [0, 1] and a whole count in 1..100, got "
                              f"{start:g} {end:g} {count:g}")
    config = GenerationConfig(
        examples=args.examples, examples_per_class=args.examples_per_class,
        episodes=args.episodes, images=args.images, class_context=args.class_context,
        layers=args.layers, seed=args.seed, corruption=args.corruption,
        decode=DecodeConfig(tokens_per_call=args.tokens_per_call, temperature=args.temperature,
                            seed=args.seed, vocabulary=args.vocabulary,
                            no_repeat_ngram=args.no_repeat_ngram),
        schedule=CorruptionSchedule(start, end, int(count)))
    result = run_generation(args.task, args.tokenizer, input=args.input, out=args.out,
                            backend=flags.load_llm(args), config=config, context=args.context,
                            progress=not args.quiet, force=args.force)
    print(json.dumps(result.summary, indent=2))
    if "verdict" in result.summary:
        print(result.summary["verdict"])
    print(f"images, results.csv, prompts and the LLM cache in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="in-context generation: a frozen LLM writes images as token pyramids "
                       "(class, arithmetic, inpaint, outpaint, flip, shift, denoise; edit: swap the top word, "
                       "no LLM)")
    p.add_argument("task", choices=TASK_CHOICES)
    p.add_argument("--tokenizer", required=True, help="shipped tokenizer (digits, cifar10, ...) "
                   "or run folder / checkpoint")
    p.add_argument("--input", help="images: a folder or tar archive (or a dataset name); default: "
                   "the tokenizer's own held-out data (CIFAR-10: the shipped sample if the "
                   "training archive is not here)")
    p.add_argument("--context", help="where in-context examples come from (same kinds as "
                   "--input); default: the input images, queries never among them")
    flags.out(p, "runs/generate", "folder for images, CSV, prompts, cache; the same run there resumes, "
              "another is refused unless --force")
    flags.force(p, "generation")
    flags.llm(p)
    p.add_argument("--images", type=integer(0, 100_000), default=20, help="image tasks: query images (0 = all)")
    p.add_argument("--examples", type=integer(1, 1000), default=10, help="image tasks: in-context example pairs")
    p.add_argument("--examples-per-class", type=integer(1, 100), default=2,
                   help="class: context examples of each digit")
    p.add_argument("--episodes", type=integer(1, 10_000), default=5,
                   help="class / arithmetic: context draws, one image per digit each")
    p.add_argument("--class-context", choices=["mixed", "last", "same"], default="last",
                   help="class / arithmetic: examples of every label, those showing the requested "
                   "label moved next to the query (last, the default), not moved (mixed), or only "
                   "those (same)")
    p.add_argument("--layers", type=integer(0, 64), default=0, help="layers the LLM writes (0 = all)")
    p.add_argument("--tokens-per-call", type=integer(1, 256), default=2, help="words per LLM call (V2L: 2)")
    p.add_argument("--temperature", type=number(0, 10), default=0.0, help="0 = greedy; else sampled")
    p.add_argument("--schedule", type=number(0, 100), nargs=3, metavar=("START", "END", "COUNT"),
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
    p.add_argument("--no-repeat-ngram", type=integer(0, 64), default=0,
                   help="never repeat an n-gram within the layer being written (0 = off)")
    p.add_argument("--word", help="edit: the codebook word that replaces each image's top word")
    flags.seed(p, "context draws, corruptions, sampling")
    flags.quiet(p)
    p.set_defaults(func=cmd_generate)
