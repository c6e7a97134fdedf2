"""SmolLM2 writes clips (issue 25): in-context continuation of held-out moving scenes from their
first frames, judged on the later frames against copying the last frame and the no-LLM fill.

    python scripts/measure_clip_writing.py --tokenizer moving-scenes --eval-seed 7 --clips 30 --layers 6 \
        --out benchmarks/results/video_writing

Writes summary.json and results.csv (one row per clip: PSNR of the later frames for every
method, the words written in layers 1-2) into --out, the LLM's answers in llm_cache.sqlite.
"""

from __future__ import annotations

import argparse
import json

import torch

from spae_lab import load_tokenizer
from spae_lab.generate.decode import DecodeConfig
from spae_lab.video.data import MovingScenes
from spae_lab.video.writing import ContinuationConfig, run_continuation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="moving-scenes")
    parser.add_argument("--eval-seed", type=int, default=7)
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--known-frames", type=int, default=4)
    parser.add_argument("--vocabulary", default="position", choices=["codebook", "context", "position", "known"])
    parser.add_argument("--seed", type=int, default=0, help="which training clips are the examples")
    parser.add_argument("--backend", default="hf:smollm2")
    parser.add_argument("--out", default="benchmarks/results/video_writing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_tokenizer(args.tokenizer)
    size, frames = model.config.image_size, model.frames
    config = ContinuationConfig(known_frames=args.known_frames, examples=args.examples, clips=args.clips,
                                layers=args.layers, decode=DecodeConfig(vocabulary=args.vocabulary), seed=args.seed)
    result = run_continuation(model, MovingScenes(2000, "train", args.eval_seed, size, frames),
                              MovingScenes(args.clips, "heldout", args.eval_seed, size, frames), args.backend,
                              args.out, config)
    print(json.dumps(result.summary, indent=1, default=str))


if __name__ == "__main__":
    main()
