"""Ablations: SAQ vs RQ, semantic loss on vs off; same data, same budget, same seed.

Each variant is an ordinary training run in its own folder (so an interrupted ablation resumes
where it stopped); the table is read back from the runs' final held-out evaluations.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spae_lab.config import create_config
from spae_lab.io import atomic_save_figure, atomic_write_text
from spae_lab.tables import to_markdown
from spae_lab.training.loop import train
from spae_lab.training.runs import read_metrics

VARIANTS: dict[str, dict] = {
    "SAQ + semantic": {"model.quantizer": "saq", "semantic.enabled": True},
    "SAQ": {"model.quantizer": "saq", "semantic.enabled": False},
    "RQ + semantic": {"model.quantizer": "rq", "semantic.enabled": True},
    "RQ": {"model.quantizer": "rq", "semantic.enabled": False},
}


def _slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_")


def final_eval(run_dir: Path, step: int | None = None) -> dict:
    """The last held-out evaluation of a run (or the one at `step`)."""
    records = read_metrics(run_dir)
    return next(r for r in reversed(records) if "eval" in r and step in (None, r["step"]))


# The depth the word figures read: the first 2 layers (5 words), what an LLM reading layers 1-2 sees.
CAPTION_LAYERS = 2


def ablation_row(name: str, run_dir: Path, caption_layers: int = CAPTION_LAYERS, step: int | None = None) -> dict:
    record = final_eval(run_dir, step)
    e = record["eval"]
    row = {"variant": name, "steps": record["step"]}
    for depth, value in enumerate(e["psnr"], start=1):
        row[f"PSNR@{depth}"] = value
    if "relevance" in e:
        for layer, value in enumerate(e["relevance"], start=1):
            row[f"relevance L{layer}"] = value
        row["rank L1"] = e["relevance_rank"][0]
        row[f"rank L{len(e['relevance_rank'])}"] = e["relevance_rank"][-1]
        if "relevance_random" in e:
            row["relevance, random word"] = e["relevance_random"]
    if "caption_hit" in e:
        layers = min(caption_layers, len(e["caption_hit"]))
        row[f"caption word in first {layers} layers"] = e["caption_hit"][layers - 1]
    row["distinct words (deepest)"] = e["distinct_words"][-1]
    return row


def run_ablation(out_dir: str | Path, preset: str = "small", overrides: dict | None = None,
                 variants: dict[str, dict] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every variant (resuming finished or interrupted ones) and write ablation.csv/.md."""
    out_dir = Path(out_dir)
    variants = variants or VARIANTS
    rows = []
    for name, variant in variants.items():
        cfg = create_config(preset, {**(overrides or {}), **variant})
        run_dir = out_dir / _slug(name)
        if progress:
            print(f"== {name}: {run_dir}")
        train(cfg, run_dir, resume="auto", progress=progress)
        rows.append(ablation_row(name, run_dir))
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "ablation.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "ablation.md", to_markdown(table))
    save_ablation_figure(table, out_dir / "ablation.png")
    return table


def save_ablation_figure(table: pd.DataFrame, path: Path) -> Path:
    """PSNR per depth and relevance per layer of every variant (`viz.ablation_figure`)."""
    import matplotlib.pyplot as plt

    from spae_lab.views.figures import ablation_figure

    column = "relevance, random word"
    random_relevance = float(table[column].mean()) if column in table else None
    fig = ablation_figure(table, random_relevance)
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
