"""What a generation asks: its images, their names, and the prompts of every query.

- `load_images`: the input (folder, tar archive, dataset name or Dataset), by name only when the
  name is a built-in dataset;
- `ImageTask` (`build_image_task`): the query images of an image-to-image task, their corrupted
  words, the no-LLM references, the in-context groups and the output names;
- `DigitEpisode` (`build_digit_episodes`): the contexts and queries of `class` / `arithmetic`,
  which need images of the digits 0-9 (the digit classifier that judges them knows no others).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spae_lab.errors import SpaeError
from spae_lab.generate import tasks as T
from spae_lab.generate.decode import Example, Query
from spae_lab.generate.outputs import output_names


class GenerationError(SpaeError, ValueError):
    """A generation that cannot run as asked (unknown task, too few images, images of no digit)."""


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


def load_images(spec, model):
    """A Dataset for `spec`: None (the tokenizer's held-out data), a built-in dataset name (its
    held-out split), a folder or tar archive (all of it), or a Dataset as it is. A built-in name
    wins over a folder of that name in the working folder; write `./digits` for the folder."""
    from spae_lab.data import DATASETS, ImageFolderDataset, make_dataset

    if spec is None:
        return default_dataset(model)
    if not isinstance(spec, (str, Path)):
        return spec
    named = isinstance(spec, str) and spec in DATASETS
    if named and Path(spec).exists():
        warnings.warn(f"{spec!r} is read as the built-in dataset; write ./{spec} for the folder or "
                      f"archive of that name", stacklevel=2)
    size, seed = model.config.image_size, model.experiment_config.train.seed
    if not named and Path(spec).expanduser().exists():  # a path, even one named like a dataset
        return ImageFolderDataset(Path(spec).expanduser(), size, split="all", seed=seed)
    return make_dataset(spec, size, split="heldout", seed=seed)  # a name (or an error naming them)


@dataclass
class QueryImages:
    """Query images and what names them: (B, 3, S, S) tensors, output name stems, (width,
    height) of each input as shown, and where each came from."""

    images: torch.Tensor
    names: list[str]
    sizes: list[tuple[int, int]]
    sources: list[str]


def query_images(data, indices) -> QueryImages:
    """The images at `indices`, with distinct output names (`output_names`) and their sizes: the
    file's (folders, archives) or the dataset's image size."""
    items = [data[i] for i in indices]
    classes = getattr(data, "classes", None)
    stems, sizes, sources = [], [], []
    for i, item in zip(indices, items, strict=True):
        side = item["image"].shape[-1]
        if "path" in item:
            stems.append(Path(item["path"]).stem)
            sources.append(item["path"])
        else:
            label = int(item["label"])
            stems.append(f"{i:05d}_{classes[label]}" if classes else f"{i:05d}")
            sources.append(f"item {i}")
        sizes.append((int(item.get("width", side)), int(item.get("height", side))))
    return QueryImages(stack_images(items), output_names(stems), sizes, sources)


def stack_images(items_or_data, indices=None) -> torch.Tensor:
    """(B, 3, S, S): the images of a list of items, or of `data` at `indices`."""
    items = items_or_data if indices is None else [items_or_data[i] for i in indices]
    return torch.stack([item["image"] for item in items])


@dataclass
class ImageTask:
    """An image-to-image task (inpaint, outpaint, flip, shift, denoise), ready for the LLM.

    `inputs` are the words given (corrupted, or the source of a transform), `fills` the no-LLM
    reference, `targets` / `target_rows` what a perfect answer is (images and words), `groups`
    the (examples, queries) the LLM completes, `box` the corrupted region in grid cells."""

    queries: QueryImages
    targets: torch.Tensor
    target_rows: list[T.Pyramid]
    inputs: list[T.Pyramid]
    fills: list[T.Pyramid]
    groups: list[tuple[list[Example], list[Query]]]
    box: tuple[int, int, int, int] | None

    def output_files(self) -> list[str]:
        return [f"{n}_{kind}.png" for n in self.queries.names for kind in ("corrupted", "generated")]


def build_image_task(model, cfg, data, context_data) -> ImageTask:
    """Queries, examples, no-LLM references and targets of an image-to-image task (`cfg`: a
    GenerationConfig); in-context examples come from `context_data`, never a query."""
    task, layout, V = cfg.task, model.layout, len(model.codebook)
    words = model.codebook.words
    rng = random.Random(cfg.seed)
    same = context_data is data
    pool = list(range(len(context_data)))
    context = [] if task == "denoise" else rng.sample(pool, min(cfg.examples, len(pool)))
    in_context = set(context) if same else set()
    candidates = [i for i in range(len(data)) if i not in in_context]
    queries_idx = candidates[:cfg.images] if cfg.images else candidates
    if not queries_idx:
        raise GenerationError("no query image left after drawing the context")
    queries = query_images(data, queries_idx)
    images = queries.images
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
        ctx_images = stack_images(context_data, context)
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
    return ImageTask(queries, targets_img, target_rows, inputs, fills, groups, box)


# --- class-conditional digits and arithmetic ------------------------------------------------------


@dataclass
class DigitEpisode:
    """One context of `class` / `arithmetic`: its examples (and their words), the queries it
    answers, the digit each query asks for, and each query's output name."""

    examples: list[Example]
    queries: list[Query]
    requested: list[int]
    rows: list[T.Pyramid]
    asked: list[str]  # the label each query shows ("7", "1+7")
    names: list[str] = field(default_factory=list)


