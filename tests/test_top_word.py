"""Layer 1's word from the teacher (model.top_word = "teacher", V2L-Tokenizer's global token): the
imposed word is the teacher's top word, later layers correct for it, and the shipped cifar10
tokenizer reads images that way."""

import pytest
import torch

from spae_lab.checkpoint import load_tokenizer
from spae_lab.codebook import random_codebook
from spae_lab.config import ConfigError, create_config
from spae_lab.data import make_dataset
from spae_lab.metrics import class_word_hits, random_words
from spae_lab.model import SPAE
from spae_lab.pyramid import PyramidLayout
from spae_lab.quantizer import PyramidQuantizer


def test_forced_words_are_kept_and_later_layers_correct_for_them():
    torch.manual_seed(0)
    layout = PyramidLayout(4, (1, 2, 4))
    quantizer = PyramidQuantizer(layout, torch.randn(50, 8))
    z = torch.randn(3, 16, 8)
    free = quantizer(z)
    imposed = (free.ids[0] + 1) % 50  # a word the search would not pick
    forced = quantizer(z, forced_ids={0: imposed})
    assert torch.equal(forced.ids[0], imposed)
    assert not torch.equal(forced.ids[1], free.ids[1])  # layer 2 picked after the imposed word
    # the exact inverse still holds: dequantizing the ids gives the latents of every depth
    for depth in range(1, 4):
        torch.testing.assert_close(quantizer.dequantize(forced.ids, depth), forced.latents[depth - 1])


def test_config_checks_the_reader_settings():
    with pytest.raises(ConfigError, match="top_word"):
        create_config("tiny", {"model.top_word": "oracle"})
    with pytest.raises(ConfigError, match="word_template"):
        create_config("tiny", {"semantic.word_template": "a photo of a cat"})
    cfg = create_config("tiny", {"model.top_word": "teacher", "semantic.word_template": "a photo of a {}"})
    assert cfg.model.top_word == "teacher"


def test_teacher_word_templates_are_cached_apart(tmp_path, monkeypatch):
    from spae_lab.teacher import TeacherError, load_teacher

    monkeypatch.setenv("SPAE_LAB_CACHE", str(tmp_path))
    teacher, codebook = load_teacher("lit:builtin"), random_codebook("random:20:8")
    bare, photo = teacher.word_embeddings(codebook), teacher.word_embeddings(codebook, "a photo of a {}")
    assert bare.shape == photo.shape and not torch.allclose(bare, photo)
    assert len(list((tmp_path / "teacher_words").iterdir())) == 2
    with pytest.raises(TeacherError, match="template"):
        teacher.word_embeddings(codebook, "no slot")


def test_a_tokenizer_reading_with_the_teacher_imposes_its_top_word():
    cfg = create_config("tiny", {"model.top_word": "teacher"})
    from spae_lab.checkpoint import create_tokenizer

    model = create_tokenizer(cfg).eval()
    images = torch.rand(4, 3, cfg.model.image_size, cfg.model.image_size)
    pyramid = model.encode(images)
    top = model.top_word_guide.top_words(images)[:, 0]
    assert torch.equal(pyramid.ids[0][:, 0], top)
    assert isinstance(model, SPAE)


def test_shipped_cifar10_first_words_name_the_class():
    """The shipped cifar10 reads layer 1 through the teacher: on the 300 CIFAR-10 sample images
    (never trained on) the class name is among the first 5 words far more often than for 5 random
    codebook words."""
    model = load_tokenizer("cifar10")
    assert model.config.top_word == "teacher"
    sample = make_dataset("cifar10-sample", 32)
    images = torch.stack([sample[i]["image"] for i in range(len(sample))])
    names = [sample.classes[k] for k in sample.labels]
    pyramid = model.encode(images)
    words = [pyramid.to_text(num_layers=2, image=i).split() for i in range(len(sample))]
    rate = class_word_hits(words, names)
    chance = class_word_hits(random_words(model.codebook, len(names)), names)
    assert rate > 0.5 > chance + 0.4, (rate, chance)
