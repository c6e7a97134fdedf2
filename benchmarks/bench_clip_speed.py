"""Loading plus encoding one clip on a CPU (issue 25's speed bar: under 2 s).

Each repeat is a fresh Python process (nothing warm but the disk cache and spae_lab's own cache:
the converted SmolLM2 codebook), one torch thread, timing separately:
- imports (`import torch, spae_lab...`), reported apart: every Python program pays them once;
- `load_tokenizer(NAME)`: the shipped weights, config and frozen codebook (the teacher too when the
  tokenizer reads its top words through it);
- reading a clip file (GIF and MP4: 8 frames of 32 px, written by this script from a held-out
  moving scene) and encoding it into its pyramid of words.
The baseline, timed the same way in the same run: the image tokenizer (`--image-tokenizer`, default
`scenes`) loaded and run on the clip's 8 frames; the ratio is the clip tokenizer's time over it.

    .venv/bin/python benchmarks/bench_clip_speed.py [--tokenizer moving-scenes] [--repeats 5] \
        [--json benchmarks/results/clip_speed_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads(1)
from spae_lab import load_tokenizer
from spae_lab.video.readers import load_clip
imported = time.perf_counter()
model = load_tokenizer(sys.argv[1])
loaded = time.perf_counter()
frames = int(sys.argv[3])  # 0: a clip tokenizer; else an image tokenizer on that many frames
clip = load_clip(sys.argv[2], model.config.image_size, getattr(model, "frames", frames))
read = time.perf_counter()
pyramid = model.encode(clip.transpose(0, 1) if frames else clip[None])
encoded = time.perf_counter()
print(json.dumps({"imports_s": imported - start, "load_tokenizer_s": loaded - imported, "read_clip_s": read - loaded,
                  "encode_s": encoded - read, "load_read_encode_s": encoded - imported,
                  "words": pyramid.to_text(2)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="moving-scenes")
    parser.add_argument("--image-tokenizer", default="scenes", help="the baseline, run frame by frame")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here (and a .md beside it)")
    args = parser.parse_args()

    import torch

    from spae_lab import load_tokenizer
    from spae_lab.io import atomic_write_text
    from spae_lab.video.data import MovingScenes
    from spae_lab.video.readers import save_clip

    model = load_tokenizer(args.tokenizer)  # fills spae_lab's cache (the codebook) before timing
    clip = MovingScenes(1, "heldout", 7, model.config.image_size, model.frames)[0]["video"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".gif", ".mp4"):
            path = save_clip(clip, Path(folder) / f"clip{suffix}")
            for label, name, frames in (("clip tokenizer", args.tokenizer, 0),
                                        (f"{args.image_tokenizer} frame by frame", args.image_tokenizer, model.frames)):
                runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, name, str(path), str(frames)], env=env,
                                                  capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                        for _ in range(args.repeats)]
                results[f"{suffix} {label}"] = {key: round(statistics.median(r[key] for r in runs), 3)
                                                for key in runs[0] if key.endswith("_s")}
            ours = results[f"{suffix} clip tokenizer"]
            theirs = results[f"{suffix} {args.image_tokenizer} frame by frame"]
            ours["ratio_to_frame_by_frame"] = round(ours["load_read_encode_s"] / theirs["load_read_encode_s"], 2)
    record = {"tokenizer": args.tokenizer, "repeats": args.repeats, "statistic": "median of fresh processes",
              "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, 1 torch thread, torch {torch.__version__}",
              "load_average_1min": round(os.getloadavg()[0], 2), "results": results}
    print(json.dumps(record, indent=2))
    if args.json:
        out = Path(args.json)
        rows = ["| file, tokenizer | imports (s) | load_tokenizer (s) | read clip (s) | encode (s) | "
                "load + read + encode (s) | ratio to frame by frame |", "|---|---|---|---|---|---|---|"]
        rows += [f"| {k} | {v['imports_s']} | {v['load_tokenizer_s']} | {v['read_clip_s']} | {v['encode_s']} | "
                 f"**{v['load_read_encode_s']}** | {v.get('ratio_to_frame_by_frame', '')} |"
                 for k, v in results.items()]
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), f"# Loading and encoding one clip ({args.tokenizer})\n\n"
                          f"{record['machine']}, load average {record['load_average_1min']}, median of "
                          f"{args.repeats} fresh processes.\n\n" + "\n".join(rows) + "\n")

if __name__ == "__main__":
    main()
