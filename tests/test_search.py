"""The nearest-word search: exact ids at any chunking, bounded chunks, and one product shared by
quantization and the semantic loss."""

import pytest
import torch

import spae_lab.quantizer as quantizer
from spae_lab.losses import semantic_loss, semantic_loss_from_scores
from spae_lab.pyramid import PyramidLayout
from spae_lab.quantizer import PyramidQuantizer, nearest_codes, search_scores, unit_rms


@pytest.mark.parametrize("chunk_elements", [1, 7 * 50, 1 << 24])
def test_nearest_codes_matches_cdist_at_any_chunking(monkeypatch, chunk_elements):
    monkeypatch.setattr(quantizer, "SEARCH_CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(50, 8, generator=gen)
    targets = torch.randn(333, 8, generator=gen) * 2
    expected = torch.cdist(targets, codebook).argmin(1)
    assert torch.equal(nearest_codes(targets, codebook), expected)
    assert nearest_codes(targets[:0], codebook).shape == (0,)


def test_quantizer_scores_give_the_ids_and_the_semantic_loss():
    torch.manual_seed(0)
    layout = PyramidLayout(4, (1, 2, 4))
    quantizer = PyramidQuantizer(layout, torch.randn(40, 24), "saq", projection_dim=8, normalize_rows=True)
    z = unit_rms(torch.randn(3, 16, 8)).requires_grad_()
    plain = quantizer(z)
    shared = quantizer(z, score_layers=2)
    assert len(plain.scores) == 0 and len(shared.scores) == 2
    for layer in range(3):
        assert torch.equal(plain.ids[layer], shared.ids[layer])
    table = quantizer.table().detach()  # the scores search the frozen (detached) table
    top_ids = torch.randint(0, 40, (3, 5))
    expected = semantic_loss(plain.targets[:2], table, top_ids, (2, 5), 0.1)
    got = semantic_loss_from_scores(shared.scores, top_ids, (2, 5), 0.1, quantizer.dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(expected, [z])
    (shared_grad,) = torch.autograd.grad(got, [z])
    torch.testing.assert_close(shared_grad, grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(search_scores(plain.targets[0], table).detach(), shared.scores[0].detach())
