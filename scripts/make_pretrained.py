"""Ship a finished training run as a pretrained tokenizer, with its model card.

    python scripts/make_pretrained.py NAME --run RUN_DIR --command "the command that trained RUN_DIR" \
        [--set model.top_word=teacher --set "semantic.word_template=a photo of a {}"]

Copies the run's weights (float16, no optimizer state) to spae_lab/assets/pretrained/NAME.safetensors,
evaluates the *shipped* weights on the run's held-out split (never trained on) and writes the card
NAME.json beside them: data, config, steps, wall time and machine, commit, command, metrics.
`--set` changes how the shipped tokenizer *reads* images (who picks layer 1's word, how the teacher
reads a word), never its weights; the card records them as `inference_overrides`.
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
from spae_lab.checkpoint import checkpoint_step, create_tokenizer, load_tokenizer, read_checkpoint, save_checkpoint
from spae_lab.config import apply_overrides, validate
from spae_lab.training.evaluate import evaluate
from spae_lab.training.loop import build_datasets, build_guide


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _wall_minutes(run: Path) -> float | None:
    """Minutes between the run's first and last metrics records (the training wall time)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    stat = path.stat()
    started = (run / "config.json").stat().st_ctime if (run / "config.json").exists() else None
    return round((stat.st_mtime - started) / 60, 1) if started else None


def markdown_card(card: dict) -> str:
    """The card for people: what it is, how it was made, what it scores on held-out data."""
    m = card["heldout"]
    lines = [f"# `{card['name']}`: {card['description']}", "",
             f"- data: {card['data']['dataset']}; evaluated on {card['data']['heldout_images']} "
             f"images of {card['data']['heldout']}",
             f"- trained: {card['steps']} steps, {card['wall_minutes']} minutes on {card['machine']}",
             f"- commit: {card['commit']}",
             f"- reproduce: `{card['command']}`, then "
             f"`python scripts/make_pretrained.py {card['name']} --run RUN --command \"...\""
             + "".join(f" --set \"{k}={v}\"" for k, v in card.get("inference_overrides", {}).items()) + "`",
             "", "Held-out figures (the shipped float16 weights):", "",
             "| depth | " + " | ".join(str(d + 1) for d in range(len(m["psnr"]))) + " |",
             "|---|" + "---|" * len(m["psnr"]),
             "| PSNR (dB) | " + " | ".join(f"{v:.2f}" for v in m["psnr"]) + " |",
             "| distinct words of the layer | " + " | ".join(str(v) for v in m["distinct_words"]) + " |"]
    if "relevance" in m:
        lines.append("| teacher relevance of the layer's words | "
                     + " | ".join(f"{v:.3f}" for v in m["relevance"]) + " |")
    for key, label in (("caption_hit", "caption word in layers 1..d"),
                       ("class_hit", "class name or synonym in layers 1..d")):
        if key in m:
            lines.append(f"| {label} | " + " | ".join(f"{100 * v:.1f}%" for v in m[key]) + " |")
    if "relevance" in m:
        lines += ["", f"A word drawn at random from the codebook scores {m['relevance_random']:.3f}."]
    if "fewshot" in card:
        lines += ["", "Few-shot classification by SmolLM2 (real names, likelihood ranking, "
                  "average over Frozen's 7 settings):", "", card["fewshot"]["table_md"]]
        if "protocol" in card["fewshot"]:
            commands = card["fewshot"]["command"]
            commands = [commands] if isinstance(commands, str) else commands
            lines += ["", f"Protocol: {card['fewshot']['protocol']}. Commands:", "",
                      *(f"- `{c}`" for c in commands)]
    lines += ["", "Config: see the `config` of the JSON card beside this file.", ""]
    return "\n".join(lines)


# Settings that change how a trained tokenizer reads images, not what it learned.
INFERENCE_KEYS = ("model.top_word", "semantic.word_template")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="shipped name, e.g. scenes, cifar10, cifar10-lqae, digits")
    parser.add_argument("--run", required=True, help="finished run folder")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--machine", help="where it trained (default: this machine, the run's threads)")
    parser.add_argument("--heldout", type=int, help="held-out images to evaluate (default: the run's)")
    parser.add_argument("--commit", help="the commit whose code trained the run (default: HEAD)")
    parser.add_argument("--extra", help="JSON file of further figures to put on the card (few-shot)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"an inference setting of the shipped tokenizer ({', '.join(INFERENCE_KEYS)})")
    args = parser.parse_args()

    run = Path(args.run)
    model = load_tokenizer(run)
    cfg = model.experiment_config
    steps = checkpoint_step(read_checkpoint(run)[1], run)
    threads = cfg.train.num_threads or os.cpu_count()
    machine = args.machine or (f"{os.cpu_count()}-core {platform.machine()} CPU, {threads} torch "
                               f"thread(s), torch {torch.__version__}")
    overrides = dict(pair.split("=", 1) for pair in args.set)
    if unknown := sorted(set(overrides) - set(INFERENCE_KEYS)):
        parser.error(f"--set takes only {', '.join(INFERENCE_KEYS)}, got {unknown}")
    if overrides:  # the same weights in a tokenizer that reads with the new settings
        apply_overrides(cfg, overrides)
        validate(cfg)
        reader = create_tokenizer(cfg)
        reader.load_state_dict(model.state_dict())
        model = reader
    pretrained.PRETRAINED_DIR.mkdir(parents=True, exist_ok=True)
    target = pretrained.PRETRAINED_DIR / f"{args.name}.safetensors"
    save_checkpoint(target, model, None, steps, cfg, dtype=torch.float16)

    shipped = load_tokenizer(target)  # the figures are those of the file users get
    if args.heldout:
        cfg.data.heldout_images = args.heldout
    _, heldout = build_datasets(cfg)
    start = time.time()
    metrics = evaluate(shipped, heldout, guide=build_guide(cfg, shipped, "cpu"))
    card = {
        "name": args.name,
        "description": pretrained.DESCRIPTIONS.get(args.name, ""),
        "data": {"dataset": Path(cfg.data.dataset).name, "heldout_images": len(heldout),
                 "heldout": "the dataset's held-out split (never trained on)"},
        "steps": steps,
        "wall_minutes": _wall_minutes(run),
        "machine": machine,
        "commit": args.commit or _commit(),
        "command": args.command,
        "heldout": metrics,
        "eval_seconds": round(time.time() - start, 1),
        "config": cfg.to_dict(),
    }
    if overrides:
        card["inference_overrides"] = overrides
    if args.extra:
        card.update(json.loads(Path(args.extra).read_text()))
    (pretrained.PRETRAINED_DIR / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    (pretrained.PRETRAINED_DIR / f"{args.name}.md").write_text(markdown_card(card))
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB): {pretrained.headline(args.name)}")


if __name__ == "__main__":
    main()
