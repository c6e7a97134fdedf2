"""Commands that run the workbench: demo (the README's main job) and report (notebooks -> HTML)."""

from __future__ import annotations

from spae_lab.cli import flags
from spae_lab.cli.flags import integer, number
from spae_lab.cli.tokenizer import parse_sets


def cmd_demo(args) -> int:
    from spae_lab.cli.demo import run_demo
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
    parameters.update(parse_sets(args.param or []))
    runs = run_reports(notebooks, parameters, per_notebook, reports_dir=args.out, tag=args.tag,
                       hide_code=not args.show_code, timeout=args.timeout)
    print(summarize_runs(runs, args.out))
    return 1 if any(r.status != "succeeded" for r in runs) else 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: the shipped tokenizers' words, reconstructions, few-shot "
                       "reading and the notebook reports")
    flags.out(p, "runs/demo", "folder for figures, few-shot tables (and --train's run)")
    p.add_argument("--train", action="store_true",
                   help="train the scenes tokenizer from scratch first (the shipped recipe, minutes)")
    p.add_argument("--steps", type=integer(1, 10_000_000), help="with --train: steps (default: the recipe's)")
    p.add_argument("--minutes", type=number(0, above=True), help="with --train: optional wall-clock budget")
    p.add_argument("--fresh", action="store_true", help="with --train: retrain even if --out holds a checkpoint")
    p.add_argument("--episodes", type=integer(1, 10_000), default=20,
                   help="few-shot episodes per way (each way's intervals are printed beside it)")
    p.add_argument("--no-fewshot", dest="no_fewshot", action="store_true", help="skip the few-shot part")
    p.add_argument("--reports", default="reports", help="folder of the notebook reports")
    p.add_argument("--no-reports", dest="no_reports", action="store_true", help="skip the notebook reports")
    p.add_argument("--notebook-timeout", dest="notebook_timeout", type=number(0, above=True), default=300,
                   help="seconds one notebook cell may run")
    flags.quiet(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="run notebooks with papermill into reports/ (HTML, config.json, index)")
    p.add_argument("notebooks", nargs="*", help="names or paths (default: every notebook); e.g. tour 03")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                   help="parameter (YAML value) for every notebook that declares KEY")
    p.add_argument("-f", "--file", help="YAML parameters: top-level keys, plus `notebooks: {name: {...}}`")
    p.add_argument("--tag", default="default", help="run name: reports/<date>_<notebook>_<tag>/")
    flags.out(p, "reports", "reports folder")
    p.add_argument("--show-code", dest="show_code", action="store_true", help="keep code cells in the HTML")
    p.add_argument("--timeout", type=number(0, above=True), help="seconds one cell may run (default 600)")
    p.add_argument("--notebooks-dir", dest="notebooks_dir", help="where to look for notebooks (./notebooks)")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters")
    p.add_argument("--index-only", dest="index_only", action="store_true", help="only rewrite index.html")
    p.set_defaults(func=cmd_report)
