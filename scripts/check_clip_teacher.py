"""What the clip teacher ranks first over the whole codebook, per word template, on clips it never
trained on: the check to pass before it guides a tokenizer (issue 25: it must rank "moving left"
against "moving right").

    python scripts/check_clip_teacher.py [--teacher lit-clip:builtin] [--seed 0] [--clips 512] \
        [--templates "{}" "moving {}"] [--json benchmarks/results/clip_teacher_words.json]

For each template and K: the share of held-out moving scenes whose top-K words (the codebook read
through the template) hold the clip's direction word, its colour or shape word; and the share
whose top word is a direction word at all. Then the guided layers' targets as the guide sets them
(disjoint, the later layer first: `video.semantic.ClipGuide`), and the zero-shot accuracies.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from spae_lab.codebook import load_codebook
from spae_lab.config import CodebookConfig
from spae_lab.io import atomic_write_text
from spae_lab.video.data import DIRECTIONS, MovingDigits, MovingScenes
from spae_lab.video.evaluate import word_hits
from spae_lab.video.semantic import ClipGuide
from spae_lab.video.teacher import load_clip_teacher, zero_shot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="lit-clip:builtin")
    parser.add_argument("--seed", type=int, default=0, help="held-out clips of this seed")
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--templates", nargs="+", default=["{}", "moving {}"])
    parser.add_argument("--top-k", type=int, nargs="+", default=[3, 1], help="K of each guided layer (targets)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher = load_clip_teacher(args.teacher)
    codebook = load_codebook(CodebookConfig())
    clips = MovingScenes(args.clips, "heldout", args.seed)
    guide = ClipGuide(teacher, codebook, tuple(args.templates), (5,) * len(args.templates))  # its relevance
    report = {"teacher": args.teacher, "seed": args.seed, "clips": args.clips,
              "zero_shot": {"moving-scenes": zero_shot(teacher, clips),
                            "moving-digits": zero_shot(teacher, MovingDigits(args.clips, "heldout", args.seed))},
              "templates": {}}
    items = [clips[i] for i in range(len(clips))]
    batches = [torch.stack([it["video"] for it in items[s:s + 64]]) for s in range(0, len(items), 64)]
    # each template's own ranking (the guide's disjoint targets are below, under "targets")
    tops = [torch.cat(parts) for parts in zip(*([r.topk(5, dim=1).indices for r in guide.relevance(b)]
                                                for b in batches), strict=True)]
    targets = [torch.cat(parts) for parts in zip(*(ClipGuide(teacher, codebook, tuple(args.templates),
                                                             tuple(args.top_k)).top_words(b) for b in batches),
                                                 strict=True)]
    report["targets"] = {"top_k": args.top_k}
    for layer, ids in enumerate(targets, start=1):
        words = [[codebook.words[i] for i in row] for row in ids.tolist()]
        hits = [word_hits(w, it) for w, it in zip(words, items, strict=True)]
        first = [word_hits(w[:1], it) for w, it in zip(words, items, strict=True)]
        report["targets"][f"layer {layer}"] = {
            "among the targets": {k: round(sum(h[k] for h in hits) / len(hits), 4) for k in hits[0]},
            "first target": {k: round(sum(h[k] for h in first) / len(first), 4) for k in first[0]}}
    for template, top in zip(args.templates, tops, strict=True):
        words = [[codebook.words[i] for i in row] for row in top.tolist()]
        entry = {}
        for k in (1, 3, 5):
            hits = [word_hits(w[:k], it) for w, it in zip(words, items, strict=True)]
            entry[f"top{k}"] = {key: round(sum(h[key] for h in hits) / len(hits), 4) for key in hits[0]}
        entry["top1_is_a_direction_word"] = round(sum(w[0] in DIRECTIONS for w in words) / len(words), 4)
        entry["most_common_top1"] = Counter(w[0] for w in words).most_common(12)
        report["templates"][template] = entry
    print(json.dumps(report, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
