"""The main job (`spae-lab demo`): the shipped tokenizers at work, no training needed.

1. a held-out synthetic scene as its pyramid of SmolLM2 words, and reconstructions from 1..5 layers;
2. CIFAR-10 images the tokenizers never trained on as their first words, with the rate at which
   those words name the class beside the rate for random codebook words;
3. few-shot classification of the shipped CIFAR-10 sample by SmolLM2 reading SPAE's words, beside
   the LQAE-style baseline, with 95% intervals and chance;
4. every notebook run into `reports/` on the same tokenizers.

`train_first=True` first trains the scenes tokenizer from scratch (the shipped recipe, minutes on a CPU)
and uses it instead of the shipped one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spae_lab.checkpoint import CheckpointError, load_tokenizer
from spae_lab.config import create_config
from spae_lab.data import SyntheticScenes, make_dataset
from spae_lab.metrics import class_word_hits, random_words
from spae_lab.training.loop import TrainResult, train
from spae_lab.training.runs import has_checkpoint

# Frozen's setting the demo shows: the best of the 7 for SPAE words, 2-way, on the validation split
# (docs/reading.md#the-demos-setting).
DEMO_SETTING = "T-3s-0r"


def show_scene(out: Path, tokenizer: str = "scenes") -> None:
    """Print a held-out scene's pyramid of words; save reconstructions of 8 held-out scenes."""
    from spae_lab.views.figures import save_reconstruction_figure

    model = load_tokenizer(tokenizer)
    scenes = SyntheticScenes(num_images=8, image_size=model.config.image_size, split="heldout")
    item = scenes[0]
    pyramid = model.encode(item["image"][None])
    print(f"\nA held-out scene ({item['caption']}) as its pyramid of SmolLM2 words "
          f"(tokenizer {tokenizer}):")
    print(pyramid.describe())
    figure = save_reconstruction_figure(model, scenes, out / "reconstruction.png")
    print(f"reconstructions from 1..{model.num_layers} layers: {figure}")


