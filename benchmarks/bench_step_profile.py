"""Where a training step's time goes: the `small` preset at batch 32, phase by phase, under
torch.profiler, on a quiet machine and under a fixed background load (two busy processes).

Three steps, taking turns: "plain" (the plain VQ step of bench_train_step.py, the reference),
"before" (the teacher's forward in every step, the search in one 64 MB score buffer with torch's
argmax: the SPAE step as issue 16 found it) and "after" (the teacher's top-K words read from the
table computed once per training set, the cache-sized search with its vectorised argmax).

Phases: data (batch indices, decoding, collation), encoder, teacher (the top-K words of the
batch: the teacher's forward, or a lookup in the cached table), search (the nearest-word
products and argmaxes), SAQ bookkeeping (the rest of the quantizer: region means, targets,
gathers of the chosen words, running sums, commitment terms), forward other (projections into
search space, the semantic head, the decode depth gather), semantic loss, pixel losses,
decoder, backward, optimizer (gradient clipping, AdamW, zeroing). Times are per step, from the
profiler's user ranges (`record_function`), averaged over the profiled steps; the profiler adds
overhead, so the un-profiled median step is given beside them.

The step is the training loop's (`spae_lab.training.loop.training_step`), on CIFAR-10 images through the
same dataset code as training (the 300-image sample that ships with the package).

    .venv/bin/python benchmarks/bench_step_profile.py --json benchmarks/results/step_profile_cpu.json \
        --markdown benchmarks/results/step_profile_cpu.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BackgroundLoad, load_average, write_results  # noqa: E402

PHASES = ("data", "encoder", "teacher", "search", "SAQ bookkeeping", "forward other", "semantic loss",
          "pixel losses", "decoder", "backward", "optimizer")


class _Range:
    """Opens a profiler range in a forward pre-hook and closes it in the forward hook."""

    def __init__(self, module: torch.nn.Module, name: str):
        self.name, self.stack = name, []
        module.register_forward_pre_hook(self.enter)
        module.register_forward_hook(self.exit)

    def enter(self, *_):
        rf = record_function(self.name)
        rf.__enter__()
        self.stack.append(rf)

    def exit(self, *_):
        self.stack.pop().__exit__(None, None, None)


def _wrap(fn, name: str):
    def wrapped(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapped


def instrument(model, guide) -> None:
    """Label the phases of the model's forward and of the losses (hooks and wrappers only: the
    step itself is unchanged)."""
    import spae_lab.losses as losses

    _Range(model.encoder, "encoder")
    _Range(model.decoder, "decoder")
    _Range(model.quantizer, "quantizer")
    model.quantizer._pick = _wrap(model.quantizer._pick, "search")
    guide.top_words = _wrap(guide.top_words, "teacher")  # the teacher's forward, or the table lookup
    if not hasattr(losses.semantic_loss_from_scores, "__wrapped_phase__"):
        wrapped = _wrap(losses.semantic_loss_from_scores, "semantic loss")
        wrapped.__wrapped_phase__ = True
        losses.semantic_loss_from_scores = wrapped


def setup(preset: str, batch_size: int, cached: bool, overrides: dict | None = None):
    from spae_lab.checkpoint import create_tokenizer
    from spae_lab.config import create_config
    from spae_lab.data import make_dataset
    from spae_lab.training.loop import build_guide

    cfg = create_config(preset, {"train.batch_size": batch_size, **(overrides or {})})
    torch.manual_seed(0)
    model = create_tokenizer(cfg)
    guide = build_guide(cfg, model, "cpu")
    dataset = make_dataset("cifar10-sample", cfg.model.image_size)
    if cached:
        guide.cache_top_words(dataset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return cfg, model, guide, dataset, optimizer


def make_step(cfg, model, guide, dataset, optimizer, before: bool = False):
    """step(s): the training loop's data path and step at step s (labelled for the profiler).
    `before`: the search as it was (one 64 MB buffer, torch's argmax)."""
    import spae_lab.quantizer as quantizer
    from spae_lab.training.loop import batch_indices, load_batch, sample_depths, training_step

    def step(s: int) -> None:
        if before:
            chunk, argmax = quantizer.SEARCH_CHUNK_ELEMENTS, quantizer.argmax_rows
            quantizer.SEARCH_CHUNK_ELEMENTS = (1 << 24) // torch.get_num_threads()
            quantizer.argmax_rows = lambda scores: scores.argmax(dim=-1)
            try:
                return _step(s)
            finally:
                quantizer.SEARCH_CHUNK_ELEMENTS, quantizer.argmax_rows = chunk, argmax
        return _step(s)

    def _step(s: int) -> None:
        with record_function("step"):
            with record_function("data"):
                indices = batch_indices(s, cfg.train.batch_size, len(dataset), cfg.train.seed)
                batch = load_batch(dataset, indices)
                depths = sample_depths(s, cfg.train.batch_size, model.num_layers, cfg)
            training_step(model, model, optimizer, batch["image"], depths, cfg, guide, s,
                          indices=None if before else torch.tensor(indices))
    return step


def make_plain_step(cfg, model, dataset):
    """The plain VQ step of bench_train_step.py (the same backbone around one learned layer of
    8,192 words), on the same batches, labelled alike (its search: `nearest_codes`)."""
    from bench_train_step import PlainVQAutoencoder

    import spae_lab.quantizer as quantizer
    from spae_lab.losses import reconstruction_losses
    from spae_lab.model import SPAE
    from spae_lab.training.loop import backward_and_step, batch_indices, load_batch

    torch.manual_seed(0)
    plain = PlainVQAutoencoder(SPAE(cfg.model, model.codebook))
    _Range(plain.encoder, "encoder")
    _Range(plain.decoder, "decoder")
    optimizer = torch.optim.AdamW(plain.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    search = _wrap(quantizer.nearest_codes, "search")

    def step(s: int) -> None:
        with record_function("step"):
            with record_function("data"):
                batch = load_batch(dataset, batch_indices(s, cfg.train.batch_size, len(dataset), cfg.train.seed))
            images, original = batch["image"], quantizer.nearest_codes
            quantizer.nearest_codes = search  # read by PlainVQAutoencoder.forward at each call
            try:
                with record_function("forward"):
                    recon, vq_loss = plain(images)
            finally:
                quantizer.nearest_codes = original
            with record_function("losses"):
                loss = sum(reconstruction_losses(recon, images * 2 - 1, cfg.loss).values()) + vq_loss
            backward_and_step(loss, plain, optimizer, cfg.train.grad_clip)
    return step


def _phases(total: dict[str, float]) -> dict[str, float]:
    """Phase times (ms a step) from the profiler's per-range totals (ms a step). The plain VQ step
    has no quantizer range: its search is its quantizer, the rest of its VQ is "forward other"."""
    t = lambda name: total.get(name, 0.0)  # noqa: E731
    quantizer = t("quantizer") if "quantizer" in total else t("search")
    return {
        "data": t("data"),
        "encoder": t("encoder"),
        "teacher": t("teacher"),
        "search": t("search"),
        "SAQ bookkeeping": quantizer - t("search"),
        "forward other": t("forward") - t("encoder") - quantizer - t("decoder"),
        "semantic loss": t("semantic loss"),
        "pixel losses": t("losses") - t("teacher") - t("semantic loss"),
        "decoder": t("decoder"),
        "backward": t("backward"),
        "optimizer": t("optimizer"),
        "step (profiled)": t("step"),
    }


def profile_steps(steps_by_version: dict, steps: int, warmup: int = 2) -> dict[str, tuple[dict, dict, float]]:
    """Per version: (ms per step by phase, aten op calls per step by phase, median un-profiled step
    in ms). The versions take turns step by step, profiled and not, so that a change of load on a
    shared machine hits them alike."""
    for s in range(warmup):
        for step in steps_by_version.values():
            step(s)
    plain = {v: [] for v in steps_by_version}
    for s in range(warmup, warmup + steps):
        for version, step in steps_by_version.items():
            start = time.perf_counter()
            step(s)
            plain[version].append(time.perf_counter() - start)
    totals = {v: {} for v in steps_by_version}
    ops = {v: {} for v in steps_by_version}
    for s in range(warmup, warmup + steps):
        for version, step in steps_by_version.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(s)
            for e in prof.key_averages():
                totals[version][e.key] = totals[version].get(e.key, 0.0) + e.cpu_time_total / 1e3 / steps
            for k, v in _op_counts(prof, steps).items():
                ops[version][k] = ops[version].get(k, 0.0) + v
    return {v: (_phases(totals[v]), ops[v], 1e3 * sorted(plain[v])[len(plain[v]) // 2]) for v in steps_by_version}


def _op_counts(prof, steps: int) -> dict[str, float]:
    """aten op calls per step inside the quantizer (its search and the rest) and in backward."""
    events = prof.events()
    ranges = {e.name: [] for e in events if e.name in ("quantizer", "search", "backward")}
    for e in events:
        if e.name in ranges:
            ranges[e.name].append((e.time_range.start, e.time_range.end))
    counts = {name: 0 for name in ranges}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        for name, spans in ranges.items():
            if any(a <= e.time_range.start and e.time_range.end <= b for a, b in spans):
                counts[name] += 1
    if "quantizer" in counts:
        counts["SAQ bookkeeping"] = counts.pop("quantizer") - counts.get("search", 0)
    return {k: v / steps for k, v in counts.items()}


def markdown(result: dict) -> str:
    runs = result["runs"]
    head = "| phase | " + " | ".join(r["label"] for r in runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs)]
    for phase in PHASES:
        cells = []
        for r in runs:
            ms, share = r["phases_ms"][phase], r["phases_ms"][phase] / r["phases_ms"]["step (profiled)"]
            cells.append(f"{ms:.1f} ms ({100 * share:.0f}%)")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append("| **step, profiled** | " + " | ".join(f"**{r['phases_ms']['step (profiled)']:.0f} ms**"
                                                   for r in runs) + " |")
    lines.append("| step, not profiled (median) | " + " | ".join(f"{r['step_ms']:.0f} ms" for r in runs) + " |")
    lines.append("| load average before -> after | " + " | ".join(
        f"{r['load_average'][0]:.2f} -> {r['load_average'][1]:.2f}" for r in runs) + " |")
    notes = [f"- {r['label']}: background load {r['background']}; aten ops per step: "
             + ", ".join(f"{k} {v:.0f}" for k, v in r["ops_per_step"].items()) for r in runs]
    return "\n".join([f"Training step of the `{result['preset']}` preset, batch {result['batch_size']}, "
                      f"torch {result['torch']}, {result['steps']} profiled steps per run (thr: torch threads; "
                      f"busy: background processes).", "", *lines, "", *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per run")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch threads, one run each")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 2],
                        help="background processes per run (0: quiet)")
    parser.add_argument("--versions", nargs="+", choices=["plain", "before", "after"],
                        default=["plain", "before", "after"])
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    runs = []
    for load in args.loads:
        with BackgroundLoad(load) as background:
            for threads in args.threads:
                torch.set_num_threads(threads)
                steps = {}
                for version in args.versions:
                    cfg, model, guide, dataset, optimizer = setup(args.preset, args.batch_size, version == "after")
                    if version == "plain":
                        steps[version] = make_plain_step(cfg, model, dataset)
                        continue
                    instrument(model, guide)
                    steps[version] = make_step(cfg, model, guide, dataset, optimizer, before=version == "before")
                before = load_average()
                profiled = profile_steps(steps, args.steps)
                after = load_average()
                for version, (phases, ops, step_ms) in profiled.items():
                    label = f"{'quiet' if not load else f'{load} busy'}, {threads} thr, {version}"
                    runs.append({"label": label, "background": background.describe(), "threads": threads,
                                 "version": version, "phases_ms": phases, "ops_per_step": ops,
                                 "step_ms": step_ms, "load_average": [before, after]})
                    print(f"{label}: step {step_ms:.0f} ms (load {before:.2f} -> {after:.2f}); "
                          + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()), flush=True)
    result = {"torch": torch.__version__, "preset": args.preset,
              "batch_size": args.batch_size, "steps": args.steps, "runs": runs}
    write_results(result, args.json, args.markdown, markdown)


if __name__ == "__main__":
    main()
