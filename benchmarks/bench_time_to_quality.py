"""Time to quality: the CPU-minutes the `cifar10` recipe takes to reach held-out PSNR and class-word
milestones, trained from scratch, as a curve.

Trains configs/pretrained/cifar10.yaml on CIFAR-10 train with `spae_lab.training.loop.train` and evaluates
every --eval-every steps on the validation split carved from the training data (the 512 evenly
spaced images of the held-out 10% of each class that training never sees; the CIFAR-10 test split
is never read). After each evaluation it records the process CPU time spent on training so far:
the training steps, checkpoints and figures, without the evaluations themselves and without the
one-off setup of each invocation (decoding the archive, the teacher's top-words table), which are
recorded apart. With one torch thread a CPU-minute is a minute of one core, whatever else the
machine runs; wall minutes are recorded beside them.

Resumable and budgeted: the run folder holds the checkpoint and ttq.jsonl (one line per evaluation);
a later call continues from the last checkpoint for another --minutes of wall time, and the curve
continues where it stopped. The results (JSON, Markdown, PNG) are written after every call;
--plot-only redraws them from the run folder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_time_to_quality.py --minutes 60 \
        --set train.num_threads=1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-train-jpeg.tar.gz"
PSNR_MILESTONES = (18.0, 20.0, 21.0, 22.0, 23.0, 23.5)  # dB, held-out, decoded from every layer
CLASS_MILESTONES = (0.1, 0.2, 0.3, 0.35, 0.5)  # share of images whose layer-1 word is their class
LOG_NAME = "ttq.jsonl"


class Clock:
    """Process CPU time and wall time of training, without evaluations and setup."""

    def __init__(self, offset_cpu: float = 0.0, offset_wall: float = 0.0):
        self.offset_cpu, self.offset_wall = offset_cpu, offset_wall
        self.start_cpu = self.start_wall = None  # end of this invocation's setup
        self.eval_cpu = self.eval_wall = 0.0
        self.setup_cpu = self.setup_wall = None
        self.process_start_wall = time.monotonic()

    def started(self) -> None:
        if self.start_cpu is None:
            self.start_cpu, self.start_wall = time.process_time(), time.monotonic()
            self.setup_cpu = self.start_cpu
            self.setup_wall = self.start_wall - self.process_start_wall

    def train_minutes(self) -> tuple[float, float]:
        cpu = time.process_time() - self.start_cpu - self.eval_cpu
        wall = time.monotonic() - self.start_wall - self.eval_wall
        return self.offset_cpu + cpu / 60, self.offset_wall + wall / 60


def instrument(clock: Clock) -> None:
    """Time evaluations apart, and note where setup ends (the first evaluation or step)."""
    train_module = sys.modules["spae_lab.training.loop"]
    evaluate, step = train_module.evaluate, train_module.training_step

    def timed_evaluate(*args, **kwargs):
        clock.started()
        cpu, wall = time.process_time(), time.monotonic()
        try:
            return evaluate(*args, **kwargs)
        finally:
            clock.eval_cpu += time.process_time() - cpu
            clock.eval_wall += time.monotonic() - wall

    def first_step(*args, **kwargs):
        clock.started()
        return step(*args, **kwargs)

    train_module.evaluate, train_module.training_step = timed_evaluate, first_step


def read_log(path: Path, up_to_step: int | None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def checkpoint_step(run: Path) -> int | None:
    from spae_lab.checkpoint import CHECKPOINT_NAME, read_checkpoint
    from spae_lab.checkpoint import checkpoint_step as step_of

    path = run / CHECKPOINT_NAME
    if not path.exists():
        return None
    _, metadata = read_checkpoint(path)
    return step_of(metadata, path)


def run_budget(args, overrides: dict) -> None:
    import torch

    from spae_lab.config import create_config
    from spae_lab.training.loop import train

    cfg = create_config("small", overrides)
    run = Path(args.out)
    log_path = run / LOG_NAME
    start = checkpoint_step(run)
    rows = read_log(log_path, start if start is not None else -1)  # what the checkpoint continues
    last = rows[-1] if rows else {"train_cpu_minutes": 0.0, "train_wall_minutes": 0.0}
    clock = Clock(last["train_cpu_minutes"], last["train_wall_minutes"])
    instrument(clock)
    sessions = read_log(run / "ttq_sessions.jsonl", None)

    def on_record(history: list[dict]) -> None:
        record = history[-1]
        if "eval" not in record:
            return
        cpu, wall = clock.train_minutes()
        rows.append({"step": record["step"], "train_cpu_minutes": round(cpu, 3),
                     "train_wall_minutes": round(wall, 3), "psnr": record["eval"]["psnr"],
                     "class_hit": record["eval"].get("class_hit"),
                     "relevance_rank": record["eval"].get("relevance_rank")})
        log_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"step {record['step']}: {cpu:.1f} CPU-min, {wall:.1f} wall-min, PSNR "
              f"{record['eval']['psnr'][-1]:.2f} dB, class word {record['eval'].get('class_hit', [0])[0]:.3f}",
              flush=True)

    before = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = train(cfg, run, resume="auto", progress=not args.quiet, on_record=on_record)
    sessions.append({"from_step": start or 0, "to_step": result.step, "commit": commit,
                     "setup_cpu_seconds": round(clock.setup_cpu, 1),
                     "setup_wall_seconds": round(clock.setup_wall, 1),
                     "eval_cpu_seconds": round(clock.eval_cpu, 1), "threads": torch.get_num_threads(),
                     "load_average": [before, os.getloadavg()[0]]})
    (run / "ttq_sessions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))


def milestones(rows: list[dict]) -> dict:
    """The first evaluation at or past each milestone (evaluations are --eval-every steps apart)."""
    def first(value, threshold):
        hit = next((r for r in rows if value(r) is not None and value(r) >= threshold), None)
        return None if hit is None else {k: hit[k] for k in ("step", "train_cpu_minutes", "train_wall_minutes")}

    return {"psnr_db": {str(t): first(lambda r: r["psnr"][-1], t) for t in PSNR_MILESTONES},
            "class_word_layer1": {str(t): first(lambda r: (r["class_hit"] or [None])[0], t)
                                  for t in CLASS_MILESTONES}}


# The card of the shipped weights as first shipped (commit 4da36e1), when layer 1 was read from the
# trained head as in training's evaluations; later cards read the same weights through the teacher.
HEAD_READ_CARD = "4da36e1"


def shipped_card() -> dict:
    """The shipped cifar10 tokenizer: its training cost and its card's held-out figures (as shipped,
    and as first shipped, read like training's own evaluations)."""
    card = json.loads((ROOT / "spae_lab" / "assets" / "pretrained" / "cifar10.json").read_text())
    threads = card["config"]["train"]["num_threads"]
    out = {"steps": card["steps"], "wall_minutes": card["wall_minutes"], "threads": threads,
           "cpu_minutes_at_most": round(card["wall_minutes"] * threads, 1), "commit": card["commit"],
           "psnr_full_depth": card["heldout"]["psnr"][-1], "class_hit_layer1": card["heldout"]["class_hit"][0],
           "inference_overrides": card.get("inference_overrides", {}), "machine": card["machine"]}
    first = subprocess.run(["git", "show", f"{HEAD_READ_CARD}:spae_lab/assets/pretrained/cifar10.json"],
                           cwd=ROOT, capture_output=True, text=True)
    if first.returncode == 0:
        heldout = json.loads(first.stdout)["heldout"]
        out["head_read"] = {"commit": HEAD_READ_CARD, "psnr_full_depth": heldout["psnr"][-1],
                            "class_hit_layer1": heldout["class_hit"][0]}
    return out


