"""Editing by words: each image's top-layer word swapped for another word, the pyramid decoded.

    from spae_lab.generate.edit import run_edit
    result = run_edit("digits", word="seven", out="runs/edit_seven")
    result.summary["judged_as_word"]   # per depth: before, after the swap, after a random word

No LLM takes part: the edit is the user's. What the task measures is how far the top word steers
the picture, read by a judge that does not look at words: the project's digit classifier for a
tokenizer trained on digits (when the word names a digit), else the teacher's zero-shot choice
among the data's class names and the word. Each decode (from 1, 2, ..., L layers) is judged
before the swap, after it, and after swapping in a random codebook word (the reference an edit
must beat). Only images the judge does not already give the word are edited.

Writes into `out`: `images/NAME_original.png` (the unedited words decoded) and
`images/NAME_edited.png` (both at the input's size), `results.csv`, `summary.json`, `config.json`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from spae_lab.generate.queries import GenerationError
from spae_lab.io import atomic_write_json, atomic_write_text
from spae_lab.metrics import psnr

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def swap_top_word(pyramid, rows):
    """A copy of `pyramid` (TokenPyramid) whose layer-1 tokens are codebook row `rows` (an int
    for every image, or one per image)."""
    from spae_lab.pyramid import TokenPyramid

    ids = [i.clone() for i in pyramid.ids]
    ids[0][:] = torch.as_tensor(rows, dtype=ids[0].dtype).view(-1, 1)
    return TokenPyramid(ids, pyramid.layout, pyramid.codebook)


def _is_digits(model) -> bool:
    return str(model.experiment_config.data.dataset).lower() in ("mnist", "digits")


def judge_names(model, data, word: str) -> list[str]:
    """The names the teacher chooses among: the data's class names, or for images without classes
    (a flat folder: its one "class" is the folder's name) those of the tokenizer's own data; the
    word among them. GenerationError where no other name exists (the choice would be the word's)."""
    from spae_lab.generate.queries import default_dataset

    names = None if getattr(data, "flat", False) else getattr(data, "classes", None)
    if not names:
        try:
            names = getattr(default_dataset(model), "classes", None)
        except GenerationError:
            names = None
    others = sorted(set(names or []) - {word})
    if not others:
        raise GenerationError(f"edit judges whether an edited image shows {word!r} among class names, "
                              "and neither these images (no class folders) nor the tokenizer's data "
                              "name any: give a folder of class folders (root/<class>/<image>)")
    return sorted([*others, word])


def make_judge(model, word: str, data, classifier=None):
    """(description, judge): judge(images (B, 3, S, S)) -> (B,) bool, "the image shows `word`"."""
    if _is_digits(model) and word in DIGIT_WORDS:
        from spae_lab.generate.digit_classifier import load_digit_classifier

        classifier = classifier or load_digit_classifier(model, progress=False)
        target = DIGIT_WORDS.index(word)
        return "digit classifier", lambda images: classifier.predict(images) == target
    from spae_lab.teacher import load_teacher

    names = judge_names(model, data, word)
    guide = getattr(model, "top_word_guide", None)
    teacher = guide.teacher if guide is not None else load_teacher(model.experiment_config.semantic.teacher)
    target = names.index(word)
    return (f"teacher zero-shot among {len(names)} names",
            lambda images: teacher.zero_shot(images, names) == target)


@dataclass
class EditResult:
    """What `run_edit` returns; summary.json and results.csv hold the first two."""

    summary: dict  # the judge, and the share judged as the word per depth, per kind of decode
    records: pd.DataFrame  # one row per image
    original: torch.Tensor  # (B, 3, S, S) full-depth decodes of the unedited words
    edited: torch.Tensor  # ... with the top word swapped for the word
    random_word: torch.Tensor  # ... with a random top word (the reference an edit must beat)


@torch.no_grad()
def run_edit(tokenizer, word: str, *, input=None, out="runs/edit", images: int = 20, seed: int = 0,
             classifier=None, force: bool = False) -> EditResult:
    """Swap the top word of `images` held-out (or `input`) images for `word`; judge and save.
    Returns an `EditResult`.
    `out` is owned as `run_generation`'s is (the same run resumes, another needs `force`)."""
    from spae_lab import load_tokenizer
    from spae_lab.generate.outputs import IMAGES, GenerationFolder, save_png
    from spae_lab.generate.queries import load_images, query_images, stack_images

    folder = GenerationFolder(out)
    folder.check()
    model = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    words = model.codebook.words
    if word not in words:
        raise GenerationError(f"{word!r} is not a word of this tokenizer's codebook "
                              f"({len(words)} words); edit swaps in codebook words only")
    data = load_images(input, model)
    description, judge = make_judge(model, word, data, classifier)
    rng = random.Random(seed)
    order = list(range(len(data)))
    rng.shuffle(order)
    picked = []
    for start in range(0, len(order), 64):  # images the judge does not already read as `word`
        chunk = order[start:start + 64]
        reconstructed = model.decode(model.encode(stack_images(data, chunk)))
        picked += [i for i, hit in zip(chunk, judge(reconstructed).tolist(), strict=True) if not hit]
        if len(picked) >= images:
            break
    picked = picked[:images]
    if not picked:
        raise GenerationError(f"every image is already read as {word!r}; nothing to edit")
    queries = query_images(data, picked)
    pyramid = model.encode(queries.images)
    edited = swap_top_word(pyramid, words.index(word))
    randomised = swap_top_word(pyramid, torch.randint(len(words), (len(picked),),
                                                      generator=torch.Generator().manual_seed(seed)))
    decodes = {name: model.decode_every_depth(p) for name, p in
               (("original", pyramid), ("edited", edited), ("random word", randomised))}
    judged = {name: torch.stack([judge(d) for d in x]).float() for name, x in decodes.items()}  # (L, B)
    identity = {"task": "edit", "tokenizer": str(tokenizer), "word": word, "input": str(input),
                "images": images, "seed": seed}
    folder.claim(identity, [f"{n}_{kind}.png" for n in queries.names for kind in ("original", "edited")], force)
    out = folder.path
    try:
        for k, (name, size) in enumerate(zip(queries.names, queries.sizes, strict=True)):
            save_png(decodes["original"][-1, k], out / IMAGES / f"{name}_original.png", size, out)
            save_png(decodes["edited"][-1, k], out / IMAGES / f"{name}_edited.png", size, out)
        change = psnr(decodes["edited"][-1], decodes["original"][-1])
        records = pd.DataFrame({"image": queries.names, "source": queries.sources,
                                "old_word": [words[int(r)] for r in pyramid.ids[0][:, 0]],
                                "new_word": word, "psnr_edited_vs_original": change.tolist(),
                                **{f"judged_{n.replace(' ', '_')}": judged[n][-1].bool().tolist()
                                   for n in judged}})
        summary = {"task": "edit", "word": word, "images": len(picked), "judge": description,
                   "judged_as_word": {n: [round(float(v), 4) for v in j.mean(1)] for n, j in judged.items()},
                   "psnr_edited_vs_original": round(float(change.mean()), 2)}
        atomic_write_text(out / "results.csv", records.to_csv(index=False), within=out)
        atomic_write_json(out / "summary.json", summary, within=out)
        folder.write_config({})
    finally:
        folder.release()
    return EditResult(summary, records, *(decodes[n][-1] for n in ("original", "edited", "random word")))
