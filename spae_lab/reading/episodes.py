"""Few-shot episodes: Frozen's settings, which images each episode shows, saved so reruns agree.

An episode of an N-way K-shot task draws N classes, K support images and one query image per
class; settings that differ only in repeats or task induction share their episodes. The episodes
file records the dataset's fingerprint and the config, and a rerun refuses a file made for others.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_text


class FewShotError(SpaeError, ValueError):
    """An experiment that cannot run as asked: too few images per class, a stale episodes file."""


@dataclass(frozen=True)
class Setting:
    """One column of Frozen's table."""

    induction: bool
    shots: int  # inner shots: distinct support images per class
    repeats: int  # extra copies of the whole support set

    @property
    def label(self) -> str:
        return f"{'T' if self.induction else 'noT'}-{self.shots}s-{self.repeats}r"


FROZEN_SETTINGS = (Setting(False, 1, 0), Setting(True, 1, 0), Setting(True, 3, 0),
                   Setting(True, 5, 0), Setting(True, 1, 1), Setting(True, 1, 3),
                   Setting(True, 1, 5))

def select_settings(spec: str) -> tuple[Setting, ...]:
    """Settings by name: "frozen7" (all 7), "quick" (T-1s-0r) or comma-separated labels such as
    "T-3s-0r" or "noT-1s-0r,T-5s-0r"."""
    if spec == "frozen7":
        return FROZEN_SETTINGS
    if spec == "quick":
        return FROZEN_SETTINGS[1:2]
    by_label = {s.label: s for s in FROZEN_SETTINGS}
    labels = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [label for label in labels if label not in by_label]
    if unknown or not labels:
        raise FewShotError(f"unknown setting(s) {unknown or spec!r}: use frozen7, quick or labels "
                           f"among {', '.join(by_label)}")
    return tuple(by_label[label] for label in labels)


# Frozen's nonsense names (Tsimpoukelli et al. 2021), extended for more ways.
NONSENSE_NAMES = ("dax", "blicket", "slation", "perpo", "shously", "wug", "toma", "fep",
                  "zorb", "kiki")


# --- episodes -------------------------------------------------------------------------------------


@dataclass
class Episode:
    """Image keys (dataset paths or indices) of one episode; `classes` are dataset class ids."""

    ways: int
    shots: int
    classes: list[int]
    support: list[tuple[str, int]]  # (image key, position in `classes`), in prompt order
    queries: list[tuple[str, int]]


def image_keys(dataset) -> list[str]:
    """A stable key per image: its relative path for folders, else its index."""
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return [str(p) for p in paths]
    return [str(i) for i in range(len(dataset))]


def dataset_labels(dataset) -> list[int]:
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(x) for x in labels]
    return [int(dataset[i]["label"]) for i in range(len(dataset))]


def sample_episodes(labels: Sequence[int], keys: Sequence[str], ways: int, shots: int,
                    count: int, seed: int) -> list[Episode]:
    """`count` episodes: `ways` random classes, `shots` support + 1 query image each, disjoint."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    eligible = sorted(c for c, items in by_class.items() if len(items) >= shots + 1)
    if len(eligible) < ways:
        raise FewShotError(f"{ways}-way {shots}-shot episodes need {ways} classes with at least "
                         f"{shots + 1} images; the dataset has {len(eligible)}")
    rng = random.Random(f"{seed}-{ways}-{shots}")
    episodes = []
    for _ in range(count):
        classes = rng.sample(eligible, ways)
        support, queries = [], []
        for pos, c in enumerate(classes):
            picked = rng.sample(by_class[c], shots + 1)
            support += [(keys[i], pos) for i in picked[:shots]]
            queries.append((keys[picked[shots]], pos))
        rng.shuffle(support)
        rng.shuffle(queries)
        episodes.append(Episode(ways, shots, classes, support, queries))
    return episodes


def save_episodes(path: str | Path, episodes: dict[str, list[Episode]], meta: dict) -> None:
    data = {"meta": meta, "episodes": {k: [asdict(e) for e in v] for k, v in episodes.items()}}
    atomic_write_text(path, json.dumps(data, indent=1))


def load_episodes(path: str | Path) -> tuple[dict[str, list[Episode]], dict]:
    data = json.loads(Path(path).read_text())
    episodes = {
        k: [Episode(e["ways"], e["shots"], e["classes"], [tuple(s) for s in e["support"]],
                    [tuple(q) for q in e["queries"]]) for e in v]
        for k, v in data["episodes"].items()
    }
    return episodes, data["meta"]


@dataclass
class FewShotConfig:
    """One few-shot experiment; every field is recorded beside its results."""

    ways: tuple[int, ...] = (2, 5)
    settings: tuple[Setting, ...] = FROZEN_SETTINGS
    names: tuple[str, ...] = ("real", "nonsense")
    decodings: tuple[str, ...] = ("likelihood",)
    prompt_format: str = "spae"
    episodes: int = 20  # per (ways, shots); each has one query per class
    seed: int = 0
    # likelihood ranking: "content-free" subtracts each name's score for an empty image text
    # (`predict`); "none" ranks raw summed log-probabilities, which favour whichever name the
    # prompt favours (docs/reading.md, "Calibration")
    calibration: str = "content-free"


def episode_sets(labels, keys, cfg: FewShotConfig) -> dict[str, list[Episode]]:
    """Episodes per (ways, shots); settings that differ only in repeats/induction share them."""
    out = {}
    for ways in cfg.ways:
        for shots in sorted({s.shots for s in cfg.settings}):
            out[f"{ways}way-{shots}shot"] = sample_episodes(labels, keys, ways, shots,
                                                            cfg.episodes, cfg.seed)
    return out


def dataset_fingerprint(keys: Sequence[str], labels: Sequence[int]) -> str:
    payload = json.dumps([list(keys), list(labels)]).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def prepare_episodes(dataset, cfg: FewShotConfig, path: str | Path | None
                     ) -> dict[str, list[Episode]]:
    """Load the episodes file if it matches this dataset and config, else sample and save it."""
    keys, labels = image_keys(dataset), dataset_labels(dataset)
    meta = {"dataset": dataset_fingerprint(keys, labels), "ways": list(cfg.ways),
            "shots": sorted({s.shots for s in cfg.settings}), "episodes": cfg.episodes,
            "seed": cfg.seed}
    if path is not None and Path(path).exists():
        episodes, saved = load_episodes(path)
        if saved == meta:
            return episodes
        raise FewShotError(f"{path} holds episodes of another dataset or config ({saved}); "
                         f"expected {meta}: pass another episodes file or delete it")
    episodes = episode_sets(labels, keys, cfg)
    if path is not None:
        save_episodes(path, episodes, meta)
    return episodes
