"""`run_generation`: one generation task end to end, from a tokenizer and images to files.

    from spae_lab.generate import run_generation
    result = run_generation("inpaint", "cifar10", input="path/to/images", out="runs/inpaint")
    result.summary            # PSNR/SSIM of the LLM's words against the no-LLM references

Writes into `out` (owned as a training run folder is: `outputs.GenerationFolder`):
`images/NAME_corrupted.png` and `images/NAME_generated.png` (image tasks; the corrupted words
decoded, and the LLM's, at the input image's size held to `outputs.MAX_OUTPUT_SIDE`),
`images/NAME.png` for class-conditional digits, `results.csv` (one row per query), `summary.json`,
`config.json` (written first: what identifies the run; then what it did), `prompts.jsonl` (every
call: layer, prefix id, the query text, the words written) with `prefixes.jsonl` (each distinct
prefix once, by id), `prompt_example.txt` (one whole prompt) and `llm_cache.sqlite` (every answer,
stored as it arrives: a rerun or a resumed run asks only what is missing and gives the same images).

The pieces: `queries` builds what is asked (`ImageTask`, `DigitEpisode`), `decode` has the LLM
write it, `outputs` names and writes the files; this module runs them and measures the result.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from spae_lab.generate import tasks as T
from spae_lab.generate.decode import (
    DecodeConfig,
    WordWriter,
    count_calls,
    layer_prefix,
    make_writer,
    progressive_decode,
)
from spae_lab.generate.outputs import CACHE, IMAGES, RUN_FILES, GenerationFolder, save_png, write_prompts
from spae_lab.generate.queries import (
    DigitEpisode,
    GenerationError,
    ImageTask,
    build_digit_episodes,
    build_image_task,
    load_images,
    shown_digit,
)
from spae_lab.io import atomic_write_json, atomic_write_text, remove_links
from spae_lab.metrics import psnr, ssim
from spae_lab.tables import wilson_interval

__all__ = ["GenerationConfig", "GenerationError", "GenerationResult", "decode_rows", "run_generation"]


@dataclass
class GenerationConfig:
    """One generation run; recorded in config.json."""

    task: str = "inpaint"  # one of tasks.TASKS
    examples: int = 10  # image tasks: in-context example pairs (other images)
    examples_per_class: int = 2  # class: examples of each digit in the context
    arithmetic_examples: int = 30  # arithmetic: "a+b" examples in the context
    episodes: int = 5  # class / arithmetic: context draws, each writing one image per digit
    # class / arithmetic context: "last" (every digit's examples, shuffled, with those whose label
    # is the one asked for moved next to the query), "mixed" (no move: the label alone says which
    # digit) or "same" (only examples of the requested digit, which mostly get copied). "last" was
    # chosen on the training split (docs/writing.md).
    class_context: str = "last"
    # inpaint / outpaint: what the region's tokens become: "masked" (the tokens of the image with
    # the region painted grey, as an image with a hole reads; V2L's inputs) or "random" (random
    # codebook words, which decode to the codebook's average colour)
    corruption: str = "masked"
    images: int = 20  # image tasks: query images (0: every input image)
    layers: int = 0  # pyramid layers the LLM writes (0: all); the rest are not decoded
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    schedule: T.CorruptionSchedule = T.V2L_SCHEDULE  # denoise: the context copies' ratios
    seed: int = 0  # context draws and corruptions


@dataclass
class GenerationResult:
    """What `run_generation` returns (the files hold the same; see the module docstring)."""

    summary: dict  # the figures of summary.json
    records: pd.DataFrame  # one row per query, as results.csv
    config: dict  # what config.json holds: the run's identity and what it did
    paths: dict[str, Path]  # the files written, by name
    names: list[str]  # output name of each query (images/NAME_*.png)
    written: list[T.Pyramid]  # per query, the words the LLM wrote (codebook rows per layer)
    decoded: dict[str, torch.Tensor]  # (B, 3, S, S) decodes by kind ("generated", ...)
    by_layer: torch.Tensor  # (L, B, 3, S, S): the LLM's words decoded from 1, 2, ... layers
    context: list[tuple[str, torch.Tensor]]  # the first in-context examples: (caption, image)
    conditions: list[str] | torch.Tensor  # per query: its prompt, or the corrupted image
    targets: torch.Tensor | None = None  # image tasks: what a perfect answer shows
    inputs: list[T.Pyramid] | None = None  # image tasks: the words given
    fills: list[T.Pyramid] | None = None  # image tasks: the no-LLM reference's words
    requested: list[int] | None = None  # class / arithmetic: the digit each query asks for


@dataclass
class _Run:
    """What both runners share: the tokenizer, the settings, the LLM's writer, where to write."""

    model: object
    cfg: GenerationConfig
    writer: WordWriter
    layers: int
    folder: Path
    progress: bool

    def decode_groups(self, groups) -> tuple[list[T.Pyramid], dict[str, str]]:
        """The LLM's words for every (examples, queries) group, and each distinct layer prefix."""
        sizes = self.model.layout.tokens_per_layer()
        total = sum(count_calls(qs, self.cfg.decode.tokens_per_call, self.layers) for _, qs in groups)
        bar = tqdm(total=total, desc=f"generate {self.cfg.task}", unit="call", disable=not self.progress)
        written, prefixes = [], {}
        for examples, queries in groups:
            written += progressive_decode(self.writer, examples, queries, sizes, self.layers,
                                          lambda: bar.update(1))
            for depth in range(1, self.layers + 1):
                prefixes[f"{len(prefixes)}"] = layer_prefix(examples, depth, self.writer.words)
        bar.close()
        return written, prefixes

    def write_png(self, image: torch.Tensor, name: str, size: tuple[int, int]) -> None:
        save_png(image, self.folder / IMAGES / name, size, self.folder)