def show_cifar10(out: Path) -> None:
    """Print the first 5 words of one sample image per class and the class-word rate against
    random words; save reconstructions of 8 sample images."""
    from spae_lab.views.figures import save_reconstruction_figure

    cifar = load_tokenizer("cifar10")
    sample = make_dataset("cifar10-sample", cifar.config.image_size)
    images = torch.stack([sample[i]["image"] for i in range(len(sample))])
    texts = [cifar.encode(images[i : i + 100]) for i in range(0, len(sample), 100)]
    words = [batch.to_text(num_layers=2, image=i).split() for batch in texts for i in range(len(batch))]
    names = [sample.classes[k] for k in sample.labels]
    print("\nCIFAR-10 images the tokenizers never trained on, as their first 5 words "
          "(tokenizer cifar10; the first image of each class):")
    for name in sample.classes:
        i = names.index(name)
        print(f"  {name:10s} -> {' '.join(words[i])}")
    chance = class_word_hits(random_words(cifar.codebook, len(names)), names)
    print(f"  the class name (or a plain synonym) is among the first 5 words for "
          f"{100 * class_word_hits(words, names):.0f}% of the {len(names)} sample images "
          f"(5 random codebook words: {100 * chance:.1f}%)")
    subset = [sample[i] for i in range(0, len(sample), len(sample) // 8)][:8]
    figure = save_reconstruction_figure(cifar, subset, out / "reconstruction_cifar10.png")
    print(f"reconstructions from 1..{cifar.num_layers} layers: {figure}")


def train_scenes(out: Path, steps: int | None = None, minutes: float | None = None,
                 fresh: bool = False, progress: bool = True) -> TrainResult:
    """Train the shipped scenes recipe from scratch into `out`; a finished or interrupted run
    there is continued unless `fresh`."""
    recipe = Path(__file__).parents[1] / "assets" / "pretrained" / "scenes.json"
    overrides = json.loads(recipe.read_text())["config"] if recipe.exists() else {}
    overrides.pop("preset", None)
    overrides.setdefault("train", {})["num_threads"] = None  # every core of this machine
    if steps is not None:
        overrides["train"]["steps"] = steps
    if minutes is not None:
        overrides["train"]["max_minutes"] = minutes
    cfg = create_config("small", overrides)
    resume = has_checkpoint(out) and not fresh
    print(f"Training the scenes tokenizer from scratch ({cfg.train.steps} steps, "
          f"{cfg.model.image_size}px, frozen SmolLM2 codebook); run folder {out}"
          + (" (continuing from its checkpoint; --fresh starts over)" if resume else ""))
    try:
        result = train(cfg, out, resume=resume, force=not resume, progress=progress)
    except CheckpointError as e:
        if not resume:
            raise
        print(f"{out} holds a checkpoint this version cannot continue ({e}); training from scratch")
        result = train(cfg, out, resume=False, force=True, progress=progress)
    print(result.describe())
    return result


def show_fewshot(out: Path, episodes: int = 20, progress: bool = True):
    """Few-shot classification of the shipped CIFAR-10 sample by SmolLM2: SPAE's top word (layer 1)
    against the LQAE-style baseline's 64 words, printed with 95% intervals and chance."""
    from spae_lab.reading.episodes import FewShotConfig, select_settings
    from spae_lab.reading.fewshot import run_experiment

    config = FewShotConfig(ways=(2, 5), settings=select_settings(DEMO_SETTING), names=("real",),
                           decodings=("likelihood",), episodes=episodes)
    print(f"\nFew-shot classification by SmolLM2 of the CIFAR-10 sample ({episodes} episodes "
          f"per way, {DEMO_SETTING}: task induction and 3 examples per class, likelihood ranking; "
          f"{out}):")
    result = run_experiment(out, "cifar10", baseline="cifar10-lqae", dataset="cifar10-sample",
                            max_per_class=None, references=("teacher",), config=config,
                            progress=progress)
    for row in result.summary.itertuples():
        chance = 1 / row.ways
        verdict = "above chance" if row.ci_low > chance else "NOT above chance"
        print(f"  {row.ways}-way {row.method:32s} {100 * row.accuracy:5.1f}% "
              f"[{100 * row.ci_low:.1f}-{100 * row.ci_high:.1f}] (chance {100 * chance:.0f}%: {verdict})")
    return result


def run_notebooks(out: Path, scenes_tokenizer: str, reports_dir: str | Path, trained_steps: int | None = None,
            fewshot_episodes: int | None = None, notebook_timeout: float | None = 300) -> list:
    """Every notebook on the demo's tokenizers into `reports_dir` (tag "demo")."""
    from spae_lab.views.report import find_notebooks, run_reports

    # Each notebook takes the parameters it declares: the token-pyramid and reconstruction notebooks
    # read the scenes tokenizer, the few-shot notebook the cifar10 pair on the shipped CIFAR-10
    # sample (and reuses the demo's LLM answers); the tour keeps the shipped digits, whose top word
    # it replaces by another digit's name.
    parameters = {"checkpoints": [scenes_tokenizer], "scene_checkpoint": scenes_tokenizer}
    per_notebook = {"02_token_pyramid": {"checkpoint": scenes_tokenizer}}
    if trained_steps is not None:  # the training notebook shows this run's curves (it is finished)
        per_notebook["04_training"] = {"preset": "small", "steps": trained_steps, "out_dir": str(out)}
    if fewshot_episodes is not None:  # the same experiment: the notebook asks the LLM nothing new
        per_notebook["05_fewshot"] = {
            "results_dir": str(out / "fewshot"), "ways": [2, 5], "settings": DEMO_SETTING,
            "episodes": fewshot_episodes, "names": ["real"], "decodings": ["likelihood"],
            "references": ["teacher"]}
    print(f"\nRunning the notebooks into {reports_dir}/ ...")
    return run_reports(find_notebooks(), parameters, per_notebook, reports_dir=reports_dir,
                       tag="demo", timeout=notebook_timeout)


def run_demo(out: str | Path = "runs/demo", *, train_first: bool = False, steps: int | None = None,
             minutes: float | None = None, fresh: bool = False, episodes: int = 20,
             fewshot: bool = True, reports_dir: str | Path | None = "reports",
             notebook_timeout: float | None = 300, progress: bool = True) -> list | None:
    """The whole demo (see the module docstring); returns the report runs (None without reports)."""
    out = Path(out)
    scenes_tokenizer, trained_steps = "scenes", None
    if train_first:
        trained_steps = train_scenes(out, steps, minutes, fresh, progress).step
        scenes_tokenizer = str(out)
    else:
        print("spae-lab demo: the pretrained tokenizers shipped with the package "
              "(`spae-lab pretrained`; `--train` trains one from scratch first)")
    out.mkdir(parents=True, exist_ok=True)
    show_scene(out, scenes_tokenizer)
    show_cifar10(out)
    if fewshot:
        show_fewshot(out / "fewshot", episodes, progress)
    if reports_dir is None:
        return None
    return run_notebooks(out, scenes_tokenizer, reports_dir, trained_steps,
                   episodes if fewshot else None, notebook_timeout)
