"""Few-shot classification by a frozen LLM reading images as words (SPAE section 3, Frozen's protocol).

An *episode* draws `ways` classes, `shots` support images per class and one query image per class
from a labelled dataset (images the tokenizer never trained on). Each image becomes text (its first
pyramid layers' words); the LLM reads the support set (optionally repeated, optionally after a
task-induction sentence) and names each query's class:

- `open`: greedy generation, exact match of the class name (Frozen, SPAE);
- `constrained`: greedy generation restricted to the class names (V2L);
- `likelihood`: the class name with the highest log-likelihood (scores every name).

Episodes are sampled with a seed and saved to JSON (by image path), so anyone reruns exactly the
same episodes. LLM answers go through an on-disk cache (`spae_lab.llm.cache`), so a killed
experiment resumes without asking again and a finished one re-renders for free.

The paper's table has 7 settings per way (`FROZEN_SETTINGS`): (task induction, inner shots,
repeats) = (no, 1, 0), (yes, 1, 0), (yes, 3, 0), (yes, 5, 0), (yes, 1, 1), (yes, 1, 3), (yes, 1, 5).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spae_lab.io import atomic_write_text
from spae_lab.llm.answer import choose
from spae_lab.llm.base import GenerationParams, LLMBackend
from spae_lab.reading.episodes import (
    FROZEN_SETTINGS,
    NONSENSE_NAMES,
    Episode,
    FewShotConfig,
    FewShotError,
    Setting,
    image_keys,
    load_episodes,
    prepare_episodes,
)
from spae_lab.tables import accuracy_table, to_markdown

PROMPT_FORMATS = ("spae", "v2l")


# --- prompts --------------------------------------------------------------------------------------


def class_names(episode: Episode, dataset_classes: Sequence[str], names: str) -> list[str]:
    """Names the LLM sees for the episode's classes: the real ones or Frozen's nonsense words."""
    if names == "real":
        return [dataset_classes[c].replace("_", " ").lower() for c in episode.classes]
    if names == "nonsense":
        return list(NONSENSE_NAMES[: episode.ways])
    raise FewShotError(f"names must be 'real' or 'nonsense', got {names!r}")


def build_prompt(support: Sequence[tuple[str, str]], query_texts: Sequence[str],
                 names: Sequence[str], setting: Setting, prompt_format: str = "spae"
                 ) -> tuple[str, list[str]]:
    """(prefix shared by every query, one query string per query image).

    `support` holds (image text, class name) in prompt order; the LLM's answer continues the query
    with " <name>" (see `llm.answer.choose`).
    """
    examples = list(support) * (setting.repeats + 1)
    if prompt_format == "spae":
        # Frozen / SPAE: "Answer with dax or blicket." then "<image> This is a dax."
        head = f"Answer with {' or '.join(names)}.\n" if setting.induction else ""
        prefix = head + "".join(f"Image: {t}. This is a {n}.\n" for t, n in examples)
        return prefix, [f"Image: {t}. This is a" for t in query_texts]
    if prompt_format == "v2l":
        options = " or ".join(f"'{n}'" for n in names)
        head = (f"For each of the following input output pairs, output is one of [{options}]\n"
                if setting.induction else "")
        prefix = head + "###\n" + "".join(f"Input: < {t} >\nOutput: {n}\n###\n" for t, n in examples)
        return prefix, [f"Input: < {t} >\nOutput:" for t in query_texts]
    raise FewShotError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")


# The image text of the content-free query (Zhao et al. 2021, "Calibrate before use").
CONTENT_FREE_TEXT = "N/A"
CALIBRATIONS = ("content-free", "none")


def predict(backend: LLMBackend, prefix: str, queries: Sequence[str], names: Sequence[str],
            decoding: str, content_free: str | None = None) -> list[int | None]:
    """Index into `names` of each query's answer (`llm.answer.choose`); None when an open answer
    names no class. Generation stops at a line end, a full stop or a '#'."""
    params = GenerationParams(max_new_tokens=8, stop=("\n", ".", "#"))
    return choose(backend, prefix, queries, names, decoding, params, content_free)


# --- image -> text --------------------------------------------------------------------------------


class TokenizerTexts:
    """Image text from a trained tokenizer: the words of its first `num_layers` layers.

    `max_tokens` keeps only the first N words (LQAE-style single-layer tokenizers have 64).
    """

    def __init__(self, model, num_layers: int = 2, max_tokens: int | None = None,
                 batch_size: int = 128):
        self.model, self.num_layers, self.max_tokens = model, num_layers, max_tokens
        self.batch_size = batch_size

    @property
    def description(self) -> str:
        layout = self.model.layout
        n = layout.cumulative_tokens()[min(self.num_layers, layout.num_layers) - 1]
        if self.max_tokens is not None:
            n = min(n, self.max_tokens)
        return f"{min(self.num_layers, layout.num_layers)} layer(s), {n} words"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        out = []
        layers = min(self.num_layers, self.model.num_layers)
        device = next(self.model.parameters()).device
        for start in range(0, len(images), self.batch_size):
            pyramid = self.model.encode(images[start : start + self.batch_size].to(device))
            for i in range(len(pyramid)):
                words = pyramid.to_text(layers, image=i).split()
                out.append(" ".join(words[: self.max_tokens]))
        return out


def texts_for(keys: Sequence[str], dataset, to_text: Callable[[torch.Tensor], list[str]]
              ) -> dict[str, str]:
    """Text of each distinct image key (each image is encoded once)."""
    index = {k: i for i, k in enumerate(image_keys(dataset))}
    unique = sorted(set(keys))
    images = torch.stack([dataset[index[k]]["image"] for k in unique])
    return dict(zip(unique, to_text(images), strict=True))


# --- no-LLM references ----------------------------------------------------------------------------


def nearest_neighbour_predictions(episode: Episode, features: dict[str, torch.Tensor],
                                  metric: str = "cosine") -> list[int]:
    """Class position of each query's nearest support image (1-NN; what the LLM must beat)."""
    support = torch.stack([features[k] for k, _ in episode.support]).float()
    positions = torch.tensor([p for _, p in episode.support])
    preds = []
    for key, _ in episode.queries:
        q = features[key].float()
        if metric == "cosine":
            sim = F.normalize(support, dim=-1) @ F.normalize(q, dim=-1)
        else:
            sim = -((support - q) ** 2).sum(-1)
        preds.append(int(positions[sim.argmax()]))
    return preds