def card_reading(run: Path, card: dict) -> dict | None:
    """The finished run's weights read with the card's inference settings (as make_pretrained.py
    reads the shipped file), on the same validation images: the card's own figures, for this run."""
    from spae_lab.checkpoint import create_tokenizer, load_tokenizer
    from spae_lab.config import apply_overrides, validate
    from spae_lab.training.evaluate import evaluate
    from spae_lab.training.loop import build_datasets, build_guide

    saved = run / "card_reading.json"
    step = checkpoint_step(run)
    if step is None or step < card["steps"]:
        return None
    if saved.exists() and json.loads(saved.read_text())["step"] == step:
        return json.loads(saved.read_text())
    model = load_tokenizer(run)
    cfg = model.experiment_config
    if card["inference_overrides"]:
        apply_overrides(cfg, card["inference_overrides"])
        validate(cfg)
        reader = create_tokenizer(cfg)
        reader.load_state_dict(model.state_dict())
        model = reader.eval()
    _, heldout = build_datasets(cfg)
    metrics = evaluate(model, heldout, guide=build_guide(cfg, model, "cpu"))
    result = {"step": step, "psnr": metrics["psnr"], "class_hit": metrics.get("class_hit"),
              "inference_overrides": card["inference_overrides"]}
    saved.write_text(json.dumps(result, indent=2))
    return result


