"""Captioning and visual question answering from SPAE's semantic tokens, on synthetic scenes.

The scenes know their ground truth exactly (colour, shape, count), so a frozen LLM's answers are
scored automatically. The LLM sees `num_examples` in-context examples from *training* scenes
(image words, then the caption or the answer) and answers for *held-out* scenes:

- VQA: "What colour is the shape?", "What shape is it?", "How many shapes are there?"; decoding
  constrained to the possible answers, by likelihood ranking, or open-ended (exact match);
- captioning: open-ended generation, scored by whether the caption names the scene's colour,
  its shape (singular or plural), and both, beside the exact-match rate.

A no-LLM reference reads the answer straight off the image words (the first colour / shape word
among them): what the words already say, before any LLM reasoning.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from spae_lab.data import COLORS, NUMBER_WORDS, PLURALS, SHAPES, Scene, SyntheticScenes
from spae_lab.io import atomic_write_text
from spae_lab.llm.answer import DECODINGS, choose, parse_open_answer
from spae_lab.llm.base import GenerationParams, LLMBackend
from spae_lab.tables import accuracy_table

COUNT_WORDS = NUMBER_WORDS[1:4]  # scenes hold 1 to 3 objects

QUESTIONS: dict[str, tuple[str, Callable[[Scene], str], tuple[str, ...]]] = {
    # name: (question, ground truth of a scene, every possible answer)
    "colour": ("What colour is the shape?", lambda s: s.colors[0], tuple(COLORS)),
    "shape": ("What shape is it?", lambda s: s.shapes[0], SHAPES),
    "count": ("How many shapes are there?", lambda s: NUMBER_WORDS[s.count], COUNT_WORDS),
}


def scene_texts(to_text: Callable[[torch.Tensor], list[str]], scenes: SyntheticScenes,
                indices: list[int]) -> list[str]:
    images = torch.stack([scenes[i]["image"] for i in indices])
    return to_text(images)


def words_reference(text: str, answers: tuple[str, ...]) -> str | None:
    """No-LLM reference: the first image word that is a possible answer (case-insensitive)."""
    lowered = {a.lower(): a for a in answers}
    plural = {PLURALS.get(a, a): a for a in answers}
    for word in text.lower().split():
        if word in lowered:
            return lowered[word]
        if word in plural:
            return plural[word]
    return None


def _answer(backend: LLMBackend, prefix: str, queries: list[str], answers: tuple[str, ...],
            decoding: str) -> list[str | None]:
    chosen = choose(backend, prefix, queries, answers, decoding,
                    GenerationParams(max_new_tokens=6, stop=("\n", ".")))
    return [None if i is None else answers[i] for i in chosen]


def run_vqa(to_text: Callable[[torch.Tensor], list[str]], backend: LLMBackend, *,
            num_examples: int = 8, num_queries: int = 60, decodings: tuple[str, ...] = DECODINGS,
            seed: int = 0, image_size: int = 32, progress: bool = True
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Answer the three questions for `num_queries` held-out scenes. Returns (records, summary)."""
    train = SyntheticScenes(num_images=10_000, image_size=image_size, seed=seed, split="train")
    heldout = SyntheticScenes(num_images=num_queries, image_size=image_size, seed=seed,
                              split="heldout")
    rng = random.Random(seed)
    example_ids = rng.sample(range(len(train)), num_examples)
    example_texts = scene_texts(to_text, train, example_ids)
    query_ids = list(range(num_queries))
    query_texts = scene_texts(to_text, heldout, query_ids)
    records = []
    jobs = [(q, d) for q in QUESTIONS for d in decodings]
    for name, decoding in tqdm(jobs, desc="VQA", disable=not progress):
        question, truth_of, answers = QUESTIONS[name]
        prefix = "".join(f"Image: {t}.\nQuestion: {question}\nAnswer: {truth_of(train.scene(i))}\n"
                         for i, t in zip(example_ids, example_texts, strict=True))
        queries = [f"Image: {t}.\nQuestion: {question}\nAnswer:" for t in query_texts]
        predictions = _answer(backend, prefix, queries, answers, decoding)
        for i, pred in zip(query_ids, predictions, strict=True):
            truth = truth_of(heldout.scene(i))
            records.append({"question": name, "method": "LLM", "decoding": decoding,
                            "scene": i, "truth": truth, "prediction": pred,
                            "correct": pred == truth})
    for name, (_, truth_of, answers) in QUESTIONS.items():
        for i, text in zip(query_ids, query_texts, strict=True):
            truth, pred = truth_of(heldout.scene(i)), words_reference(text, answers)
            records.append({"question": name, "method": "image words (no LLM)", "decoding": "-",
                            "scene": i, "truth": truth, "prediction": pred,
                            "correct": pred == truth})
        majority = max(answers, key=lambda a: sum(truth_of(train.scene(i)) == a
                                                  for i in example_ids))
        for i in query_ids:
            truth = truth_of(heldout.scene(i))
            records.append({"question": name, "method": "majority answer (no LLM)",
                            "decoding": "-", "scene": i, "truth": truth, "prediction": majority,
                            "correct": majority == truth})
    records_df = pd.DataFrame(records)
    return records_df, accuracy_table(records, ["question", "method", "decoding"])


