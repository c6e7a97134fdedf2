"""Reading clips with a frozen LLM: few-shot classification and VQA, scored exactly.

A clip becomes text as an image does: the words of its first pyramid layers (`ClipTexts`; layers
1-2 of the shipped clip tokenizer are one word for what the clip shows and one for how it moves).
The baseline reads each frame with an image tokenizer (`FrameByFrameTexts`: the shipped `scenes`
one) and keeps the same number of words per clip, taken from frames spread over the clip.

- Few-shot classification reuses the image protocol whole (`spae_lab.reading.fewshot.run_fewshot`: Frozen's
  settings, saved episodes, the three decodings, calibration, no-LLM 1-NN and word-overlap
  references), on clips labelled by their direction of motion (or colour, shape).
- VQA asks "Which way does it move?", "What colour is the shape?", "What shape is it?", "How many
  shapes are there?" about held-out moving scenes, after in-context examples from training clips,
  beside a no-LLM reading of the words, the majority answer and chance.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spae_lab.data import COLORS, NUMBER_WORDS, SHAPES
from spae_lab.llm.answer import choose
from spae_lab.llm.base import GenerationParams, LLMBackend
from spae_lab.reading.scene_qa import words_reference
from spae_lab.tables import accuracy_table
from spae_lab.video.data import DIRECTIONS, MovingScenes


class ClipTexts:
    """Clip text from a clip tokenizer: the words of its first `num_layers` layers."""

    def __init__(self, model, num_layers: int = 2, batch_size: int = 64):
        self.model, self.num_layers, self.batch_size = model, min(num_layers, model.num_layers), batch_size

    @property
    def words_per_clip(self) -> int:
        return self.model.layout.cumulative_tokens()[self.num_layers - 1]

    @property
    def description(self) -> str:
        return f"clip tokenizer, {self.num_layers} layer(s), {self.words_per_clip} words a clip"

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> list[str]:
        out = []
        for start in range(0, len(clips), self.batch_size):
            pyramid = self.model.encode(clips[start : start + self.batch_size])
            out += [pyramid.to_text(self.num_layers, image=i) for i in range(len(pyramid))]
        return out


def frame_word_counts(words_per_clip: int, frames: int) -> list[int]:
    """Words taken from each frame so that a clip gives `words_per_clip` words: the same number
    from every frame, and one more from frames spread evenly over the clip for the remainder."""
    base, extra = divmod(words_per_clip, frames)
    chosen = {round(i * (frames - 1) / (extra - 1)) if extra > 1 else 0 for i in range(extra)}
    if extra == 1:
        chosen = {0}
    return [base + (t in chosen) for t in range(frames)]


class FrameByFrameTexts:
    """Clip text from an image tokenizer run on every frame: `words_per_clip` words a clip, each
    frame's first words (its pyramid read coarse to fine), in frame order (`frame_word_counts`)."""

    def __init__(self, image_model, words_per_clip: int, batch_size: int = 256):
        self.model, self.words_per_clip, self.batch_size = image_model, words_per_clip, batch_size

    @property
    def description(self) -> str:
        return f"image tokenizer frame by frame, {self.words_per_clip} words a clip"

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> list[str]:
        B, _, T, H, W = clips.shape
        frames = clips.transpose(1, 2).reshape(B * T, 3, H, W)
        size = self.model.config.image_size
        if (H, W) != (size, size):
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False).clamp(0, 1)
        words = []
        for start in range(0, len(frames), self.batch_size):
            pyramid = self.model.encode(frames[start : start + self.batch_size])
            words += [pyramid.to_text(image=i).split() for i in range(len(pyramid))]
        counts = frame_word_counts(self.words_per_clip, T)
        return [" ".join(w for t in range(T) for w in words[b * T + t][: counts[t]]) for b in range(B)]


class ClipsAsImages(Dataset):
    """A clip dataset seen by the image few-shot harness: items' "video" as "image", classes and
    labels by `attribute` (direction, color or shape)."""

    ANSWERS = {"direction": DIRECTIONS, "color": tuple(COLORS), "shape": SHAPES}

    def __init__(self, clips: Dataset, attribute: str = "direction"):
        if attribute not in self.ANSWERS:
            raise ValueError(f"attribute must be one of {', '.join(self.ANSWERS)}, got {attribute!r}")
        self.clips, self.attribute = clips, attribute
        self.classes = list(self.ANSWERS[attribute])
        self.labels = [self.classes.index(clips[i][attribute]) for i in range(len(clips))]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.clips[i])
        item["image"] = item.pop("video")
        item["label"] = self.labels[i]
        return item