def write_results(run: Path, prefix: Path, overrides: dict) -> dict:
    rows = read_log(run / LOG_NAME, None)
    sessions = read_log(run / "ttq_sessions.jsonl", None)
    card = shipped_card()
    reading = card_reading(run, card)
    reached = None
    if reading is not None and reading["psnr"][-1] >= card["psnr_full_depth"] - 0.01 and \
            reading["class_hit"][0] >= card["class_hit_layer1"]:
        last = next(r for r in rows if r["step"] == reading["step"])
        reached = {k: last[k] for k in ("step", "train_cpu_minutes", "train_wall_minutes")}
    head = card.get("head_read")
    head_reached = None
    for r in rows if head else []:  # training's own evaluations against the first card's figures
        if r["psnr"][-1] >= head["psnr_full_depth"] - 0.01 and (r["class_hit"] or [0])[0] >= head["class_hit_layer1"]:
            head_reached = {k: r[k] for k in ("step", "train_cpu_minutes", "train_wall_minutes")}
            break
    commit = ", ".join(dict.fromkeys(s.get("commit", "?") for s in sessions))  # the code that trained
    result = {"recipe": "configs/pretrained/cifar10.yaml", "overrides": overrides, "machine":
              f"{platform.machine()}, {os.cpu_count()} CPUs", "commit": commit, "curve": rows,
              "sessions": sessions, "milestones": milestones(rows), "shipped_cifar10": card,
              "card_reading": reading, "card_figures_reached": reached, "head_read_figures_reached": head_reached}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2))
    prefix.with_suffix(".md").write_text(markdown(result))
    if rows:
        plot(result, prefix.with_suffix(".png"))
    return result


