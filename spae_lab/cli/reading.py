"""Commands in which a frozen LLM reads images as words: fewshot, scene-qa."""

from __future__ import annotations

from spae_lab.cli import flags
from spae_lab.cli.flags import integer


def cmd_fewshot(args) -> int:
    from spae_lab.reading.episodes import FewShotConfig, select_settings
    from spae_lab.reading.fewshot import run_experiment

    config = FewShotConfig(ways=tuple(args.ways), settings=select_settings(args.settings), names=tuple(args.names),
                           decodings=tuple(args.decoding), prompt_format=args.format,
                           episodes=args.episodes, seed=args.seed, calibration=args.calibration)
    result = run_experiment(args.out, args.tokenizer, baseline=args.baseline,
                            dataset=args.dataset, max_per_class=args.max_per_class or None,
                            split=args.split,
                            layers=args.layers, baseline_max_tokens=args.baseline_max_tokens,
                            backend=flags.load_llm(args), references=tuple(args.references),
                            config=config, progress=not args.quiet)
    print(result.paths["table_md"].read_text())
    print(f"tables and per-query records in {args.out}")
    return 0


def cmd_scene_qa(args) -> int:
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.reading.scene_qa import run_scene_qa
    from spae_lab.tables import to_markdown

    result = run_scene_qa(load_tokenizer(args.tokenizer), flags.load_llm(args), args.out, layers=args.layers,
                          num_examples=args.examples, num_queries=args.queries,
                          decodings=tuple(args.decoding), seed=args.seed, progress=not args.quiet)
    print("VQA on held-out scenes (accuracy, 95% CI):")
    print(to_markdown(result.vqa.round(3)))
    print("Captioning (fraction of captions naming ...):")
    print(to_markdown(result.captioning.round(3)))
    print(f"captions and tables in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("fewshot", help="few-shot classification by a frozen LLM reading image words")
    p.add_argument("tokenizer", help="SPAE tokenizer: shipped name, run folder or checkpoint")
    p.add_argument("--baseline", help="LQAE-style run (one layer, no semantic loss) on the same codebook")
    p.add_argument("--baseline-max-tokens", type=integer(1, 4096), help="words per image of the baseline "
                   "(default all)")
    p.add_argument("--dataset", help="evaluation images, used whole (cifar10-sample, a folder, a .tar); "
                   "default: the held-out split of the tokenizer's training data")
    p.add_argument("--split", choices=["all", "heldout"],
                   help="part of --dataset to use (default: all of a given dataset, else heldout)")
    p.add_argument("--max-per-class", type=integer(0), default=200,
                   help="images per class to draw episodes from (0 = every image)")
    p.add_argument("--layers", type=integer(1, 64), default=1,
                   help="SPAE pyramid layers per image (1: the top word; 2: 5 words)")
    p.add_argument("--ways", type=integer(2, 1000), nargs="+", default=[2, 5], help="classes per episode")
    p.add_argument("--episodes", type=integer(1, 100_000), default=20, help="episodes per (ways, shots)")
    p.add_argument("--settings", default="frozen7",
                   help="frozen7 (Frozen's 7 settings), quick (T-1s-0r) or labels such as T-3s-0r,T-5s-0r")
    p.add_argument("--names", nargs="+", choices=["real", "nonsense"], default=["real", "nonsense"])
    flags.decodings(p, ["likelihood"])
    p.add_argument("--format", choices=["spae", "v2l"], default="spae", help="prompt format")
    p.add_argument("--calibration", choices=["content-free", "none"], default="content-free",
                   help="likelihood ranking: subtract each name's score for an 'N/A' image, or not")
    p.add_argument("--references", nargs="*", choices=["pixels", "teacher"], default=["pixels", "teacher"],
                   help="no-LLM 1-NN references")
    flags.llm(p)
    flags.seed(p, "episode draws")
    flags.out(p, "reports/fewshot", "folder: episodes, LLM cache, tables")
    flags.quiet(p)
    p.set_defaults(func=cmd_fewshot)

    p = sub.add_parser("scene-qa", help="captioning and VQA on held-out synthetic scenes from the words")
    p.add_argument("tokenizer", help="shipped name, run folder or checkpoint trained on the scenes")
    p.add_argument("--layers", type=integer(1, 64), default=2, help="pyramid layers per image (2 = 5 words)")
    p.add_argument("--examples", type=integer(1, 1000), default=8, help="in-context examples (training scenes)")
    p.add_argument("--queries", type=integer(1, 100_000), default=60, help="held-out scenes asked about")
    flags.decodings(p, ["constrained", "open"])
    flags.llm(p)
    flags.seed(p, "which training scenes are the examples")
    flags.out(p, "reports/scene_qa", "folder: captions, tables, LLM cache")
    flags.quiet(p)
    p.set_defaults(func=cmd_scene_qa)