def _digit_of(class_name: str) -> int | None:
    from spae_lab.data import DIGIT_NAMES

    name = str(class_name).strip().lower()
    if name in DIGIT_NAMES:
        return DIGIT_NAMES.index(name)
    return int(name) if name.isdigit() and int(name) <= 9 else None


def digit_labels(data) -> list[int]:
    """The digit shown by every image of `data`, read from its class names (0-9 or zero-nine);
    GenerationError for data whose classes are not digits (nothing could judge the outputs)."""
    labels = [int(x) for x in getattr(data, "labels", [data[i]["label"] for i in range(len(data))])]
    classes = getattr(data, "classes", None)
    if classes is None:
        return labels  # a plain Dataset of digits (labels are the digits)
    digits = [_digit_of(c) for c in classes]
    if None in digits:
        shown = ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")
        raise GenerationError(f"class and arithmetic write the digits 0-9, judged by a digit "
                              f"classifier; these images are of other classes ({shown}): give "
                              f"digits (class folders 0-9 or zero-nine), e.g. --tokenizer digits")
    return [digits[y] for y in labels]


def build_digit_episodes(model, cfg, data) -> list[DigitEpisode]:
    """The contexts of class / arithmetic (`cfg.episodes` draws): one episode per draw with a
    "mixed" context, one per query with "same" (only the examples showing the requested label)
    or "last" (those examples moved to the end)."""
    labels = digit_labels(data)
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in range(10)}
    need = cfg.examples_per_class if cfg.task == "class" else 1
    short = [c for c, members in by_class.items() if len(members) < need]
    if short:
        raise GenerationError(f"{cfg.task} needs {need} image(s) of every digit; the input has "
                              f"fewer of {', '.join(map(str, short))}")
    rng = random.Random(cfg.seed)
    sizes = model.layout.tokens_per_layer()
    episodes = []
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
        rows = T.pyramids_of(model.encode(stack_images(data, [i for _, _, i in picks])).ids)
        examples = [T.class_example(text, r) for (text, _, _), r in zip(picks, rows, strict=True)]
        labels_shown = [text for text, _, _ in picks]
        if cfg.class_context == "mixed":
            episodes.append(DigitEpisode(examples, [T.class_query(t, sizes) for t, _ in asked],
                                         [c for _, c in asked], rows, [t for t, _ in asked]))
            continue
        for text, c in asked:  # by the label shown ("1+7"), never by its value: no sum is done here
            mine = [k for k, shown in enumerate(labels_shown) if shown == text]
            order = mine if cfg.class_context == "same" else \
                [k for k, shown in enumerate(labels_shown) if shown != text] + mine
            if not order:
                raise GenerationError(f"no in-context example shows {text!r}; use class_context 'last' or 'mixed'")
            episodes.append(DigitEpisode([examples[k] for k in order], [T.class_query(text, sizes)],
                                         [c], [rows[k] for k in order], [text]))
    number = 0
    for episode in episodes:  # output names: query number, task and label ("004_arithmetic_1plus7")
        for text in episode.asked:
            episode.names.append(f"{number:03d}_{cfg.task}_{text.replace('+', 'plus')}")
            number += 1
    return episodes


def shown_digit(condition: str) -> int:
    """The digit an example condition shows ('An image of 7:' -> 7, 'An image of 1+6:' -> 7)."""
    text = condition.split()[-1].rstrip(":")
    return sum(int(x) for x in text.split("+"))
