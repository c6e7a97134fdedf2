"""The reconstruction and word bars of clip tokenizers, on held-out clips of a seed no run trained on
and no setting was chosen on (issue 25), beside the image tokenizer run frame by frame.

    python scripts/eval_clip_runs.py runs/video_s0 runs/video_s1 [--eval-seed 7] [--clips 512] \
        [--top-word head|teacher] [--json benchmarks/results/video_bars.json]

Per run: PSNR by depth, the direction word and a colour or shape word among the words of layers
1..d, distinct words. Then the mean and the spread (min-max) over the runs, and `scenes` frame by
frame on the same clips (its depth d costs 8 x its words of d layers) with the depth whose word
count equals the clip tokenizer's full depth.
"""

from __future__ import annotations

import argparse
import json

import torch

from spae_lab.checkpoint import load_tokenizer
from spae_lab.io import atomic_write_text
from spae_lab.video.data import MovingScenes
from spae_lab.video.evaluate import evaluate_clips, frame_by_frame
from spae_lab.video.model import with_inference_settings


def _spread(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="clip run folders, checkpoint files or shipped names")
    parser.add_argument("--eval-seed", type=int, default=7)
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--top-word", choices=["head", "teacher"], help="who picks the head layers' words")
    parser.add_argument("--image-tokenizer", default="scenes")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        model = load_tokenizer(run)
        if args.top_word:
            model = with_inference_settings(model, {"model.top_word": args.top_word}).eval()
        clips = MovingScenes(args.clips, "heldout", args.eval_seed, model.config.image_size, model.frames)
        figures = evaluate_clips(model, clips)
        rows.append({"run": str(run), "words": model.layout.cumulative_tokens(), **figures})
        print(json.dumps({k: rows[-1][k] for k in ("run", "psnr", "direction_hit", "content_hit")}), flush=True)
    summary = {key: [_spread([r[key][d] for r in rows]) for d in range(len(rows[0][key]))]
               for key in ("psnr", "direction_hit", "content_hit", "both_hit")}
    image = frame_by_frame(load_tokenizer(args.image_tokenizer), clips)
    report = {"eval_seed": args.eval_seed, "clips": args.clips, "top_word": args.top_word, "runs": rows,
              "mean_and_range": summary, "frame_by_frame": {"tokenizer": args.image_tokenizer, **image}}
    print(json.dumps({"mean_and_range": summary, "frame_by_frame": image}, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