def word_overlap_predictions(episode: Episode, texts: dict[str, str]) -> list[int]:
    """Class of the support image sharing most words with the query (ties: first in prompt)."""
    preds = []
    for key, _ in episode.queries:
        words = set(texts[key].split())
        overlaps = [len(words & set(texts[k].split())) for k, _ in episode.support]
        preds.append(episode.support[max(range(len(overlaps)), key=overlaps.__getitem__)][1])
    return preds


# --- statistics and tables ------------------------------------------------------------------------


def summarize(records: list[dict]) -> pd.DataFrame:
    """Per-query records -> accuracy with 95% CI per (method, ways, names, decoding, setting)."""
    return accuracy_table(records, ["method", "ways", "names", "decoding", "setting"])


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's shape: one row per (ways, names, decoding, method), the 7 settings as columns
    (accuracy in %), and their average."""
    order = [s.label for s in FROZEN_SETTINGS]
    table = summary.pivot_table(index=["ways", "names", "decoding", "method"], columns="setting",
                                values="accuracy", sort=False)
    table = table[[c for c in order if c in table.columns]] * 100
    table["average"] = table.mean(axis=1)
    return table.round(1).reset_index()


# --- the experiment -------------------------------------------------------------------------------


@dataclass
class FewShotResult:
    """What a few-shot experiment produced. `run_fewshot` fills records, summary and texts;
    `run_experiment` adds the paper-shaped table, the files written and the dataset's classes."""

    records: pd.DataFrame  # one row per (method, ways, names, decoding, setting, episode, query)
    summary: pd.DataFrame  # accuracy with 95% CI per (method, ways, names, decoding, setting)
    texts: dict[str, dict[str, str]]  # {reader: {image key: the words the LLM read}}
    table: pd.DataFrame | None = None  # the paper's shape (`paper_table`)
    paths: dict[str, Path] | None = None  # records, summary(_md), table(_md), config (`save_results`)
    classes: list[str] | None = None  # the dataset's class names, by class id


