"""Ship a finished clip training run as a pretrained clip tokenizer, with its model card.

    python scripts/make_pretrained_video.py NAME --run RUN_DIR --command "the command that trained RUN_DIR" \
        [--set model.top_word=teacher] [--eval-seed 7] [--clips 512] [--extra figures.json]

As scripts/make_pretrained.py does for images: the run's weights in float16 without optimizer
state go to spae_lab/assets/pretrained/NAME.safetensors; the *shipped* weights are evaluated on
held-out clips of `--eval-seed` (a seed no run trained on and no setting was chosen on), beside
the image tokenizer `scenes` run frame by frame on the same clips; the card NAME.json (data,
config, steps, wall time and machine, commit, command, figures) and NAME.md go beside them.
`--set model.top_word=teacher` changes how the shipped tokenizer *reads* clips (the clip teacher
picks the words of the head layers), never its weights; the card records it as `inference_overrides`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from spae_lab import pretrained
from spae_lab.checkpoint import checkpoint_step, load_tokenizer, read_checkpoint, save_checkpoint
from spae_lab.io import atomic_write_text
from spae_lab.video.data import MovingDigits, MovingScenes
from spae_lab.video.evaluate import evaluate_clips, frame_by_frame
from spae_lab.video.model import clip_layout_summary, with_inference_settings


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _minutes(run: Path) -> float | None:
    """Training minutes of the run: the trainer logs the minutes of its session with every record,
    from 0 again after a resume, so the sessions' last figures add up."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    minutes = [r["minutes"] for r in records if "minutes" in r]
    if not minutes:
        return None
    total = sum(before for before, after in zip(minutes, minutes[1:], strict=False) if after < before)
    return round(total + minutes[-1], 2)