def markdown(result: dict) -> str:
    card, rows = result["shipped_cifar10"], result["curve"]
    lines = ["Time to quality, `cifar10` recipe from scratch (validation split carved from CIFAR-10 train), "
             f"commit {result['commit']}.", "", "| milestone | step | train CPU-minutes | train wall-minutes |",
             "|---|---:|---:|---:|"]
    for kind, label in (("psnr_db", "held-out PSNR >= {} dB (all layers)"),
                        ("class_word_layer1", "class word in layer 1 >= {}")):
        for t, hit in result["milestones"][kind].items():
            cells = (f"{hit['step']} | {hit['train_cpu_minutes']:.1f} | {hit['train_wall_minutes']:.1f}"
                     if hit else "not reached | - | -")
            lines.append(f"| {label.format(t)} | {cells} |")
    if rows:
        last = rows[-1]
        lines += ["", f"Last evaluation: step {last['step']}, {last['train_cpu_minutes']:.1f} CPU-minutes, PSNR per "
                  f"depth {last['psnr']}, class word per depth {last['class_hit']}."]
    reached, head, head_reached = result["card_figures_reached"], card.get("head_read"), \
        result["head_read_figures_reached"]
    lines += ["", f"Shipped `cifar10` tokenizer: {card['steps']} steps, {card['wall_minutes']} wall-minutes at "
              f"{card['threads']} thread (at most {card['cpu_minutes_at_most']} CPU-minutes; trained at commit "
              f"{card['commit']}); its card: {card['psnr_full_depth']} dB from all layers, class word in layer 1 "
              f"{card['class_hit_layer1']}" + (f" (read with {card['inference_overrides']})"
                                               if card["inference_overrides"] else "") + "."]
    if head:
        lines.append(f"- The same weights as first shipped (card at {head['commit']}, layer 1 read from the trained "
                     f"head, as training evaluates): {head['psnr_full_depth']} dB, class word "
                     f"{head['class_hit_layer1']}. This run reached both: "
                     + (f"step {head_reached['step']}, {head_reached['train_cpu_minutes']:.1f} CPU-minutes."
                        if head_reached else "not yet."))
    reading = result["card_reading"]
    if reading:
        lines.append(f"- This run's step-{reading['step']} weights read as the card reads: {reading['psnr'][-1]} dB, "
                     f"class word {reading['class_hit'][0]}: the card's figures "
                     + (f"reached at {reached['train_cpu_minutes']:.1f} CPU-minutes." if reached else "not reached."))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, card = result["curve"], result["shipped_cifar10"]
    cpu = [r["train_cpu_minutes"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for depth, style in ((0, ":"), (1, "-."), (4, "-")):
        left.plot(cpu, [r["psnr"][depth] for r in rows], style, marker=".", label=f"{depth + 1} layer(s)")
    head = card.get("head_read", card)
    left.axhline(head["psnr_full_depth"], color="grey", lw=0.8)
    left.set(xlabel="training CPU-minutes (1 thread)", ylabel="held-out PSNR (dB)", title="reconstruction")
    right.plot(cpu, [(r["class_hit"] or [0])[0] for r in rows], marker=".", label="layer 1")
    right.axhline(head["class_hit_layer1"], color="grey", lw=0.8)
    right.set(xlabel="training CPU-minutes (1 thread)", ylabel="class word in the image's tokens",
              title="class word (layer 1)")
    for ax in (left, right):
        ax.axvline(card["cpu_minutes_at_most"], color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    shipped = card["cpu_minutes_at_most"]
    right.text(shipped, 0.02, f"shipped run: these figures\nafter <= {shipped:.0f} CPU-min ", fontsize=7,
               color="grey", ha="right")
    left.text(0.5, head["psnr_full_depth"] - 0.2, "shipped weights", fontsize=7, color="grey", va="top")
    fig.suptitle(f"cifar10 recipe from scratch, validation split (commit {result['commit']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "pretrained" / "cifar10.yaml"))
    parser.add_argument("--dataset", default=str(DATASET))
    parser.add_argument("--out", default=str(ROOT / "runs" / "ttq_cifar10"), help="run folder (resumed)")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this call")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "time_to_quality_cifar10"))
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    overrides = yaml.safe_load(Path(args.config).read_text()) or {}
    overrides.update({"data.dataset": args.dataset, "train.eval_every": args.eval_every,
                      "train.max_minutes": args.minutes})
    for pair in args.set:
        key, _, value = pair.partition("=")
        overrides[key] = yaml.safe_load(value)
    if not args.plot_only:
        run_budget(args, overrides)
    recorded = {k: v for k, v in overrides.items() if k not in ("train.max_minutes", "data.dataset")}
    result = write_results(Path(args.out), Path(args.results), recorded)
    print(markdown(result))


if __name__ == "__main__":
    main()
