"""SmolLM2 reads clips (issue 25): VQA and few-shot classification of held-out moving scenes, from
the clip tokenizer's words beside the image tokenizer run frame by frame at the same number of
words a clip, no-LLM references and chance.

    python scripts/measure_clip_reading.py --tokenizer moving-scenes --eval-seed 7 --clips 200 \
        --episodes 20 --out benchmarks/results/video_reading

Writes into --out: vqa.csv / vqa.md (accuracy and 95% Wilson interval per question, reader and
decoding), fewshot records.csv, summary.csv/.md, table.csv/.md (Frozen's 7 settings as columns),
episodes.json, config.json; the LLM's answers in llm_cache.sqlite (a rerun asks nothing new).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from spae_lab import load_tokenizer
from spae_lab.io import atomic_write_text
from spae_lab.llm import CachedBackend, load_backend
from spae_lab.reading.episodes import FewShotConfig, select_settings
from spae_lab.reading.fewshot import paper_table, pixel_features, save_results
from spae_lab.tables import to_markdown
from spae_lab.video.data import MovingScenes
from spae_lab.video.reading import ClipTexts, FrameByFrameTexts, run_clip_fewshot, run_clip_vqa
from spae_lab.video.teacher import load_clip_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="moving-scenes")
    parser.add_argument("--image-tokenizer", default="scenes")
    parser.add_argument("--eval-seed", type=int, default=7)
    parser.add_argument("--clips", type=int, default=200, help="held-out clips (VQA queries, few-shot pool)")
    parser.add_argument("--examples", type=int, default=8, help="VQA in-context examples (training clips)")
    parser.add_argument("--episodes", type=int, default=20, help="few-shot episodes per (ways, shots)")
    parser.add_argument("--ways", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--settings", default="frozen7", help="frozen7, quick or labels such as T-1s-0r,T-3s-0r")
    parser.add_argument("--names", nargs="+", default=["real", "nonsense"], help="class names shown: real, nonsense")
    parser.add_argument("--layers", type=int, default=2, help="clip layers read (2: 2 words a clip)")
    parser.add_argument("--backend", default="hf:smollm2")
    parser.add_argument("--out", default="benchmarks/results/video_reading")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, image_model = load_tokenizer(args.tokenizer), load_tokenizer(args.image_tokenizer)
    size, frames = model.config.image_size, model.frames
    heldout = MovingScenes(args.clips, "heldout", args.eval_seed, size, frames)
    train = MovingScenes(2000, "train", args.eval_seed, size, frames)
    clip_reader = ClipTexts(model, args.layers)
    words = clip_reader.words_per_clip
    readers = {f"clip tokenizer ({words} words)": clip_reader,
               f"{args.image_tokenizer} frame by frame ({words} words)": FrameByFrameTexts(image_model, words)}
    llm = CachedBackend(load_backend(args.backend), out / "llm_cache.sqlite")
    try:
        _, vqa = run_clip_vqa(readers, llm, train, heldout, num_examples=args.examples,
                              decodings=("constrained", "likelihood"))
        atomic_write_text(out / "vqa.md", to_markdown(vqa.round(3)))
        atomic_write_text(out / "vqa.csv", vqa.to_csv(index=False))
        print(to_markdown(vqa.round(3)))
        teacher = load_clip_teacher(model.experiment_config.semantic.teacher)
        config = FewShotConfig(ways=tuple(args.ways), settings=select_settings(args.settings),
                               names=tuple(args.names), decodings=("likelihood",), episodes=args.episodes,
                               seed=args.eval_seed)
        references = {"pixels": pixel_features, "clip teacher": lambda clips: teacher.embed_images(clips)}
        fewshot = run_clip_fewshot(heldout, readers, llm, config, out, "direction", references)
    finally:
        llm.close()
    record = {"tokenizer": args.tokenizer, "image_tokenizer": args.image_tokenizer, "eval_seed": args.eval_seed,
              "clips": args.clips, "vqa_examples": args.examples,
              "readers": {k: r.description for k, r in readers.items()},
              "labels": "direction of motion", "backend": llm.describe(), "fewshot": asdict(config),
              "llm_calls": asdict(llm.stats)}
    save_results(out, fewshot.records, fewshot.summary, record)
    print(to_markdown(paper_table(fewshot.summary)))
    print(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