def caption_scores(caption: str, scene: Scene) -> dict[str, bool]:
    """Does a generated caption name the scene's colour, its shape (or plural), both, exactly?"""
    words = parse_open_answer(caption).split()
    colour = scene.colors[0] in words
    shape = scene.shapes[0] in words or PLURALS[scene.shapes[0]] in words
    return {"colour": colour, "shape": shape, "colour and shape": colour and shape,
            "exact caption": parse_open_answer(caption) == scene.caption.lower()}


def run_captioning(to_text: Callable[[torch.Tensor], list[str]], backend: LLMBackend, *,
                   num_examples: int = 8, num_queries: int = 60, seed: int = 0,
                   image_size: int = 32) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Caption `num_queries` held-out scenes from their words. Returns (captions, scores)."""
    train = SyntheticScenes(num_images=10_000, image_size=image_size, seed=seed, split="train")
    heldout = SyntheticScenes(num_images=num_queries, image_size=image_size, seed=seed,
                              split="heldout")
    example_ids = random.Random(seed + 1).sample(range(len(train)), num_examples)
    example_texts = scene_texts(to_text, train, example_ids)
    query_texts = scene_texts(to_text, heldout, list(range(num_queries)))
    prefix = "".join(f"Image: {t}.\nCaption: {train.scene(i).caption}\n"
                     for i, t in zip(example_ids, example_texts, strict=True))
    captions = backend.generate_shared_prefix(prefix, [f"Image: {t}.\nCaption:" for t in query_texts],
                                              GenerationParams(max_new_tokens=16, stop=("\n",)))
    rows, records = [], []
    for i, (text, caption) in enumerate(zip(query_texts, captions, strict=True)):
        scene = heldout.scene(i)
        scores = caption_scores(caption, scene)
        rows.append({"scene": i, "image words": text, "caption": caption.strip(),
                     "truth": scene.caption} | scores)
        records += [{"criterion": k, "correct": v} for k, v in scores.items()]
    return pd.DataFrame(rows), accuracy_table(records, ["criterion"])


@dataclass
class SceneQAResult:
    """VQA and captioning of held-out scenes (`run_scene_qa`)."""

    vqa: pd.DataFrame  # accuracy with 95% CI per (question, method, decoding)
    captioning: pd.DataFrame  # share of captions naming the colour, the shape, both; exact ones
    captions: pd.DataFrame  # one row per captioned scene: its words, the caption, the truth


def run_scene_qa(model, backend: LLMBackend | str, out_dir: str | Path, *, layers: int = 2,
                 num_examples: int = 8, num_queries: int = 60, num_captions: int | None = None,
                 decodings: tuple[str, ...] = DECODINGS, seed: int = 0,
                 progress: bool = True) -> SceneQAResult:
    """VQA and captioning of held-out scenes by an LLM reading `model`'s first `layers` layers.

    The LLM's answers are cached in `out_dir/llm_cache.sqlite` (a rerun asks nothing new); the
    tables go to vqa.csv, captioning.csv and captions.csv there (`num_captions` scenes are
    captioned, default `num_queries`).
    """
    from spae_lab.llm import load_lazily
    from spae_lab.llm.cache import CachedBackend
    from spae_lab.reading.fewshot import TokenizerTexts

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    llm = CachedBackend(load_lazily(backend), out_dir / "llm_cache.sqlite")
    reader = TokenizerTexts(model, layers)
    size = model.config.image_size
    try:
        _, vqa = run_vqa(reader, llm, num_examples=num_examples, num_queries=num_queries,
                         decodings=decodings, seed=seed, image_size=size, progress=progress)
        captions, captioning = run_captioning(reader, llm, num_examples=num_examples,
                                              num_queries=num_captions or num_queries, seed=seed,
                                              image_size=size)
    finally:
        llm.close()
    for name, table in (("vqa", vqa), ("captioning", captioning), ("captions", captions)):
        atomic_write_text(out_dir / f"{name}.csv", table.to_csv(index=False))
    return SceneQAResult(vqa, captioning, captions)
