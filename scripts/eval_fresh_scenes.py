"""Evaluate trained tokenizers on synthetic scenes of another seed: a split that no run trained on
and no setting was chosen on (training runs report on the held-out scenes of their own seed).

    .venv/bin/python scripts/eval_fresh_scenes.py RUN_OR_CHECKPOINT [...] [--seed 4242] [--count 512]

Prints, per checkpoint, PSNR per depth, the teacher relevance of the chosen words per layer and the
fraction of scenes whose first d layers hold the caption's colour or shape word.
"""

from __future__ import annotations

import argparse
import json

import torch

from spae_lab.checkpoint import load_tokenizer
from spae_lab.config import create_config
from spae_lab.data import make_dataset
from spae_lab.training.evaluate import evaluate
from spae_lab.training.loop import build_guide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--teacher", default="lit:builtin")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = []
    for path in args.checkpoints:
        model = load_tokenizer(path)
        data = make_dataset("scenes", model.config.image_size, split="heldout", seed=args.seed,
                            num_images=args.count)
        guide = build_guide(create_config("small", {"semantic.teacher": args.teacher}), model, "cpu")
        result = evaluate(model, data, guide=guide)
        results.append(result)
        print(path, json.dumps({k: result[k] for k in ("psnr", "relevance", "caption_hit") if k in result}))
    if len(results) > 1:  # several seeds of one recipe: mean and spread (min-max)
        def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
            v = torch.tensor(values) * scale
            return f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"

        depths = len(results[0]["psnr"])
        print(f"mean (min-max) over {len(results)} checkpoints, {args.count} scenes of seed {args.seed}:")
        print("  PSNR by depth (dB): " + " / ".join(
            spread([r["psnr"][d] for r in results]) for d in range(depths)))
        print("  caption word in layers 1-2 (%): " + spread([r["caption_hit"][1] for r in results], 100, 0))


if __name__ == "__main__":
    main()
