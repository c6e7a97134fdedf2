"""Semantic guidance: the loss against its formula, metrics, schedule, and a guided training run."""

import json

import pytest
import torch

from spae_lab.config import SemanticConfig, create_config
from spae_lab.losses import semantic_loss
from spae_lab.metrics import caption_word_hits, chosen_word_relevance
from spae_lab.semantic import SemanticGuide


def test_semantic_loss_matches_the_formula():
    torch.manual_seed(0)
    table = torch.randn(30, 6, dtype=torch.float64)
    targets = [torch.randn(2, 1, 6, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)]
    top_ids = torch.tensor([[3, 7, 1, 9], [0, 2, 4, 6]])
    top_k, temperature = (1, 3), 0.5
    got = semantic_loss(targets, table, top_ids, top_k, temperature)
    per_layer = []
    for layer, k in enumerate(top_k):
        terms = []
        for b in range(2):
            for t in targets[layer][b]:
                logits = -((t[None] - table) ** 2).sum(1) / (temperature * 6)
                p = torch.softmax(logits, 0)
                terms.append(-torch.log(p[top_ids[b, :k]].sum()))
        per_layer.append(torch.stack(terms).mean())
    torch.testing.assert_close(got, torch.stack(per_layer).mean())
    # per-layer weights scale each layer's term before the mean
    weighted = semantic_loss(targets, table, top_ids, top_k, temperature, layer_weights=(2.0, 0.25))
    torch.testing.assert_close(weighted, (2.0 * per_layer[0] + 0.25 * per_layer[1]) / 2)


def test_semantic_loss_pulls_towards_the_top_words():
    torch.manual_seed(1)
    table = torch.randn(50, 8)
    target = torch.randn(1, 1, 8, requires_grad=True)
    top = torch.tensor([[5]])
    loss = semantic_loss([target], table, top, (1,), 0.5)
    loss.backward()
    with torch.no_grad():
        moved = target - 0.5 * target.grad
        assert semantic_loss([moved], table, top, (1,), 0.5) < loss
    on_target = semantic_loss([table[5].view(1, 1, 8)], table, top, (1,), 0.5)
    assert on_target < loss


def test_chosen_word_relevance_and_ranks():
    relevance = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    out = chosen_word_relevance(relevance, [torch.tensor([[0]]), torch.tensor([[2, 1]])])
    assert out[0] == {"score": pytest.approx(0.9), "rank": 1.0}
    assert out[1]["rank"] == pytest.approx((2 + 4) / 2)


def test_caption_word_hits():
    words = [["Red", "house"], ["stars", "blue"], ["cat", "dog"]]
    assert caption_word_hits(words, ["red", "green", "blue"], ["circle", "star", "square"]) == pytest.approx(2 / 3)


def test_weight_schedule():
    guide = object.__new__(SemanticGuide)
    guide.config = SemanticConfig(weight=0.2, warmup_steps=10, final_weight_ratio=0.5)
    assert guide.weight(0, 100) == pytest.approx(0.02)
    assert guide.weight(10, 100) == pytest.approx(0.2)
    assert guide.weight(100, 100) == pytest.approx(0.1)


def test_guided_tiny_training_logs_semantic_loss_and_relevance(tmp_path):
    from spae_lab.training.loop import train

    cfg = create_config("tiny", {"train.steps": 10, "train.eval_every": 10, "train.num_threads": 1,
                                 "semantic.warmup_steps": 2})
    result = train(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("semantic" in r for r in records)
    final = result.history[-1]["eval"]
    assert len(final["relevance"]) == 5 and len(final["relevance_rank"]) == 5
    assert len(final["caption_hit"]) == 5 and all(0 <= h <= 1 for h in final["caption_hit"])
    assert final["caption_hit"] == sorted(final["caption_hit"])  # more layers, more words