def run_fewshot(dataset, readers: dict[str, Callable[[torch.Tensor], list[str]]],
                backend: LLMBackend, cfg: FewShotConfig, *, episodes_path: str | Path | None = None,
                references: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                progress: bool = True) -> FewShotResult:
    """Run every (reader, ways, names, decoding, setting) on the same episodes.

    `readers` map a method name to an image -> text function (e.g. `TokenizerTexts`);
    `references` map a no-LLM method name to an image -> feature function (1-NN on the features;
    `word overlap` of each reader's texts is added automatically). Returns the per-query records,
    the summary table with 95% CIs and {reader: {image key: text}} (a `FewShotResult`).
    """
    classes = list(dataset.classes)
    episodes = prepare_episodes(dataset, cfg, episodes_path)
    all_keys = sorted({k for eps in episodes.values() for e in eps for k, _ in e.support + e.queries})
    texts = {name: texts_for(all_keys, dataset, fn) for name, fn in readers.items()}
    features = {}
    if references:
        index = {k: i for i, k in enumerate(image_keys(dataset))}
        images = torch.stack([dataset[index[k]]["image"] for k in all_keys])  # once for all
        features = {name: dict(zip(all_keys, fn(images), strict=True))
                    for name, fn in references.items()}

    records: list[dict] = []

    def record(method, ways, names, decoding, setting, episode_id, episode, preds):
        for (key, truth), pred in zip(episode.queries, preds, strict=True):
            records.append({"method": method, "ways": ways, "names": names, "decoding": decoding,
                            "setting": setting.label, "episode": episode_id, "image": key,
                            "truth": truth, "prediction": pred, "correct": pred == truth})

    if cfg.calibration not in CALIBRATIONS:
        raise FewShotError(f"calibration must be one of {CALIBRATIONS}, got {cfg.calibration!r}")
    jobs = [(m, w, n, d, s) for m in readers for w in cfg.ways for n in cfg.names
            for d in cfg.decodings for s in cfg.settings]
    # Asked episode by episode (its settings, shortest prompt first, and decodings together), so
    # a backend that keeps recent prefixes reads each shared support set once; recorded in the
    # order of `jobs`.
    answers: dict[tuple, list] = {}
    bar = tqdm(total=len(jobs) * cfg.episodes, desc="few-shot episodes", disable=not progress)
    for method, ways, names in dict.fromkeys((m, w, n) for m, w, n, _, _ in jobs):
        for shots in sorted({s.shots for s in cfg.settings}):
            group = sorted((s for s in cfg.settings if s.shots == shots),
                           key=lambda s: (s.induction, s.repeats))
            for i, episode in enumerate(episodes[f"{ways}way-{shots}shot"]):
                shown = class_names(episode, classes, names)
                support = [(texts[method][k], shown[p]) for k, p in episode.support]
                for setting in group:
                    prefix, queries = build_prompt(
                        support, [texts[method][k] for k, _ in episode.queries] + [CONTENT_FREE_TEXT],
                        shown, setting, cfg.prompt_format)
                    content_free = queries.pop()
                    for decoding in cfg.decodings:
                        answers[method, ways, names, decoding, setting, i] = predict(
                            backend, prefix, queries, shown, decoding,
                            content_free if cfg.calibration == "content-free" else None)
                        bar.update(1)
    for method, ways, names, decoding, setting in jobs:
        for i, episode in enumerate(episodes[f"{ways}way-{setting.shots}shot"]):
            record(method, ways, names, decoding, setting, i, episode,
                   answers[method, ways, names, decoding, setting, i])
    bar.close()

    # No-LLM references: names, decoding and induction do not matter; repeats add no new image.
    for w in cfg.ways:
        for setting in cfg.settings:
            for i, episode in enumerate(episodes[f"{w}way-{setting.shots}shot"]):
                for name, feats in features.items():
                    preds = nearest_neighbour_predictions(episode, feats)
                    record(f"1-NN {name} (no LLM)", w, "-", "-", setting, i, episode, preds)
                for method, method_texts in texts.items():
                    preds = word_overlap_predictions(episode, method_texts)
                    record(f"word overlap {method} (no LLM)", w, "-", "-", setting, i, episode,
                           preds)
    return FewShotResult(pd.DataFrame(records), summarize(records), texts)


def first_prompt(result: FewShotResult, out_dir: str | Path, config: FewShotConfig, method: str = "SPAE") -> str:
    """The whole prompt of the first query of the first episode of `run_experiment`'s result (in
    its first setting, names and format), as the LLM read it."""
    episode_sets, _ = load_episodes(Path(out_dir) / "episodes.json")
    setting = config.settings[0]
    episode = episode_sets[f"{config.ways[0]}way-{setting.shots}shot"][0]
    shown = class_names(episode, result.classes, config.names[0])
    texts = result.texts[method]
    prefix, queries = build_prompt([(texts[k], shown[p]) for k, p in episode.support],
                                   [texts[k] for k, _ in episode.queries], shown, setting,
                                   config.prompt_format)
    return prefix + queries[0]


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """Raw pixels, flattened, centred per image: the simplest no-LLM reference."""
    flat = images.flatten(1).float()
    return flat - flat.mean(1, keepdim=True)


