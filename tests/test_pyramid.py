"""The token pyramid: dilation layout, SAQ and RQ against the formulas, the exact inverse."""

import pytest
import torch

from spae_lab import quantizer as quantizer_module
from spae_lab.codebook import random_codebook
from spae_lab.metrics import codebook_usage
from spae_lab.pyramid import PyramidError, PyramidLayout, TokenPyramid
from spae_lab.quantizer import PyramidQuantizer, nearest_codes, standardize


def test_dilation_positions_grid8():
    layout = PyramidLayout(8, (1, 2, 4, 8, 8))
    assert layout.cumulative_tokens() == [1, 5, 21, 85, 149]
    assert layout.coords(0).tolist() == [[4, 4]]
    assert layout.coords(1).tolist() == [[2, 2], [2, 6], [6, 2], [6, 6]]
    assert sorted(set(layout.coords(2)[:, 0].tolist())) == [1, 3, 5, 7]
    assert layout.coords(3).shape == (64, 2) and layout.coords(4).shape == (64, 2)


def test_paper_layout_grid16():
    layout = PyramidLayout(16, (1, 2, 4, 8, 16, 16))
    assert layout.cumulative_tokens() == [1, 5, 21, 85, 341, 597]
    assert layout.coords(0).tolist() == [[8, 8]]
    assert layout.coords(1).tolist() == [[4, 4], [4, 12], [12, 4], [12, 12]]


@pytest.mark.parametrize("grid,sizes", [(4, (1, 2, 4)), (2, (1, 2, 2)), (32, (1, 4, 32))])
def test_any_power_of_two_grid(grid, sizes):
    layout = PyramidLayout(grid, sizes)
    for layer, n in enumerate(sizes):
        coords = layout.coords(layer)
        assert coords.shape == (n * n, 2)
        assert coords.min() >= 0 and coords.max() < grid


def test_bad_layouts_are_refused():
    with pytest.raises(PyramidError):
        PyramidLayout(6, (1, 2))
    with pytest.raises(PyramidError):
        PyramidLayout(8, (1, 3))
    with pytest.raises(PyramidError):
        PyramidLayout(8, (16,))