@torch.no_grad()
def decode_rows(model, pyramids, num_layers: int) -> torch.Tensor:
    """Per-image pyramids (lists of rows) -> (B, 3, S, S) decodes of their first layers."""
    from spae_lab.pyramid import TokenPyramid

    ids = T.to_ids([p[:num_layers] for p in pyramids])
    return model.decode(TokenPyramid(ids, model.layout, model.codebook), num_layers)


def _describe_source(spec) -> str | None:
    if spec is None or isinstance(spec, (str, Path)):
        return None if spec is None else str(spec)
    return f"{type(spec).__name__} of {len(spec)} images"


def run_generation(task: str, tokenizer, *, input=None, out="runs/generate", backend="hf:smollm2",
                   config: GenerationConfig | None = None, context=None, progress: bool = True,
                   classifier=None, force: bool = False, **overrides) -> GenerationResult:
    """Run `task` (see tasks.TASKS) with `tokenizer` (shipped name, run folder or SPAE model) on
    `input` (folder, tar archive, dataset name or Dataset; default: the tokenizer's held-out data).
    In-context examples come from `context` (same kinds; default: the input, the queries never
    among them). `backend` is a spec or an LLMBackend; answers are cached in
    out/llm_cache.sqlite. `overrides` set GenerationConfig fields.

    `out` holding the same run resumes it; another run there is refused unless `force` replaces
    it; a second process writing `out` at the same time is refused at once."""
    from spae_lab import load_tokenizer
    from spae_lab.checkpoint import weights_fingerprint
    from spae_lab.llm import CachedBackend, load_backend

    cfg = replace(config or GenerationConfig(), task=task, **overrides)
    if task not in T.TASKS:
        raise GenerationError(f"unknown task {task!r}; tasks: {', '.join(T.TASKS)}")
    if cfg.corruption not in ("masked", "random"):
        raise GenerationError(f"corruption must be masked or random, got {cfg.corruption!r}")
    if cfg.class_context not in ("mixed", "last", "same"):
        raise GenerationError(f"class_context must be mixed, last or same, got {cfg.class_context!r}")
    folder = GenerationFolder(out)
    folder.check()  # a locked folder or a file: refused before any work
    model = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    data = load_images(input, model)
    if task in T.IMAGE_TASKS:
        built = build_image_task(model, cfg, data, data if context is None else load_images(context, model))
        outputs = built.output_files()
    else:
        built = build_digit_episodes(model, cfg, data)
        outputs = [f"{name}.png" for episode in built for name in episode.names]
    inner = load_backend(backend) if isinstance(backend, str) else backend
    layers = cfg.layers or model.num_layers
    identity = {"task": task, "input": _describe_source(input), "context": _describe_source(context),
                "tokenizer": str(tokenizer) if isinstance(tokenizer, (str, Path))
                else f"model {weights_fingerprint(model)}",
                "backend": inner.describe(), "config": asdict(cfg), "layers": layers}
    folder.claim(identity, outputs, force)
    out = folder.path
    try:
        if isinstance(inner, CachedBackend):
            llm = inner
        else:  # SQLite opens these itself: a link planted there must not be written through
            remove_links(*(out / name for name in RUN_FILES if name.startswith(CACHE)))
            llm = CachedBackend(inner, out / CACHE)
        try:
            run = _Run(model, cfg, make_writer(llm, model.codebook.words, cfg.decode,
                                               model.codebook.fingerprint()), layers, out, progress)
            if task in T.IMAGE_TASKS:
                result, prefixes = _generate_images(run=run, task=built)
            else:
                result, prefixes = _generate_digits(run=run, episodes=built, classifier=classifier)
        finally:
            if llm is not inner:
                llm.cache.close()  # the caller's backend stays open for its next run
        write_prompts(out, run.writer, prefixes)
        writer = run.writer
        result.config = {"backend": llm.describe(), "calls_computed": writer.calls,
                         "unwritable_words": getattr(writer, "unwritable", 0),
                         "snapped_words": getattr(writer, "snapped", 0)}
        folder.write_config(result.config)
        atomic_write_json(out / "summary.json", result.summary, within=out)
        atomic_write_text(out / "results.csv", result.records.to_csv(index=False), within=out)
    finally:
        folder.release()
    result.config = {"identity": folder.identity, **result.config}
    result.paths = {name: out / name for name in ("results.csv", "summary.json", "config.json",
                                                  "prompts.jsonl", "prefixes.jsonl",
                                                  "prompt_example.txt", CACHE)}
    return result


