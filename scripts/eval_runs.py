"""Held-out figures of training runs, optionally read with other inference settings.

    python scripts/eval_runs.py runs/cifar10 runs/cifar10_s1 runs/cifar10_s2 \\
        --dataset PATH/cifar10-train-jpeg.tar.gz --set model.top_word=teacher \\
        --set "semantic.word_template=a photo of a {}"

Each run is evaluated on its own held-out split (never trained on) with the weights it trained;
`--set` changes only how it reads images (scripts/make_pretrained.py INFERENCE_KEYS). Prints one
JSON line per run, then the mean (min-max) over the runs.
"""

from __future__ import annotations

import argparse
import json

import torch

from spae_lab.checkpoint import create_tokenizer, load_tokenizer
from spae_lab.config import apply_overrides, validate
from spae_lab.training.evaluate import evaluate
from spae_lab.training.loop import build_datasets

INFERENCE_KEYS = ("model.top_word", "semantic.word_template")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--dataset", help="where the runs' dataset is on this machine (folder or archive)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"an inference setting ({', '.join(INFERENCE_KEYS)})")
    args = parser.parse_args()
    overrides = dict(pair.split("=", 1) for pair in args.set)
    if unknown := sorted(set(overrides) - set(INFERENCE_KEYS)):
        parser.error(f"--set takes only {', '.join(INFERENCE_KEYS)}, got {unknown}")
    results = []
    for run in args.runs:
        trained = load_tokenizer(run)
        cfg = trained.experiment_config
        if args.dataset:
            cfg.data.dataset = args.dataset
        apply_overrides(cfg, overrides)
        validate(cfg)
        model = create_tokenizer(cfg)
        model.load_state_dict(trained.state_dict())
        _, heldout = build_datasets(cfg)
        figures = evaluate(model.eval(), heldout)
        row = {"run": run, "psnr": figures["psnr"]}
        for key in ("class_hit", "caption_hit"):
            if key in figures:
                row[key] = figures[key]
        results.append(row)
        print(json.dumps(row), flush=True)
    for key in ("psnr", "class_hit", "caption_hit"):
        if all(key in r for r in results):
            per_depth = torch.tensor([r[key] for r in results])
            scale = 100 if key != "psnr" else 1
            print(key, " / ".join(f"{scale * m:.1f} ({scale * lo:.1f}-{scale * hi:.1f})" for m, lo, hi in zip(
                per_depth.mean(0).tolist(), per_depth.min(0).values.tolist(), per_depth.max(0).values.tolist(),
                strict=True)))


if __name__ == "__main__":
    main()