def _direct_quantize(z, codebook, layout, mode):
    """The formulas of shared/docs/spae-method.md with explicit loops, for the covering pyramid: a
    token of layer l is picked for its region from the region's mean latent and the tokens already
    covering that region, and it joins the stream of every cell of the region."""
    B, N, D = z.shape
    G = layout.grid
    ids = [torch.zeros(B, n * n, dtype=torch.long) for n in layout.layer_sizes]
    chosen = [[[] for _ in range(N)] for _ in range(B)]  # tokens covering each cell so far
    estimates = []
    for layer, n in enumerate(layout.layer_sizes):
        s = G // n
        for j in range(n * n):
            r0, c0 = (j // n) * s, (j % n) * s
            cells = [(r0 + dr) * G + c0 + dc for dr in range(s) for dc in range(s)]
            for b in range(B):
                z_region = z[b, cells].mean(0)
                previous = [codebook[k] for k in chosen[b][cells[0]]]  # the same over the region
                if mode == "saq":
                    target = (layer + 1) * z_region - (torch.stack(previous).sum(0) if previous else 0)
                else:
                    target = z_region - (torch.stack(previous).sum(0) if previous else 0)
                k = int(((target[None] - codebook) ** 2).sum(1).argmin())
                ids[layer][b, j] = k
                for p in cells:
                    chosen[b][p].append(k)
        est = torch.zeros(B, N, D, dtype=z.dtype)
        for b in range(B):
            for p in range(N):
                vecs = torch.stack([codebook[k] for k in chosen[b][p]])
                est[b, p] = vecs.mean(0) if mode == "saq" else vecs.sum(0)
        estimates.append(est)
    return ids, estimates


@pytest.mark.parametrize("mode", ["saq", "rq"])
def test_quantizer_matches_the_formulas(mode):
    torch.manual_seed(0)
    layout = PyramidLayout(4, (1, 2, 4, 4))
    codebook = torch.randn(64, 8, dtype=torch.float64)
    z = torch.randn(3, 16, 8, dtype=torch.float64)
    quantizer = PyramidQuantizer(layout, codebook.float(), mode).double()
    quantizer.codebook = codebook
    quantizer.half_sq_norms = 0.5 * codebook.pow(2).sum(1)
    out = quantizer(z)
    expected_ids, expected_estimates = _direct_quantize(z, codebook, layout, mode)
    for got, want in zip(out.ids, expected_ids, strict=True):
        assert torch.equal(got, want)
    for depth, est in enumerate(expected_estimates, start=1):
        torch.testing.assert_close(out.latents[depth - 1], est.to(out.latents.dtype))


@pytest.mark.parametrize("mode", ["saq", "rq"])
def test_inverse_is_exact_at_every_prefix(mode):
    torch.manual_seed(1)
    layout = PyramidLayout(8, (1, 2, 4, 8, 8))
    quantizer = PyramidQuantizer(layout, torch.randn(200, 16), mode)
    out = quantizer(torch.randn(2, 64, 16))
    for depth in range(1, layout.num_layers + 1):
        assert torch.equal(quantizer.dequantize(out.ids, depth), out.latents[depth - 1])
        assert torch.equal(quantizer.dequantize(out.ids[:depth]), out.latents[depth - 1])


def test_straight_through_gradient_and_frozen_codebook():
    layout = PyramidLayout(4, (1, 2, 4))
    quantizer = PyramidQuantizer(layout, torch.randn(50, 8))
    assert list(quantizer.parameters()) == []  # the codebook is a buffer, never trained
    z = torch.randn(2, 16, 8, requires_grad=True)
    out = quantizer(z)
    (out.latents[-1].sum() + out.commitment_loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_nearest_codes_chunking_matches_brute_force(monkeypatch):
    torch.manual_seed(2)
    codebook, targets = torch.randn(300, 24), torch.randn(1000, 24)
    expected = torch.cdist(targets, codebook).argmin(1)
    monkeypatch.setattr(quantizer_module, "SEARCH_CHUNK_ELEMENTS", 300 * 7)  # 7 rows per chunk
    assert torch.equal(nearest_codes(targets, codebook), expected)


def test_standardize_keeps_nearest_neighbours():
    torch.manual_seed(3)
    table = torch.randn(100, 12) * 3 + 5
    std, mean, scale = standardize(table)
    z = torch.randn(40, 12) * 3 + 5
    assert torch.equal(nearest_codes(z, table), nearest_codes((z - mean) / scale, std))
    torch.testing.assert_close(std.pow(2).mean(), torch.tensor(1.0))


def test_text_round_trip_and_errors():
    codebook = random_codebook("random:300:8")
    layout = PyramidLayout(4, (1, 2, 4))
    quantizer = PyramidQuantizer(layout, codebook.embeddings)
    out = quantizer(torch.randn(2, 16, 8))
    pyr = TokenPyramid(out.ids, layout, codebook)
    assert len(pyr.to_text().split()) == 21
    assert len(pyr.to_text(2).split()) == 5
    back = TokenPyramid.from_text([pyr.to_text(image=0), pyr.to_text(image=1)], layout, codebook)
    assert all(torch.equal(a, b) for a, b in zip(back.ids, pyr.ids, strict=True))
    two = TokenPyramid.from_text(pyr.to_text(2, image=1), layout, codebook)
    assert two.num_layers == 2 and torch.equal(two.ids[1], pyr.ids[1][1:2])
    assert pyr.describe().splitlines()[1].startswith("layer 2 (2x2): ")
    with pytest.raises(PyramidError, match="not a word"):
        TokenPyramid.from_text("zzzzqq", layout, codebook)
    with pytest.raises(PyramidError, match="cumulative"):
        TokenPyramid.from_text(" ".join(pyr.to_text().split()[:3]), layout, codebook)
    with pytest.raises(PyramidError):
        quantizer.dequantize([out.ids[0], out.ids[0]])  # layer 2 needs 4 ids per image


def test_codebook_usage():
    usage = codebook_usage(torch.tensor([0, 0, 1, 2]), 10)
    assert usage["distinct"] == 3 and usage["top_share"] == 0.5
    assert 2.0 < usage["perplexity"] < 3.0


def test_saq_deep_tokens_keep_the_latents_word_rq_residuals_lose_it():
    """The mechanism behind SAQ's deeper semantic layers: a latent near a word keeps that word
    (or a close one) at every depth under SAQ, whose target (c+1) z - S stays at codebook scale,
    while RQ's next target z - S is the small residual, nearest to an unrelated word."""
    torch.manual_seed(0)
    table, batch = torch.randn(512, 16), 256
    words = torch.randint(len(table), (batch,))
    z = (table[words] + 0.2 * torch.randn(batch, 16))[:, None]  # one position, 4 layers on it
    similarity = {}
    for mode in ("saq", "rq"):
        out = PyramidQuantizer(PyramidLayout(1, (1, 1, 1, 1)), table, mode)(z)
        similarity[mode] = [float(torch.cosine_similarity(table[ids[:, 0]], table[words]).mean())
                            for ids in out.ids]
    assert similarity["saq"][0] == similarity["rq"][0] == pytest.approx(1.0)  # same first word
    assert min(similarity["saq"][1:]) > 0.8  # measured 1.0, 0.98, 0.91
    assert max(abs(s) for s in similarity["rq"][1:]) < 0.1  # measured about 0.00


@pytest.mark.parametrize("mode", ["saq", "rq"])
def test_covering_pyramid_is_its_own_exact_inverse_at_every_depth(mode):
    torch.manual_seed(0)
    layout = PyramidLayout(8, (1, 2, 4, 8, 8))
    quantizer = PyramidQuantizer(layout, torch.randn(300, 16), mode)
    z = torch.randn(3, 64, 16)
    out = quantizer(z)
    assert [i.shape[1] for i in out.ids] == layout.tokens_per_layer()
    for depth in range(1, 6):
        assert torch.allclose(quantizer.dequantize(out.ids, depth), out.latents[depth - 1], atol=1e-5)


def test_covering_saq_is_the_running_mean_of_every_token_covering_a_cell():
    """After d layers each cell decodes from the mean of the d words that cover it: layer 1's word
    still counts once layer 2 is decoded."""
    from spae_lab.quantizer import region_mean, spread

    torch.manual_seed(1)
    layout = PyramidLayout(4, (1, 2, 4))
    table = torch.randn(50, 8)
    quantizer = PyramidQuantizer(layout, table, "saq")
    out = quantizer(torch.randn(2, 16, 8))
    words = [spread(table[ids], 4, layout.stride(layer)) for layer, ids in enumerate(out.ids)]
    for depth in (1, 2, 3):
        assert torch.allclose(out.latents[depth - 1], torch.stack(words[:depth]).mean(0), atol=1e-5)
    x = torch.randn(2, 16, 3)
    assert torch.allclose(region_mean(spread(region_mean(x, 4, 2), 4, 2), 4, 2), region_mean(x, 4, 2))


def test_covering_saq_approximates_better_with_every_layer():
    torch.manual_seed(2)
    layout = PyramidLayout(8, (1, 2, 4, 8, 8))
    table = torch.nn.functional.normalize(torch.randn(4096, 8), dim=1) * 8**0.5
    quantizer = PyramidQuantizer(layout, table, "saq")
    z = torch.nn.functional.normalize(torch.randn(4, 64, 8), dim=-1) * 8**0.5
    out = quantizer(z)
    errors = [(out.latents[d] - z).pow(2).mean().item() for d in range(5)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
