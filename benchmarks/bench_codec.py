"""Encode (images -> token pyramid) and decode (all layers -> images) throughput of a preset's
tokenizer, images/s at batch 1 and 64 (untrained weights: the cost does not depend on them).
Medians of one run, encode and decode interleaved.

    .venv/bin/python benchmarks/bench_codec.py [--preset small] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, load_average  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from spae_lab.codebook import load_codebook
    from spae_lab.config import create_config
    from spae_lab.model import SPAE

    cfg = create_config(args.preset)
    torch.manual_seed(0)
    model = SPAE(cfg.model, load_codebook(cfg.codebook)).eval()
    load_before = load_average()
    rows = []
    for batch in args.batch_sizes:
        images = torch.rand(batch, 3, cfg.model.image_size, cfg.model.image_size)
        pyramid = model.encode(images)
        t = interleaved_medians({"encode": lambda images=images: model.encode(images),
                                 "decode": lambda p=pyramid: model.decode(p)}, args.repeats)
        rows.append({"batch_size": batch, "encode_seconds": t["encode"], "decode_seconds": t["decode"],
                     "encode_images_per_second": batch / t["encode"],
                     "decode_images_per_second": batch / t["decode"]})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{load_before:.2f} -> {load_average():.2f}; preset {args.preset}, "
          f"{model.layout.cumulative_tokens()[-1]} tokens/image")
    print(f"{'batch':>5s} {'encode img/s':>13s} {'decode img/s':>13s}")
    for r in rows:
        print(f"{r['batch_size']:5d} {r['encode_images_per_second']:13.1f} {r['decode_images_per_second']:13.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "preset": args.preset,
                       "load_average": [load_before, load_average()], "codec": rows}, f, indent=2)


if __name__ == "__main__":
    main()
