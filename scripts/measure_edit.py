"""Editing by words, measured: for each class word of the shipped `digits` and `cifar10`
tokenizers, swap the top word of 20 held-out images that the judge does not read as that word,
and count how often each decode depth is then read as the word (against the unedited words and a
random top word). Writes benchmarks/results/edit_cpu.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_edit.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from spae_lab import load_tokenizer
from spae_lab.generate.edit import DIGIT_WORDS, run_edit

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
KINDS = ("original", "edited", "random word")


def measure(tokenizer: str, words, images: int, out: Path) -> dict:
    model = load_tokenizer(tokenizer)
    used = [w for w in words if w in model.codebook.words]
    summaries = [run_edit(model, w, out=out / f"{tokenizer}_{w}", images=images).summary for w in used]
    return {"tokenizer": tokenizer, "words": used, "images_per_word": images,
            "judge": summaries[0]["judge"],
            **{k: np.mean([s["judged_as_word"][k] for s in summaries], 0).round(3).tolist() for k in KINDS},
            "psnr_edited_vs_original": round(float(np.mean([s["psnr_edited_vs_original"] for s in summaries])), 2)}


def markdown(rows: list[dict]) -> str:
    lines = ["| tokenizer | judge | top word | read as the word at depth 1 / 2 / 3 / 4 / 5 | "
             "full-depth PSNR edited vs unedited |", "|---|---|---|---|---|"]
    for r in rows:
        for k in KINDS:
            label = {"original": "unedited", "edited": "**swapped for the word**", "random word": "a random word"}[k]
            change = f"{r['psnr_edited_vs_original']:.1f} dB" if k == "edited" else "-"
            lines.append(f"| {r['tokenizer']} | {r['judge']} | {label} | "
                         + " / ".join(f"{100 * v:.0f}%" for v in r[k]) + f" | {change} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/edit_cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure("digits", DIGIT_WORDS, args.images, Path(tmp)),
                measure("cifar10", CIFAR10, args.images, Path(tmp))]
    text = markdown(rows)
    print(text)
    Path(f"{args.out}.json").write_text(json.dumps(rows, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(text)


if __name__ == "__main__":
    main()