def run_clip_fewshot(clips: Dataset, readers: dict[str, Callable[[torch.Tensor], list[str]]], backend: LLMBackend,
                     config, out_dir, attribute: str = "direction",
                     references: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                     progress: bool = True):
    """Few-shot classification of clips by `attribute` with the image protocol
    (`fewshot.run_fewshot`; episodes saved in `out_dir/episodes.json`). Returns its `FewShotResult`:
    records, summary with 95% intervals, texts ({reader: {clip key: text}})."""
    from pathlib import Path

    from spae_lab.reading.fewshot import run_fewshot

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return run_fewshot(ClipsAsImages(clips, attribute), readers, backend, config,
                       episodes_path=Path(out_dir) / "episodes.json", references=references, progress=progress)


QUESTIONS: dict[str, tuple[str, Callable, tuple[str, ...]]] = {
    # name: (question, ground truth of a ClipScene, every possible answer)
    "direction": ("Which way does it move?", lambda s: s.direction, DIRECTIONS),
    "colour": ("What colour is the shape?", lambda s: s.colors[0], tuple(COLORS)),
    "shape": ("What shape is it?", lambda s: s.shapes[0], SHAPES),
    "count": ("How many shapes are there?", lambda s: NUMBER_WORDS[s.count], NUMBER_WORDS[1:4]),
}


def run_clip_vqa(readers: dict[str, Callable[[torch.Tensor], list[str]]], backend: LLMBackend,
                 train: MovingScenes, heldout: MovingScenes, num_examples: int = 8,
                 decodings: tuple[str, ...] = ("constrained",), questions: tuple[str, ...] = tuple(QUESTIONS),
                 seed: int = 0, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every question about every held-out clip, by the LLM reading each reader's words after
    `num_examples` examples (training clips, their words, the true answer), beside the answer read
    off the words alone (no LLM), the examples' majority answer and chance. Returns (records,
    accuracy table with 95% intervals, per question, method and decoding); `progress`: a tqdm.auto
    bar over the LLM's passes (one per reader, question and decoding)."""
    from tqdm.auto import tqdm

    example_ids = random.Random(seed).sample(range(len(train)), num_examples)
    example_clips = torch.stack([train[i]["video"] for i in example_ids])
    query_clips = torch.stack([heldout[i]["video"] for i in range(len(heldout))])
    params = GenerationParams(max_new_tokens=6, stop=("\n", "."))
    records = []
    bar = tqdm(total=len(readers) * len(questions) * len(decodings), desc="clip questions", disable=not progress)
    for reader_name, reader in readers.items():
        example_texts, query_texts = reader(example_clips), reader(query_clips)
        for name in questions:
            question, truth_of, answers = QUESTIONS[name]
            prefix = "".join(f"Video: {t}.\nQuestion: {question}\nAnswer: {truth_of(train.scene(i))}\n"
                             for i, t in zip(example_ids, example_texts, strict=True))
            queries = [f"Video: {t}.\nQuestion: {question}\nAnswer:" for t in query_texts]
            truths = [truth_of(heldout.scene(i)) for i in range(len(heldout))]
            for decoding in decodings:
                chosen = choose(backend, prefix, queries, answers, decoding, params)
                bar.update(1)
                records += [{"question": name, "method": reader_name, "decoding": decoding, "clip": i, "truth": t,
                             "prediction": None if c is None else answers[c], "correct": c is not None
                             and answers[c] == t} for i, (c, t) in enumerate(zip(chosen, truths, strict=True))]
            for i, (text, t) in enumerate(zip(query_texts, truths, strict=True)):
                pred = words_reference(text, answers)
                records.append({"question": name, "method": f"{reader_name}: words alone (no LLM)", "decoding": "-",
                                "clip": i, "truth": t, "prediction": pred, "correct": pred == t})
    bar.close()
    for name in questions:
        _, truth_of, answers = QUESTIONS[name]
        shown = [truth_of(train.scene(i)) for i in example_ids]
        majority = max(answers, key=shown.count)
        for i in range(len(heldout)):
            t = truth_of(heldout.scene(i))
            records.append({"question": name, "method": "majority answer (no LLM)", "decoding": "-", "clip": i,
                            "truth": t, "prediction": majority, "correct": majority == t})
    table = accuracy_table(records, ["question", "method", "decoding"])
    table["chance"] = [1 / len(QUESTIONS[q][2]) for q in table["question"]]
    return pd.DataFrame(records), table