def _region_psnr(images, targets, box, grid):
    if box is None:
        return None
    S = images.shape[-1]
    r0, r1, c0, c1 = (v * S // grid for v in box)
    return psnr(images[..., r0:r1, c0:c1], targets[..., r0:r1, c0:c1])


def _generate_images(*, run: _Run, task: ImageTask) -> tuple[GenerationResult, dict[str, str]]:
    """An image-to-image task: the LLM's words, their decodes beside the references, the PNGs."""
    model, cfg, layers = run.model, run.cfg, run.layers
    inputs, fills, target_rows = ([p[:layers] for p in x] for x in (task.inputs, task.fills, task.target_rows))
    written, prefixes = run.decode_groups(task.groups)
    decoded = {name: decode_rows(model, rows, layers) for name, rows in
               (("generated", written), ("corrupted", inputs), ("no-LLM fill", fills),
                ("clean tokens", target_rows))}
    by_layer = torch.stack([decode_rows(model, written, d) for d in range(1, layers + 1)])
    first = task.groups[0][0][:8]  # the first group's examples (denoise: the first query's copies)
    context = []
    if first:
        images_ctx = decode_rows(model, [e.target[:layers] for e in first], layers)
        context = list(zip(["example"] * len(first), images_ctx, strict=True))
    queries = task.queries
    for k, (name, size) in enumerate(zip(queries.names, queries.sizes, strict=True)):
        run.write_png(decoded["corrupted"][k], f"{name}_corrupted.png", size)
        run.write_png(decoded["generated"][k], f"{name}_generated.png", size)
    targets = task.targets
    scores = {n: (psnr(x, targets), ssim(x, targets), _region_psnr(x, targets, task.box, model.layout.grid))
              for n, x in decoded.items()}
    records = []
    for k, name in enumerate(queries.names):
        row = {"image": name, "source": queries.sources[k], "task": cfg.task}
        for n, (p, s, r) in scores.items():
            key = n.replace(" ", "_").replace("-", "")
            row[f"psnr_{key}"], row[f"ssim_{key}"] = float(p[k]), float(s[k])
            if r is not None:
                row[f"region_psnr_{key}"] = float(r[k])
        row["words_changed"] = sum(w != i for wl, il in zip(written[k], inputs[k], strict=True)
                                   for w, i in zip(wl, il, strict=True))
        records.append(row)
    frame = pd.DataFrame(records)
    summary = {"task": cfg.task, "images": len(queries.names),
               "every_word_in_codebook": _in_codebook(written, run.writer.words)}
    for column in frame.columns:
        if column.startswith(("psnr_", "ssim_", "region_psnr_", "words_changed")):
            summary[column] = round(float(frame[column].mean()), 4)
    result = GenerationResult(summary=summary, records=frame, config={}, paths={}, names=queries.names,
                              written=written, decoded=decoded, by_layer=by_layer, context=context,
                              conditions=decoded["corrupted"], targets=targets, inputs=inputs, fills=fills)
    return result, prefixes


def _in_codebook(written, words) -> bool:
    return all(0 <= r < len(words) for p in written for layer in p for r in layer)


def _overlap_with_context(written: T.Pyramid, examples, layers: int) -> float:
    """The largest share of positions where `written` holds the same word as one example."""
    flat = [r for layer in written for r in layer]
    return max(sum(a == b for a, b in zip(flat, [r for lr in ex.target[:layers] for r in lr], strict=True))
               for ex in examples) / len(flat)


def _generate_digits(*, run: _Run, episodes: list[DigitEpisode], classifier=None
                     ) -> tuple[GenerationResult, dict[str, str]]:
    """class / arithmetic: the LLM's digits, judged by the digit classifier against chance, a
    copy of a context example's words, and the judge's own reliability."""
    from spae_lab.generate.digit_classifier import load_digit_classifier

    model, cfg, layers = run.model, run.cfg, run.layers
    written, prefixes = run.decode_groups([(e.examples, e.queries) for e in episodes])
    asked, names, prompts_text, copies, overlap = [], [], [], [], []
    rng = random.Random(cfg.seed + 1)
    answers = iter(written)
    for episode in episodes:
        for query, c, name in zip(episode.queries, episode.requested, episode.names, strict=True):
            words = next(answers)
            asked.append(c)
            names.append(name)
            prompts_text.append(query.conditions[0])
            overlap.append(_overlap_with_context(words, episode.examples, layers))
            # no-LLM reference: copy the words of a context example showing that digit
            same = [r for ex, r in zip(episode.examples, episode.rows, strict=True)
                    if shown_digit(ex.conditions[0]) == c]
            copies.append(rng.choice(same) if same else rng.choice(episode.rows))
    generated = decode_rows(model, written, layers)
    copied = decode_rows(model, copies, layers)
    by_layer = torch.stack([decode_rows(model, written, d) for d in range(1, layers + 1)])
    classifier = classifier or load_digit_classifier(model, progress=run.progress)
    predicted = classifier.predict(generated).tolist()
    copy_predicted = classifier.predict(copied).tolist()
    records = []
    for k, (c, p) in enumerate(zip(asked, predicted, strict=True)):
        run.write_png(generated[k], f"{names[k]}.png", (model.config.image_size,) * 2)
        records.append({"image": names[k], "prompt": prompts_text[k], "requested": c,
                        "recognised_as": p, "correct": p == c, "copy_reference": copy_predicted[k],
                        "max_overlap_with_context": round(overlap[k], 4),
                        "first_word": run.writer.words[written[k][0][0]]})
    frame = pd.DataFrame(records)
    summary = {"task": cfg.task, "images": len(frame),
               "accuracy": float(frame["correct"].mean()), "chance": 0.1,
               "accuracy_by_digit": {int(c): float(g["correct"].mean())
                                     for c, g in frame.groupby("requested")},
               "accuracy_by_depth": [float((classifier.predict(img) == torch.tensor(asked))
                                           .float().mean()) for img in by_layer],
               "copy_reference_accuracy": float((frame["copy_reference"] == frame["requested"]).mean()),
               **_judge_reliability(model, classifier),
               "mean_max_overlap_with_context": float(frame["max_overlap_with_context"].mean()),
               "exact_copies": int((frame["max_overlap_with_context"] == 1.0).sum()),
               "distinct_outputs": len({str(w) for w in written}),
               "every_word_in_codebook": _in_codebook(written, run.writer.words)}
    summary["verdict"] = digit_verdict(summary)
    first = episodes[0].examples[:8]
    context = list(zip([e.conditions[0].removeprefix("An image of ").rstrip(":") for e in first],
                       decode_rows(model, [e.target[:layers] for e in first], layers), strict=True))
    result = GenerationResult(summary=summary, records=frame, config={}, paths={}, names=names,
                              written=written, decoded={"generated": generated, "copy reference": copied},
                              by_layer=by_layer, context=context, conditions=prompts_text,
                              requested=asked)
    return result, prefixes


def _judge_reliability(model, classifier) -> dict:
    """How often the judge reads held-out digits right: real ones, and this tokenizer's decodes of
    them (generated digits are decodes)."""
    from spae_lab.data import make_dataset
    from spae_lab.generate.digit_classifier import ClassifierConfig, reconstruct_all

    config = getattr(classifier, "config", ClassifierConfig())
    real = make_dataset(config.dataset, model.config.image_size, split="heldout", seed=config.seed)
    images = torch.stack([real[i]["image"] for i in range(len(real))])
    labels = torch.as_tensor([int(x) for x in real.labels])
    return {"classifier_real_heldout": classifier.accuracy(images, labels),
            "classifier_reconstructed_heldout": classifier.accuracy(reconstruct_all(model, images), labels)}


# Below this share of the tokenizer's own decodes read right, the judge cannot tell a good digit
# from a bad one well enough for the accuracy to mean much.
RELIABLE_JUDGE = 0.8


def digit_verdict(summary: dict) -> str:
    """One sentence: the accuracy with its 95% interval against chance, and the judge's reliability."""
    n, accuracy, chance = summary["images"], summary["accuracy"], summary["chance"]
    low, high = wilson_interval(round(accuracy * n), n)
    versus = ("above chance" if low > chance else "below chance" if high < chance
              else "not distinguishable from chance")
    judge = summary["classifier_reconstructed_heldout"]
    text = (f"{100 * accuracy:.0f}% of {n} generated digits are read as the requested digit (95% "
            f"interval {100 * low:.0f}-{100 * high:.0f}%), {versus} ({100 * chance:.0f}%); the judge "
            f"reads {100 * summary['classifier_real_heldout']:.0f}% of real held-out digits and "
            f"{100 * judge:.0f}% of this tokenizer's decodes of them")
    if judge < RELIABLE_JUDGE:
        text += ": too few for this accuracy to mean much (a tokenizer trained on digits decodes them legibly)"
    return text