def save_results(out_dir: str | Path, records: pd.DataFrame, summary: pd.DataFrame,
                 config: dict) -> dict[str, Path]:
    """records.csv, summary.csv/.md (accuracy and CI), table.csv/.md (the paper's shape)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = paper_table(summary)
    paths = {"records": out / "records.csv", "summary": out / "summary.csv",
             "summary_md": out / "summary.md", "table": out / "table.csv",
             "table_md": out / "table.md", "config": out / "config.json"}
    atomic_write_text(paths["records"], records.to_csv(index=False))
    atomic_write_text(paths["summary"], summary.to_csv(index=False))
    atomic_write_text(paths["summary_md"], to_markdown(summary.round(3)))
    atomic_write_text(paths["table"], table.to_csv(index=False))
    atomic_write_text(paths["table_md"], to_markdown(table))
    atomic_write_text(paths["config"], json.dumps(config, indent=2, default=str))
    return paths



def heldout_dataset(model, dataset: str | None = None, max_per_class: int | None = 200,
                    split: str | None = None):
    """The images to evaluate on. Without `dataset`: the held-out split of the dataset the
    tokenizer was trained on (by its training seed), images it never saw. A `dataset` given on
    purpose is an evaluation set and is used whole (`split="heldout"` takes its held-out part
    instead, e.g. for the training archive itself). `max_per_class` caps each class (None: all)."""
    from spae_lab.data import make_dataset

    cfg = model.experiment_config
    name = dataset or cfg.data.dataset
    split = split or ("all" if dataset else "heldout")
    kwargs = {"max_per_class": max_per_class} if max_per_class and name not in ("scenes", "digits",
                                                                                  "mnist") else {}
    if name in ("scenes", "digits", "mnist") and split == "all":
        split = "heldout"  # built-in training sets: only their held-out part is evaluation data
    return make_dataset(name, model.config.image_size, split=split, seed=cfg.train.seed,
                        **kwargs)


def teacher_features(spec: str = "lit:builtin") -> Callable[[torch.Tensor], torch.Tensor]:
    """Image -> teacher embedding: the no-LLM reference on the features SPAE distils from."""
    from spae_lab.teacher import load_teacher

    teacher = load_teacher(spec)
    return lambda images: torch.cat([teacher.embed_images(images[i : i + 256]).float()
                                     for i in range(0, len(images), 256)])


def run_experiment(out_dir: str | Path, tokenizer: str | Path, *, baseline: str | Path | None = None,
                   dataset: str | None = None, max_per_class: int | None = 200, layers: int = 1,
                   split: str | None = None,
                   baseline_max_tokens: int | None = None, backend: str | LLMBackend = "hf:smollm2",
                   references: Sequence[str] = ("pixels", "teacher"),
                   config: FewShotConfig | None = None, progress: bool = True) -> FewShotResult:
    """The whole experiment from checkpoints: SPAE tokens (first `layers` layers), optionally an
    LQAE-style `baseline` tokenizer (one layer, no semantic loss), no-LLM references; episodes,
    LLM cache and tables under `out_dir`. Returns every field of the `FewShotResult`."""
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.llm import load_lazily
    from spae_lab.llm.cache import CachedBackend

    config = config or FewShotConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_tokenizer(tokenizer)
    data = heldout_dataset(model, dataset, max_per_class, split)
    split = split or ("all" if dataset else "heldout")
    readers = {"SPAE": TokenizerTexts(model, layers)}
    if baseline is not None:
        base_model = load_tokenizer(baseline)
        readers["LQAE-style"] = TokenizerTexts(base_model, 1, baseline_max_tokens)
    feature_fns = {}
    for name in references:
        if name == "pixels":
            feature_fns["pixels"] = pixel_features
        elif name == "teacher":
            feature_fns["teacher"] = teacher_features(model.experiment_config.semantic.teacher)
        else:
            raise FewShotError(f"unknown reference {name!r}: use 'pixels' or 'teacher'")
    llm = CachedBackend(load_lazily(backend), out / "llm_cache.sqlite")
    try:
        result = run_fewshot(data, readers, llm, config, episodes_path=out / "episodes.json",
                             references=feature_fns, progress=progress)
    finally:
        llm.close()
    record = {"tokenizer": str(tokenizer), "baseline": str(baseline) if baseline else None,
              "dataset": dataset or model.experiment_config.data.dataset, "split": split,
              "images": len(data), "max_per_class": max_per_class, "layers": layers,
              "readers": {k: v.description for k, v in readers.items()},
              "backend": llm.describe(), "fewshot": asdict(config),
              "llm_calls": asdict(llm.stats)}
    result.paths = save_results(out, result.records, result.summary, record)
    result.table = paper_table(result.summary)
    result.classes = list(data.classes)
    return result
