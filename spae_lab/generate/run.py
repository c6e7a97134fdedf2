"""`run_generation`: one generation task end to end, from a tokenizer and images to files.

    from spae_lab.generate import run_generation
    result = run_generation("inpaint", "cifar10", input="path/to/images", out="runs/inpaint")
    result["summary"]            # PSNR/SSIM of the LLM's words against the no-LLM references

Writes into `out`: `images/NAME_corrupted.png` and `images/NAME_generated.png` (image tasks; the
corrupted words decoded, and the LLM's, both at the input image's size), `images/NAME.png` for
class-conditional digits, `results.csv` (one row per query), `summary.json`, `config.json`,
`prompts.jsonl` (every call: layer, prefix id, the query text, the words written) with
`prefixes.jsonl` (each distinct prefix once, by id), `prompt_example.txt` (one whole prompt) and
`llm_cache.sqlite` (every answer, stored as it arrives: a rerun or a resumed run asks only what
is missing and gives the same images).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from spae_lab.errors import SpaeError
from spae_lab.generate import tasks as T
from spae_lab.generate.decode import (
    DecodeConfig,
    Example,
    WordWriter,
    count_calls,
    layer_prefix,
    make_writer,
    progressive_decode,
)
from spae_lab.io import atomic_write_text
from spae_lab.metrics import psnr, ssim


class GenerationError(SpaeError, ValueError):
    """A generation that cannot run as asked (unknown task, too few images)."""


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


def default_dataset(model, split: str = "heldout"):
    """The tokenizer's own held-out data: its dataset's held-out split (by its training seed), or
    for a dataset that is not on this machine and looks like CIFAR-10, the shipped sample."""
    from spae_lab.data import make_dataset

    cfg = model.experiment_config
    name = str(cfg.data.dataset)
    size = model.config.image_size
    try:
        return make_dataset(name, size, split=split, seed=cfg.train.seed)
    except Exception as err:  # a training archive that is not on this machine
        if "cifar" in name.lower():
            return make_dataset("cifar10-sample", size)
        raise GenerationError(f"no held-out data for this tokenizer ({name}): {err}; "
                              "pass --input") from None


def _images(dataset, indices) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in indices])


def _names(dataset, indices) -> list[str]:
    paths = getattr(dataset, "paths", None)
    classes = getattr(dataset, "classes", None)
    out = []
    for i in indices:
        if paths is not None:
            stem = Path(paths[i]).stem
        else:
            label = int(dataset[i]["label"])
            stem = f"{i:05d}_{classes[label]}" if classes else f"{i:05d}"
        out.append(stem)
    return [n if out.count(n) == 1 else f"{n}_{k}" for k, n in enumerate(out)]


def _original_sizes(dataset, indices) -> list[tuple[int, int]]:
    """(width, height) of each input file (folders and tar archives), else the dataset's size."""
    from PIL import Image

    size = getattr(dataset, "image_size", 32)
    root = getattr(dataset, "root", None)
    out = []
    members = None
    if root is not None and Path(root).is_file():
        import tarfile

        with tarfile.open(root, "r:*") as archive:
            members = {}
            wanted = {Path(dataset.paths[i]).relative_to(root).as_posix() for i in indices}
            for m in archive.getmembers():
                if m.isfile() and m.name.lstrip("./") in wanted:
                    with Image.open(archive.extractfile(m)) as img:
                        members[m.name.lstrip("./")] = img.size
    for i in indices:
        try:
            if members is not None:
                out.append(members[Path(dataset.paths[i]).relative_to(root).as_posix()])
            elif root is not None:
                with Image.open(dataset.paths[i]) as img:
                    out.append(img.size)
            else:
                out.append((size, size))
        except (OSError, KeyError, ValueError):
            out.append((size, size))
    return out


