"""Pretrained tokenizers that ship inside the package, each with a model card.

`spae_lab/assets/pretrained/<name>.safetensors` holds the weights (a checkpoint without optimizer
state; the frozen codebook is rebuilt from its offline source), `<name>.json` the card: data,
config, steps, wall time and machine, commit, the command that reproduces it and its held-out
metrics. `load_tokenizer(name)` takes these names; `spae-lab pretrained` lists them.

The cards are written by `scripts/make_pretrained.py`, which trains the recipe (or takes a finished
run), evaluates it on held-out data and copies the weights here.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from spae_lab.errors import SpaeError

PRETRAINED_DIR = Path(__file__).parent / "assets" / "pretrained"

# What each shipped name is for (the card holds the figures).
DESCRIPTIONS: dict[str, str] = {
    "scenes": "synthetic scenes of coloured shapes (the demo's data), 32 px",
    "cifar10": "natural images: CIFAR-10, 32 px",
    "cifar10-lqae": "LQAE-style baseline on CIFAR-10: one layer of 64 words, no semantic loss",
    "digits": "MNIST digits, 32 px, for in-context generation",
    "moving-scenes": "clips of moving synthetic scenes, 8 frames of 32 px (spae_lab.video)",
}


class PretrainedError(SpaeError, KeyError):
    """A name that is not a shipped tokenizer."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0])


def available() -> list[str]:
    """Names of the shipped tokenizers whose weights are in the package."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def is_shipped_name(name) -> bool:
    """True for a shipped tokenizer's name written as a name: a `str` without a path separator
    and not starting with "." ("cifar10", not "./cifar10", "runs/cifar10" or a Path)."""
    return (isinstance(name, str) and name in available() and "/" not in name
            and os.sep not in name and not name.startswith("."))


def weights_path(name: str) -> Path:
    """The weights of a shipped tokenizer; PretrainedError for an unknown name."""
    path = PRETRAINED_DIR / f"{name}.safetensors"
    if name not in available():
        raise PretrainedError(f"no shipped tokenizer named {name!r}; shipped: {', '.join(available())}")
    return path


def card(name: str) -> dict:
    """The model card of a shipped tokenizer (dict; empty when it has none). PretrainedError for a
    card that is not a JSON object (a damaged installation)."""
    path = PRETRAINED_DIR / f"{name}.json"
    if name not in available():
        raise PretrainedError(f"no shipped tokenizer named {name!r}; shipped: {', '.join(available())}")
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"the model card of {name!r} ({path}) is damaged: {e}; reinstall "
                              "spae_lab (pip install -e .) to restore it") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"the model card of {name!r} ({path}) is not a JSON object; reinstall "
                              "spae_lab (pip install -e .) to restore it")
    return data


@contextlib.contextmanager
def _card_fields(name: str):
    """PretrainedError, one line, for a card whose figures have the wrong types."""
    try:
        yield
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise PretrainedError(f"the model card of {name!r} holds figures of the wrong type ({e}); "
                              "reinstall spae_lab (pip install -e .) to restore it") from None


def headline(name: str) -> str:
    """One line of a card's held-out figures: PSNR per depth and the word hit rate of layers 1-2."""
    with _card_fields(name):
        return _headline(card(name).get("heldout", {}))


def _headline(metrics: dict) -> str:
    parts = []
    if "psnr" in metrics:
        parts.append("PSNR " + " / ".join(f"{v:.1f}" for v in metrics["psnr"]) + " dB")
    for key, label in (("caption_hit", "caption word"), ("class_hit", "class word"),
                       ("direction_hit", "direction word"), ("content_hit", "colour or shape word")):
        if key in metrics and len(metrics[key]) >= 2:
            parts.append(f"{label} in layers 1-2 {100 * metrics[key][1]:.0f}%")
        elif key in metrics:
            parts.append(f"{label} in layer 1 {100 * metrics[key][0]:.0f}%")
    return "; ".join(parts)


def image_tokenizers() -> list[str]:
    """The shipped image tokenizers: those whose card holds no clip section (the clip ones, such
    as `moving-scenes`, have other figures: docs/video.md)."""
    return [name for name in available() if "clip" not in card(name).get("config", {})]


def markdown_table(names: list[str] | None = None) -> str:
    """The image tokenizers' held-out figures as a Markdown table (the README's, `spae-lab
    pretrained --markdown`), or those of `names`."""
    columns = ("name", "data", "steps (CPU minutes)", "PSNR by depth 1 / 2 / 3 / 4 / 5 (dB)",
               "names the image in the first 5 words", "distinct words L1 / L2", "relevance L1 (random word)")
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in names or image_tokenizers():
        with _card_fields(name):
            rows.append(_table_row(name, card(name)))
    return "\n".join(rows)


def _table_row(name: str, c: dict) -> str:
    """One row of `markdown_table` from a card."""
    m = c.get("heldout", {})
    psnr = " / ".join(f"{v:.1f}" for v in m.get("psnr", []))
    hits = m.get("caption_hit") or m.get("class_hit")
    kind = "caption word" if "caption_hit" in m else "class word"
    named = f"{100 * hits[min(1, len(hits) - 1)]:.0f}% ({kind})" if hits else "-"
    distinct = " / ".join(str(v) for v in m.get("distinct_words", [])[:2])
    relevance = (f"{m['relevance'][0]:.3f} ({m['relevance_random']:.3f})"
                 if "relevance" in m else "-")
    data = c.get("data", {})
    return (f"| `{name}` | {data.get('dataset', '')}, {data.get('heldout_images', '')} held-out | "
            f"{c.get('steps')} ({c.get('wall_minutes')}) | {psnr} | {named} | {distinct} | {relevance} |")
