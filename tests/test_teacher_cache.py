"""The teacher's top-K words read from a table computed once per dataset: the same words as the
live teacher, keyed by teacher, codebook, data, size and K, and a training run that does not change."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

import spae_lab.teacher.cache as teacher_cache
from spae_lab.codebook import load_codebook
from spae_lab.config import create_config
from spae_lab.data import SyntheticScenes, collate, make_dataset
from spae_lab.semantic import SemanticGuide
from spae_lab.teacher.cache import TeacherCacheError, TopWordsTable, dataset_fingerprint, load_or_compute
from spae_lab.training.loop import batch_indices, train


@pytest.fixture(scope="module")
def guide():
    cfg = create_config("tiny", {"semantic.top_k": (3, 5)})
    return SemanticGuide.from_config(cfg.semantic, load_codebook(cfg.codebook))


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_cache, "cache_dir", lambda: tmp_path)
    return tmp_path / "teacher_top_words"


def test_cached_top_words_equal_the_live_ones(guide, cache_root):
    scenes = SyntheticScenes(num_images=96, image_size=16, seed=3)
    table = guide.cache_top_words(scenes)
    assert table.ids.shape == (96, 5) and len(list(cache_root.glob("*.safetensors"))) == 1
    for step in range(6):  # training batches: shuffled, 16 at a time
        indices = batch_indices(step, 16, len(scenes), seed=0)
        images = collate([scenes[i] for i in indices])["image"]
        live = guide.top_words(images)
        assert torch.equal(guide.top_words(images, torch.tensor(indices)), live)
    guide.cached = None


def test_table_is_read_back_and_keyed_by_data_and_k(guide, cache_root, monkeypatch):
    scenes = SyntheticScenes(num_images=40, image_size=16, seed=4)
    args = (guide.teacher, guide.word_embeddings, guide.codebook.fingerprint())
    first = load_or_compute(*args, scenes, 3, 16)

    def no_teacher(*_, **__):
        raise AssertionError("the table should come from disk")

    monkeypatch.setattr(teacher_cache, "compute_top_words", no_teacher)
    again = load_or_compute(*args, scenes, 3, 16)
    assert again.key == first.key and torch.equal(again.ids, first.ids)
    monkeypatch.undo()
    monkeypatch.setattr(teacher_cache, "cache_dir", lambda: cache_root.parent)
    other_data = load_or_compute(*args, SyntheticScenes(num_images=40, image_size=16, seed=5), 3, 16)
    other_k = load_or_compute(*args, scenes, 2, 16)
    assert len({first.key, other_data.key, other_k.key}) == 3
    assert torch.equal(other_k.ids, first.ids[:, :2])  # topk(2) is the head of topk(3)
    assert load_or_compute(*args, SyntheticScenes(num_images=40, image_size=16, seed=6), 3, 16, compute=False) is None
    assert torch.equal(load_or_compute(*args, scenes, 3, 16, compute=False).ids, first.ids)
    path = cache_root / f"{first.key}.safetensors"
    path.write_bytes(b"damaged")  # computed again and replaced
    assert torch.equal(load_or_compute(*args, scenes, 3, 16).ids, first.ids)


def test_fingerprint_follows_the_pixels_of_preloaded_images():
    sample = make_dataset("cifar10-sample", 32)
    digest = dataset_fingerprint(sample)
    assert digest == dataset_fingerprint(make_dataset("cifar10-sample", 32))
    assert dataset_fingerprint(Subset(sample, [0, 1, 2])) != digest
    sample._images = np.array(sample._images)
    sample._images[17, 3, 4, 0] ^= 1
    assert dataset_fingerprint(sample) != digest
    assert dataset_fingerprint(SyntheticScenes(50, 16, seed=1)) != dataset_fingerprint(SyntheticScenes(50, 16))


def test_lookup_refuses_indices_past_the_table():
    table = TopWordsTable(torch.arange(12).view(4, 3))
    assert torch.equal(table.lookup(torch.tensor([3, 0])), torch.tensor([[9, 10, 11], [0, 1, 2]]))
    with pytest.raises(TeacherCacheError, match="out of range"):
        table.lookup(torch.tensor([4]))


def test_training_with_the_table_logs_the_same_losses(tmp_path, cache_root):
    base = {"train.num_threads": 1, "train.steps": 10, "train.eval_every": 10, "train.figure_every": 10,
            "train.checkpoint_every": 10, "data.num_images": 128, "train.warmup_steps": 2,
            "semantic.warmup_steps": 0}

    def losses(cache: bool):
        run = tmp_path / str(cache)
        train(create_config("tiny", {**base, "semantic.cache_top_words": cache}), run, progress=False,
              on_figure=lambda *_: None)
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    cached, live = losses(True), losses(False)
    assert cached == live and any(r.get("semantic", 0) > 0 for r in cached)
    assert len(list(cache_root.glob("*.safetensors"))) == 1