def save_png(image: torch.Tensor, path: Path, size: tuple[int, int]) -> None:
    """(3, S, S) in [0, 1] -> PNG of `size` (width, height)."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(array)
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@torch.no_grad()
def decode_rows(model, pyramids, num_layers: int) -> torch.Tensor:
    """Per-image pyramids (lists of rows) -> (B, 3, S, S) decodes of their first layers."""
    from spae_lab.pyramid import TokenPyramid

    ids = T.to_ids([p[:num_layers] for p in pyramids])
    return model.decode(TokenPyramid(ids, model.layout, model.codebook), num_layers)


def _region_psnr(images, targets, box, grid):
    if box is None:
        return None
    S = images.shape[-1]
    r0, r1, c0, c1 = (v * S // grid for v in box)
    return psnr(images[..., r0:r1, c0:c1], targets[..., r0:r1, c0:c1])


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, desc=desc, unit="call", disable=not enabled)

    def __call__(self) -> None:
        self.bar.update(1)


def _image_task(model, cfg: GenerationConfig, data, context_data):
    """Queries, examples, no-LLM references and targets of an image-to-image task."""
    task, layout, V = cfg.task, model.layout, len(model.codebook)
    words = model.codebook.words
    rng = random.Random(cfg.seed)
    same = context_data is data
    pool = list(range(len(context_data)))
    context = [] if task == "denoise" else rng.sample(pool, min(cfg.examples, len(pool)))
    candidates = [i for i in range(len(data)) if not (same and i in set(context))]
    queries_idx = candidates[:cfg.images] if cfg.images else candidates
    if not queries_idx:
        raise GenerationError("no query image left after drawing the context")
    images = _images(data, queries_idx)
    clean = T.pyramids_of(model.encode(images).ids)
    generator = torch.Generator().manual_seed(cfg.seed)
    box = T.task_box(task, layout.grid) if task in ("inpaint", "outpaint") else None
    mask = T.region_mask(layout, box) if box else None

    def corrupt(rows_batch, images_batch):
        if cfg.corruption == "random":
            return [T.mask_words(p, mask, V, generator) for p in rows_batch]
        holes = T.pyramids_of(model.encode(T.paint_region(images_batch, box, layout.grid)).ids)
        return [T.merge_masked(p, h, mask) for p, h in zip(rows_batch, holes, strict=True)]

    if task in ("flip", "shift"):
        targets_img = T.transform_images(task, images)
        target_rows = T.pyramids_of(model.encode(targets_img).ids)
    else:
        targets_img, target_rows = images, clean
    examples: list[Example] = []
    if context:
        ctx_images = _images(context_data, context)
        ctx_clean = T.pyramids_of(model.encode(ctx_images).ids)
        if task in ("flip", "shift"):
            ctx_target = T.pyramids_of(model.encode(T.transform_images(task, ctx_images)).ids)
            examples = [T.pair_example(s, t, words) for s, t in zip(ctx_clean, ctx_target, strict=True)]
        else:
            examples = [T.pair_example(bad, p, words)
                        for bad, p in zip(corrupt(ctx_clean, ctx_images), ctx_clean, strict=True)]
    groups, inputs, fills = [], [], []
    corrupted = corrupt(clean, images) if box else clean
    for rows, bad in zip(clean, corrupted, strict=True):
        if task == "denoise":
            ex, query, copies = T.denoise_context(rows, cfg.schedule, V, generator)
            groups.append((ex, [query]))
            inputs.append(copies[-1])
            fills.append(T.majority_fill(copies))
        elif task in ("flip", "shift"):
            inputs.append(rows)
            fills.append(T.transform_tokens(task, rows, layout))
            groups.append((examples, [T.pair_query(rows, words, [[None] * len(r) for r in rows])]))
        else:
            inputs.append(bad)
            fills.append(T.nearest_known_fill(bad, mask, layout))
            known = [[None if m else r for r, m in zip(lr, lm, strict=True)]
                     for lr, lm in zip(bad, mask, strict=True)]
            groups.append((examples, [T.pair_query(bad, words, known)]))
    if task != "denoise":  # one group: every query shares the examples (and the prefix cache)
        groups = [(examples, [q for _, qs in groups for q in qs])]
    return queries_idx, images, targets_img, target_rows, inputs, fills, groups, box


def _class_task(model, cfg: GenerationConfig, data):
    """Groups of class-conditional (or arithmetic) digits, each (examples, queries, requested
    digits, example rows): one group per episode with a "mixed" context, one per query with
    "same" (only the examples showing the requested label) or "last" (those examples moved to
    the end)."""
    labels = [int(x) for x in getattr(data, "labels", [data[i]["label"] for i in range(len(data))])]
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in range(10)}
    rng = random.Random(cfg.seed)
    sizes = model.layout.tokens_per_layer()
    groups = []
    for _ in range(cfg.episodes):
        if cfg.task == "class":
            picks = [(str(c), c, i) for c in range(10)
                     for i in rng.sample(by_class[c], cfg.examples_per_class)]
            asked = [(str(c), c) for c in range(10)]
        else:
            sums = [(a, b) for a in range(10) for b in range(10) if a + b <= 9]
            picks = [(f"{a}+{b}", a + b, rng.choice(by_class[a + b]))
                     for a, b in rng.choices(sums, k=cfg.arithmetic_examples)]
            asked = [(f"{a}+{b}", a + b) for a, b in rng.sample(sums, 10)]
        rng.shuffle(picks)
        rows = T.pyramids_of(model.encode(_images(data, [i for _, _, i in picks])).ids)
        examples = [T.class_example(text, r) for (text, _, _), r in zip(picks, rows, strict=True)]
        labels_shown = [text for text, _, _ in picks]
        if cfg.class_context == "mixed":
            groups.append((examples, [T.class_query(t, sizes) for t, _ in asked],
                           [c for _, c in asked], rows))
            continue
        for text, c in asked:  # by the label shown ("1+7"), never by its value: no sum is done here
            mine = [k for k, shown in enumerate(labels_shown) if shown == text]
            order = mine if cfg.class_context == "same" else \
                [k for k, shown in enumerate(labels_shown) if shown != text] + mine
            if not order:
                raise GenerationError(f"no in-context example shows {text!r}; use class_context 'last' or 'mixed'")
            groups.append(([examples[k] for k in order], [T.class_query(text, sizes)], [c],
                           [rows[k] for k in order]))
    return groups


def run_generation(task: str, tokenizer, input=None, out="runs/generate", backend="hf:smollm2",
                   config: GenerationConfig | None = None, context=None, progress: bool = True,
                   classifier=None, **overrides) -> dict:
    """Run `task` (see tasks.TASKS) with `tokenizer` (shipped name, run folder or SPAE model) on
    `input` (folder, tar archive, dataset name or Dataset; default: the tokenizer's held-out data).
    In-context examples come from `context` (same kinds; default: the input, the queries never
    among them). `backend` is a spec or an LLMBackend; answers are cached in
    out/llm_cache.sqlite. `overrides` set GenerationConfig fields. Returns {"summary", "records",
    "images", "paths", ...}; see the module docstring for the files."""
    from spae_lab import load_tokenizer
    from spae_lab.data import make_dataset
    from spae_lab.llm import CachedBackend, load_backend

    cfg = replace(config or GenerationConfig(), task=task, **overrides)
    if task not in T.TASKS:
        raise GenerationError(f"unknown task {task!r}; tasks: {', '.join(T.TASKS)}")
    if cfg.corruption not in ("masked", "random"):
        raise GenerationError(f"corruption must be masked or random, got {cfg.corruption!r}")
    if cfg.class_context not in ("mixed", "last", "same"):
        raise GenerationError(f"class_context must be mixed, last or same, got {cfg.class_context!r}")
    model = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    size = model.config.image_size

    def dataset_of(spec):
        if spec is None:
            return default_dataset(model)
        if isinstance(spec, (str, Path)):
            return make_dataset(spec, size, split="all" if Path(str(spec)).exists() else "heldout",
                                seed=model.experiment_config.train.seed)
        return spec

    data = dataset_of(input)
    context_data = data if context is None else dataset_of(context)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inner = load_backend(backend) if isinstance(backend, str) else backend
    llm = inner if isinstance(inner, CachedBackend) else CachedBackend(inner, out / "llm_cache.sqlite")
    writer = make_writer(llm, model.codebook.words, cfg.decode, model.codebook.fingerprint())
    layers = cfg.layers or model.num_layers
    sizes = model.layout.tokens_per_layer()
    try:
        if task in T.IMAGE_TASKS:
            result = _run_images(model, cfg, data, context_data, writer, layers, sizes, out,
                                 progress)
        else:
            result = _run_digits(model, cfg, data, writer, layers, sizes, out, progress,
                                 classifier)
    finally:
        if llm is not inner:
            llm.cache.close()  # the caller's backend stays open for its next run
    _write_prompts(out, writer, result.pop("prefixes"))
    record = {"task": task, "tokenizer": str(tokenizer) if isinstance(tokenizer, (str, Path))
              else "model", "input": str(input) if input is not None else "held-out data",
              "backend": llm.describe(), "config": asdict(cfg), "layers": layers,
              "calls_computed": writer.calls, "unwritable_words": getattr(writer, "unwritable", 0),
              "snapped_words": getattr(writer, "snapped", 0)}
    atomic_write_text(out / "config.json", json.dumps(record, indent=2, default=str))
    atomic_write_text(out / "summary.json", json.dumps(result["summary"], indent=2))
    atomic_write_text(out / "results.csv", result["records"].to_csv(index=False))
    result["config"] = record
    result["paths"] = {name: out / name for name in ("results.csv", "summary.json", "config.json",
                                                     "prompts.jsonl", "prefixes.jsonl",
                                                     "prompt_example.txt", "llm_cache.sqlite")}
    return result


def _write_prompts(out: Path, writer: WordWriter, prefixes: dict[str, str]) -> None:
    from spae_lab.generate.decode import _sha

    by_sha = {_sha(p): p for p in prefixes.values()}
    lines = [json.dumps({"prefix_id": k, "prefix": v}) for k, v in by_sha.items()]
    atomic_write_text(out / "prefixes.jsonl", "\n".join(lines) + "\n")
    calls = [json.dumps({"prefix_id": p["prefix_sha"], "query": p["query"], "answer": p["answer"],
                         "words": [writer.words[r] for r in p["answer"]]}) for p in writer.prompts]
    atomic_write_text(out / "prompts.jsonl", "\n".join(calls) + "\n")
    if writer.prompts:
        last = writer.prompts[-1]
        example = by_sha.get(last["prefix_sha"], "") + last["query"]
        atomic_write_text(out / "prompt_example.txt", example + "\n# the LLM wrote:" +
                          "".join(" " + writer.words[r] for r in last["answer"]) + "\n")


def _run_images(model, cfg, data, context_data, writer, layers, sizes, out, progress):
    (indices, images, targets_img, target_rows, inputs, fills, groups,
     box) = _image_task(model, cfg, data, context_data)
    inputs, fills, target_rows = ([p[:layers] for p in x] for x in (inputs, fills, target_rows))
    words = writer.words
    total = sum(count_calls(qs, cfg.decode.tokens_per_call, layers) for _, qs in groups)
    bar = _Progress(total, f"generate {cfg.task}", progress)
    written, prefixes = [], {}
    for examples, queries in groups:
        written += progressive_decode(writer, examples, queries, sizes, layers, bar)
        for d in range(1, layers + 1):
            prefixes[f"{len(prefixes)}"] = layer_prefix(examples, d, words)
    bar.bar.close()
    decoded = {name: decode_rows(model, rows, layers) for name, rows in
               (("generated", written), ("corrupted", inputs), ("no-LLM fill", fills),
                ("clean tokens", target_rows))}
    by_layer = torch.stack([decode_rows(model, written, d) for d in range(1, layers + 1)])
    first = groups[0][0][:8]  # the first group's examples (denoise: the first query's copies)
    context = []
    if first:
        images_ctx = decode_rows(model, [e.target[:layers] for e in first], layers)
        context = list(zip(["example"] * len(first), images_ctx, strict=True))
    names = _names(data, indices)
    sizes_px = _original_sizes(data, indices)
    for k, (name, wh) in enumerate(zip(names, sizes_px, strict=True)):
        save_png(decoded["corrupted"][k], out / "images" / f"{name}_corrupted.png", wh)
        save_png(decoded["generated"][k], out / "images" / f"{name}_generated.png", wh)
    records = []
    scores = {n: (psnr(x, targets_img), ssim(x, targets_img),
                  _region_psnr(x, targets_img, box, model.layout.grid)) for n, x in decoded.items()}
    for k, name in enumerate(names):
        row = {"image": name, "task": cfg.task}
        for n, (p, s, r) in scores.items():
            key = n.replace(" ", "_").replace("-", "")
            row[f"psnr_{key}"], row[f"ssim_{key}"] = float(p[k]), float(s[k])
            if r is not None:
                row[f"region_psnr_{key}"] = float(r[k])
        changed = [w != i for wl, il in zip(written[k], inputs[k], strict=True)
                   for w, i in zip(wl, il, strict=True)]
        row["words_changed"] = sum(changed)
        records.append(row)
    frame = pd.DataFrame(records)
    summary = {"task": cfg.task, "images": len(names),
               "every_word_in_codebook": all(0 <= r < len(words) for p in written
                                             for layer in p for r in layer)}
    for column in frame.columns:
        if column.startswith(("psnr_", "ssim_", "region_psnr_", "words_changed")):
            summary[column] = round(float(frame[column].mean()), 4)
    return {"summary": summary, "records": frame, "written": written, "inputs": inputs,
            "fills": fills, "decoded": decoded, "by_layer": by_layer, "targets": targets_img,
            "prefixes": prefixes, "names": names, "context": context,
            "conditions": decoded["corrupted"]}


def _run_digits(model, cfg, data, writer, layers, sizes, out, progress, classifier):
    from spae_lab.generate.digit_classifier import load_digit_classifier

    episodes = _class_task(model, cfg, data)
    words = writer.words
    total = sum(count_calls(qs, cfg.decode.tokens_per_call, layers) for _, qs, *_ in episodes)
    bar = _Progress(total, f"generate {cfg.task}", progress)
    written, asked, prompts_text, copies, prefixes, overlap = [], [], [], [], {}, []
    rng = random.Random(cfg.seed + 1)
    for e, (examples, queries, requested, rows) in enumerate(episodes):
        out_rows = progressive_decode(writer, examples, queries, sizes, layers, bar)
        for d in range(1, layers + 1):
            prefixes[f"{e}-{d}"] = layer_prefix(examples, d, words)
        for q, c, w in zip(queries, requested, out_rows, strict=True):
            written.append(w)
            asked.append(c)
            prompts_text.append(q.conditions[0])
            flat = [r for layer in w for r in layer]
            overlap.append(max(sum(a == b for a, b in zip(flat, [r for lr in ex.target[:layers]
                                                                   for r in lr], strict=True))
                               for ex in examples) / len(flat))
            # no-LLM reference: copy the words of a context example showing that digit
            same = [r for (ex, r) in zip(examples, rows, strict=True)
                    if _value(ex.conditions[0]) == c]
            copies.append(rng.choice(same) if same else rng.choice(rows))
    bar.bar.close()
    generated = decode_rows(model, written, layers)
    copied = decode_rows(model, copies, layers)
    by_layer = torch.stack([decode_rows(model, written, d) for d in range(1, layers + 1)])
    classifier = classifier or load_digit_classifier(model, progress=progress)
    predicted = classifier.predict(generated).tolist()
    copy_predicted = classifier.predict(copied).tolist()
    real = default_dataset(model)
    real_images = _images(real, range(len(real)))
    real_labels = torch.as_tensor([int(x) for x in real.labels])
    records = []
    for k, (c, p) in enumerate(zip(asked, predicted, strict=True)):
        name = f"{k:03d}_{cfg.task}_{prompts_text[k].split()[-1].rstrip(':').replace('+', 'plus')}"
        save_png(generated[k], out / "images" / f"{name}.png", (model.config.image_size,) * 2)
        records.append({"image": name, "prompt": prompts_text[k], "requested": c,
                        "recognised_as": p, "correct": p == c, "copy_reference": copy_predicted[k],
                        "max_overlap_with_context": round(overlap[k], 4),
                        "first_word": words[written[k][0][0]]})
    frame = pd.DataFrame(records)
    from spae_lab.generate.digit_classifier import reconstruct_all

    summary = {"task": cfg.task, "images": len(frame),
               "accuracy": float(frame["correct"].mean()), "chance": 0.1,
               "accuracy_by_digit": {int(c): float(g["correct"].mean())
                                     for c, g in frame.groupby("requested")},
               "accuracy_by_depth": [float((classifier.predict(img) == torch.tensor(asked))
                                           .float().mean()) for img in by_layer],
               "copy_reference_accuracy": float((frame["copy_reference"] == frame["requested"]).mean()),
               "classifier_real_heldout": classifier.accuracy(real_images, real_labels),
               "classifier_reconstructed_heldout": classifier.accuracy(
                   reconstruct_all(model, real_images), real_labels),
               "mean_max_overlap_with_context": float(frame["max_overlap_with_context"].mean()),
               "exact_copies": int((frame["max_overlap_with_context"] == 1.0).sum()),
               "distinct_outputs": len({str(w) for w in written}),
               "every_word_in_codebook": all(0 <= r < len(words) for p in written
                                             for layer in p for r in layer)}
    first = episodes[0][0][:8]
    context = list(zip([e.conditions[0].removeprefix("An image of ").rstrip(":") for e in first],
                       decode_rows(model, [e.target[:layers] for e in first], layers), strict=True))
    return {"summary": summary, "records": frame, "written": written, "decoded":
            {"generated": generated, "copy reference": copied}, "by_layer": by_layer,
            "prefixes": prefixes, "names": list(frame["image"]), "requested": asked,
            "context": context, "conditions": prompts_text, "targets": None}


def _value(condition: str) -> int:
    """The digit an example condition shows ('An image of 7:' -> 7, 'An image of 1+6:' -> 7)."""
    text = condition.split()[-1].rstrip(":")
    return sum(int(x) for x in text.split("+"))