def markdown_card(card: dict) -> str:
    m, f = card["heldout"], card["frame_by_frame"]
    depths = range(1, len(m["psnr"]) + 1)
    lines = [f"# `{card['name']}`: {card['description']}", "",
             f"- layout: {card['layout']}",
             f"- data: {card['data']['dataset']}, {card['data']['train_clips']} training clips of seed "
             f"{card['data']['train_seed']}; evaluated on {card['data']['heldout_clips']} held-out clips of seed "
             f"{card['data']['eval_seed']} (no run trained on it, no setting was chosen on it)",
             f"- trained: {card['steps']} steps, {card['wall_minutes']} minutes on {card['machine']}",
             f"- commit: {card['commit']}",
             f"- reproduce: `{card['command']}`, then `python scripts/make_pretrained_video.py {card['name']} "
             f"--run RUN --command \"...\""
             + "".join(f" --set {k}={v}" for k, v in card.get("inference_overrides", {}).items()) + "`",
             *([f"- note: {card['command_note']}"] if card.get("command_note") else []),
             *([f"- read with: {', '.join(f'{k} = {v}' for k, v in card['inference_overrides'].items())} (the "
                "weights were trained with the head layers' words picked by the semantic head)"]
               if card.get("inference_overrides") else []), "",
             "Held-out figures (the shipped float16 weights):", "",
             "| depth | " + " | ".join(str(d) for d in depths) + " |", "|---|" + "---|" * len(m["psnr"]),
             "| words a clip | " + " | ".join(str(c) for c in card["cumulative_words"]) + " |",
             "| PSNR (dB) | " + " | ".join(f"{v:.2f}" for v in m["psnr"]) + " |",
             "| direction word in layers 1..d | " + " | ".join(f"{100 * v:.1f}%" for v in m["direction_hit"]) + " |",
             "| colour or shape word in layers 1..d | "
             + " | ".join(f"{100 * v:.1f}%" for v in m["content_hit"]) + " |",
             "| distinct words of the layer | " + " | ".join(str(v) for v in m["distinct_words"]) + " |", "",
             f"The image tokenizer `{card['frame_by_frame_tokenizer']}` run on every frame of the same clips:", "",
             "| depth of each frame | " + " | ".join(str(d + 1) for d in range(len(f["psnr"]))) + " |",
             "|---|" + "---|" * len(f["psnr"]),
             "| words a clip | " + " | ".join(str(c) for c in f["words_per_clip"]) + " |",
             "| PSNR (dB) | " + " | ".join(f"{v:.2f}" for v in f["psnr"]) + " |",
             "| direction word among them | " + " | ".join(f"{100 * v:.1f}%" for v in f["direction_hit"]) + " |",
             "| colour or shape word among them | " + " | ".join(f"{100 * v:.1f}%" for v in f["content_hit"]) + " |"]
    for key, title in (("reading", "Reading by SmolLM2"), ("speed", "Speed")):
        if key in card:
            lines += ["", f"{title}: {card[key]}"]
    lines += ["", "Config: see the `config` of the JSON card beside this file.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="shipped name, e.g. moving-scenes")
    parser.add_argument("--run", required=True, help="finished clip run folder")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--eval-seed", type=int, default=7, help="seed of the held-out clips")
    parser.add_argument("--clips", type=int, default=512, help="held-out clips to evaluate")
    parser.add_argument("--image-tokenizer", default="scenes", help="the frame-by-frame reference")
    parser.add_argument("--extra", help="JSON file of further figures to put on the card (reading, speed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an inference setting of the shipped tokenizer (model.top_word)")
    args = parser.parse_args()

    run = Path(args.run)
    model = load_tokenizer(run)
    overrides = dict(pair.split("=", 1) for pair in args.set)
    if unknown := sorted(set(overrides) - {"model.top_word"}):
        parser.error(f"--set takes only model.top_word, got {unknown}")
    if overrides:  # the same weights in a tokenizer that reads with the new settings
        model = with_inference_settings(model, overrides)
    cfg = model.experiment_config
    steps = checkpoint_step(read_checkpoint(run)[1], run)
    target = pretrained.PRETRAINED_DIR / f"{args.name}.safetensors"
    save_checkpoint(target, model, None, steps, cfg, dtype=torch.float16)
    shipped = load_tokenizer(target)
    kind = MovingDigits if cfg.data.dataset == "moving-digits" else MovingScenes
    heldout = kind(args.clips, "heldout", args.eval_seed, cfg.model.image_size, cfg.clip.frames)
    start = time.time()
    card = {"name": args.name, "description": pretrained.DESCRIPTIONS.get(args.name, ""),
            "layout": clip_layout_summary(shipped), "cumulative_words": shipped.layout.cumulative_tokens(),
            "data": {"dataset": cfg.data.dataset, "train_clips": cfg.data.num_images, "train_seed": cfg.train.seed,
                     "heldout_clips": args.clips, "eval_seed": args.eval_seed,
                     "heldout_images": args.clips, "heldout": f"held-out clips of seed {args.eval_seed}"},
            "steps": steps, "wall_minutes": _minutes(run),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, {cfg.train.num_threads or 'auto'} torch "
                       f"thread(s), torch {torch.__version__}",
            "commit": _commit(), "command": args.command, "heldout": evaluate_clips(shipped, heldout),
            "frame_by_frame_tokenizer": args.image_tokenizer,
            "frame_by_frame": frame_by_frame(load_tokenizer(args.image_tokenizer), heldout)}
    card["eval_seconds"] = round(time.time() - start, 1)
    if overrides:
        card["inference_overrides"] = overrides
    card["config"] = cfg.to_dict()
    if args.extra:
        card.update(json.loads(Path(args.extra).read_text()))
    atomic_write_text(pretrained.PRETRAINED_DIR / f"{args.name}.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(pretrained.PRETRAINED_DIR / f"{args.name}.md", markdown_card(card))
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB): {pretrained.headline(args.name)}")


if __name__ == "__main__":
    main()
