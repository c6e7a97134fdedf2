"""The tokenizers shipped inside the package: they load by name, their cards tell the truth, and
their words mean something (against the trivial reference of a word drawn at random)."""

import json

import pytest
import torch

from spae_lab import load_tokenizer, pretrained
from spae_lab.checkpoint import CheckpointError
from spae_lab.cli.main import main
from spae_lab.data import SyntheticScenes, make_dataset
from spae_lab.metrics import caption_word_hits, class_word_hits, random_words
from spae_lab.training.evaluate import evaluate
from spae_lab.training.loop import build_datasets, build_guide

SHIPPED = ("scenes", "cifar10", "cifar10-lqae", "digits", "moving-scenes")


def test_every_described_tokenizer_ships_with_a_card():
    assert set(pretrained.available()) == set(SHIPPED) == set(pretrained.DESCRIPTIONS)
    for name in SHIPPED:
        card = pretrained.card(name)
        for key in ("data", "steps", "wall_minutes", "machine", "commit", "command", "heldout", "config"):
            assert key in card, (name, key)
        assert card["command"].startswith("spae-lab train --config configs/pretrained/")
        assert pretrained.weights_path(name).stat().st_size < 8e6  # a few MB each (float16)


def test_unknown_names_are_refused_clearly():
    with pytest.raises(pretrained.PretrainedError, match="shipped: "):
        pretrained.card("cifar100")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_tokenizer("cifar100")


@pytest.mark.slow  # evaluates 256 scenes with the teacher
def test_scenes_card_reproduces():
    """The card's held-out figures are those of the shipped weights, recomputed here."""
    model = load_tokenizer("scenes")
    card = pretrained.card("scenes")
    cfg = model.experiment_config
    cfg.data.heldout_images = card["data"]["heldout_images"]
    _, heldout = build_datasets(cfg)
    metrics = evaluate(model, heldout, guide=build_guide(cfg, model, "cpu"))
    assert metrics["psnr"] == pytest.approx(card["heldout"]["psnr"], abs=0.02)
    assert metrics["caption_hit"] == pytest.approx(card["heldout"]["caption_hit"], abs=1e-3)


def test_scenes_tokenizer_names_the_scene_and_gives_it_back():
    model = load_tokenizer("scenes")
    scenes = SyntheticScenes(num_images=64, image_size=32, seed=123, split="heldout")
    items = [scenes[i] for i in range(64)]
    images = torch.stack([it["image"] for it in items])
    pyramid = model.encode(images)
    words = [pyramid.to_text(num_layers=2, image=i).split() for i in range(64)]
    colors, shapes = [it["color"] for it in items], [it["shape"] for it in items]
    hits = caption_word_hits(words, colors, shapes)
    assert hits >= 0.9 > caption_word_hits(random_words(model.codebook, 64), colors, shapes) + 0.5
    errors = [(model.decode(pyramid, d) - images).pow(2).mean().item() for d in range(1, 6)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors


def test_cifar10_words_name_the_class_more_often_than_the_baseline():
    """On the shipped CIFAR-10 sample (never trained on): the class name or a synonym among the
    first 5 words of `cifar10`, against the LQAE-style baseline's first 5 words."""
    sample = make_dataset("cifar10-sample", 32)
    images = torch.stack([sample[i]["image"] for i in range(len(sample))])
    names = [sample.classes[k] for k in sample.labels]
    rates = {}
    for name, layers in (("cifar10", 2), ("cifar10-lqae", 1)):
        pyramid = load_tokenizer(name).encode(images)
        words = [pyramid.to_text(num_layers=layers, image=i).split()[:5] for i in range(len(sample))]
        rates[name] = class_word_hits(words, names)
    assert rates["cifar10"] > rates["cifar10-lqae"] + 0.15, rates


def test_cli_pretrained_lists_names_and_figures(capsys):
    assert main(["pretrained", "--verbose"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out
    assert "PSNR" in out and "reproduce: spae-lab train" in out


def test_shipped_tokenizer_works_from_any_command(capsys):
    assert main(["encode", "scenes", "--text"]) == 0
    assert len(capsys.readouterr().out.split()) > 5
    card = json.loads((pretrained.PRETRAINED_DIR / "scenes.json").read_text())
    assert card["name"] == "scenes"
