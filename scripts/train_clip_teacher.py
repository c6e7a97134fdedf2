"""Train the clip teacher (a small 2D+1D tower against the locked MiniLM text tower) and check it.

    python scripts/train_clip_teacher.py --out runs/clip_teacher [--steps 2000] [--seed 0]
    cp runs/clip_teacher/teacher.safetensors spae_lab/assets/lit_clip_teacher.safetensors   # ship it

The defaults of `spae_lab.video.teacher.ClipTeacherConfig` are the shipped teacher's recipe. Writes
teacher.safetensors and metrics.json (zero-shot accuracy on held-out clips of the seed) into --out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from spae_lab.video.teacher import ClipTeacherConfig, train_clip_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/clip_teacher")
    parser.add_argument("--steps", type=int, default=ClipTeacherConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = train_clip_teacher(replace(ClipTeacherConfig(), steps=args.steps, seed=args.seed, num_threads=1),
                                args.out, progress=False)
    print(json.dumps({"zero_shot": result["zero_shot"], "minutes": result["minutes"]}))


if __name__ == "__main__":
    main()
