"""The teacher's top-K table on a real training set: what it costs once, what it saves per step, and
whether it holds the live teacher's words.

Builds (or reads) the table of a recipe's training set, then runs the live teacher on the first
--batches training batches of the run (the loop's own `batch_indices`) and compares word for word.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_teacher_cache.py \
        --set data.dataset=../shared/data/cifar10/cifar10-train-jpeg.tar.gz --config configs/pretrained/cifar10.yaml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from spae_lab.checkpoint import create_tokenizer
    from spae_lab.config import create_config
    from spae_lab.teacher.cache import compute_top_words
    from spae_lab.training.loop import batch_indices, build_datasets, build_guide, load_batch

    overrides = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        overrides[key] = yaml.safe_load(value)
    cfg = create_config("small", overrides)
    train_set, _ = build_datasets(cfg)
    guide = build_guide(cfg, create_tokenizer(cfg), "cpu")
    start = time.process_time()
    table = guide.cache_top_words(train_set)
    read_seconds = time.process_time() - start
    sample = list(range(0, len(train_set), max(1, len(train_set) // 2048)))[:2048]
    start = time.process_time()
    compute_top_words(guide.teacher, guide.word_embeddings, torch.utils.data.Subset(train_set, sample), table.k)
    fill_seconds_per_image = (time.process_time() - start) / len(sample)
    same = total = 0
    live_seconds = lookup_seconds = 0.0
    for step in range(args.batches):
        indices = batch_indices(step, cfg.train.batch_size, len(train_set), cfg.train.seed)
        images = load_batch(train_set, indices)["image"]
        start = time.process_time()
        live = guide.top_words(images)
        live_seconds += time.process_time() - start
        start = time.process_time()
        cached = guide.top_words(images, torch.tensor(indices))
        lookup_seconds += time.process_time() - start
        same += int((live == cached).all(dim=1).sum())
        total += len(indices)
    result = {"dataset": cfg.data.dataset, "images": len(train_set), "k": table.k, "key": table.key,
              "table_read_or_build_cpu_seconds": round(read_seconds, 2),
              "table_fill_cpu_seconds_estimate": round(fill_seconds_per_image * len(train_set), 1),
              "live_teacher_ms_per_batch": round(1e3 * live_seconds / args.batches, 2),
              "lookup_ms_per_batch": round(1e3 * lookup_seconds / args.batches, 3),
              "batch_size": cfg.train.batch_size, "images_compared": total, "images_same_words": same,
              "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
