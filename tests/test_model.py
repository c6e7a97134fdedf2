"""The SPAE module: encode/decode contracts on a tiny model with a random vocabulary."""

import pytest
import torch

from spae_lab.codebook import random_codebook
from spae_lab.config import create_config
from spae_lab.model import SPAE, ShapeError
from spae_lab.pyramid import PyramidError, TokenPyramid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = create_config("tiny", {"codebook.source": "random:256:24"})
    return SPAE(cfg.model, random_codebook(cfg.codebook.source)).eval()


def test_encode_gives_a_pyramid_of_words(model):
    images = torch.rand(3, 3, 16, 16)
    pyr = model.encode(images)
    assert isinstance(pyr, TokenPyramid) and len(pyr) == 3
    assert [t.shape[1] for t in pyr.ids] == [1, 4, 16, 64, 64]
    assert pyr.positions(1).tolist() == [[2, 2], [2, 6], [6, 2], [6, 6]]
    assert all(w in model.codebook.words for w in pyr.words(4, image=2))
    assert len(pyr.to_text(2, image=1).split()) == 5
    assert torch.equal(pyr.llm_token_ids(0), model.codebook.token_ids[pyr.ids[0]])


def test_any_prefix_decodes_and_text_round_trips(model):
    images = torch.rand(2, 3, 16, 16)
    pyr = model.encode(images)
    for depth in range(1, model.num_layers + 1):
        out = model.decode(pyr, depth)
        assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    parsed = TokenPyramid.from_text(pyr.to_text(3, image=0), model.layout, model.codebook)
    assert torch.equal(model.decode(parsed), model.decode(pyr[0], 3))


def test_eval_mode_is_deterministic(model):
    images = torch.rand(2, 3, 16, 16)
    a, b = model.encode(images), model.encode(images)
    assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids, strict=True))
    assert torch.equal(model.reconstruct(images), model.reconstruct(images))


def test_forward_decodes_each_image_from_its_depth(model):
    images = torch.rand(4, 3, 16, 16)
    depths = torch.tensor([1, 2, 5, 3])
    with torch.no_grad():
        out = model(images, depths)
        pyr = model.encode(images)
        for i, d in enumerate(depths.tolist()):
            expected = model.decode(pyr[i], d)
            got = ((out.reconstructions[i : i + 1] + 1) / 2).clamp(0, 1)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_gradients_reach_encoder_but_not_the_codebook(model):
    model.train()
    out = model(torch.rand(2, 3, 16, 16))
    (out.reconstructions.pow(2).mean() + out.quant.commitment_loss + out.quant.codebook_loss).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    assert "quantizer.codebook" not in dict(model.named_parameters())
    assert "quantizer.codebook" not in model.trainable_state_dict()
    model.zero_grad()
    model.eval()


def test_wrong_image_shape_is_a_clear_error(model):
    with pytest.raises(ShapeError, match=r"\(B, 3, 16, 16\)"):
        model.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ShapeError):
        model.encode(torch.rand(3, 16, 16))


# The public boundary (issue 14): what encode/decode/reconstruct are given is checked before any
# work, and every refusal says what to do.
BAD_IMAGES = [
    pytest.param(lambda: torch.rand(2, 3, 16, 16) * 2, r"must lie in \[0, 1\], got 0\.\d+\.\.[12]", id="above-1"),
    pytest.param(lambda: torch.rand(2, 3, 16, 16) * 2 - 1, r"from \[-1, 1\]: \(x \+ 1\) / 2", id="minus-1-to-1"),
    pytest.param(lambda: torch.full((1, 3, 16, 16), float("nan")), r"NaN or inf", id="nan"),
    pytest.param(lambda: torch.rand(1, 3, 16, 16).index_fill(3, torch.tensor([0]), float("inf")), r"NaN or inf",
                 id="inf"),
    pytest.param(lambda: (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8), r"uint8 .*images\.float\(\) / 255",
                 id="uint8"),
    pytest.param(lambda: torch.ones(1, 3, 16, 16, dtype=torch.long), r"floating point", id="int64"),
    pytest.param(lambda: torch.rand(0, 3, 16, 16), r"empty batch", id="empty-batch"),
    pytest.param(lambda: torch.rand(1, 3, 16, 16).numpy(), r"torch\.from_numpy", id="numpy-array"),
    pytest.param(lambda: torch.rand(1, 16, 16, 3), r"\(B, 3, 16, 16\)", id="channels-last"),
]


@pytest.mark.parametrize(("make", "message"), BAD_IMAGES)
@pytest.mark.parametrize("call", ["encode", "reconstruct"])
def test_bad_images_are_a_shape_error_that_says_what_to_do(model, make, message, call):
    with pytest.raises(ShapeError, match=message):
        getattr(model, call)(make())


def test_other_float_types_are_converted_and_a_rounding_overshoot_is_taken(model):
    images = torch.rand(2, 3, 16, 16)
    want = model.encode(images).ids
    got = model.encode(images.double()).ids  # cast to the model's float32: the same values
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert model.encode(images.half()).ids[0].shape == (2, 1)
    assert model.encode(images * 1.0008 - 0.0004).ids[0].shape == (2, 1)  # within RANGE_TOLERANCE


def test_bad_layer_counts_and_token_ids_are_refused(model):
    pyramid = model.encode(torch.rand(2, 3, 16, 16))
    for bad in (0, -1, 6, 2.0, True):
        with pytest.raises(PyramidError, match=r"num_layers must be in 1\.\.5"):
            model.decode(pyramid, bad)
        with pytest.raises(PyramidError, match=r"num_layers must be in 1\.\.5"):
            model.reconstruct(torch.rand(1, 3, 16, 16), bad)
    with pytest.raises(PyramidError, match=r"num_layers must be in 1\.\.5"):
        pyramid.to_text(0)
    assert model.decode(pyramid, None).shape == (2, 3, 16, 16)
    layout, codebook = model.layout, model.codebook
    ids = [t.clone() for t in pyramid.ids]
    for change, message in [
        (lambda i: i[0].fill_(-1), r"layer 1: token ids must be in 0\.\.255 .*got -1\.\.-1"),
        (lambda i: i[2].fill_(256), r"layer 3: token ids must be in 0\.\.255 .*got 256\.\.256"),
        (lambda i: i.__setitem__(1, i[1].float()), r"layer 2: token ids must be an integer tensor"),
        (lambda i: i.__setitem__(1, i[1][:, :3]), r"layer 2 needs ids of shape \(B, 4\)"),
        (lambda i: i.__setitem__(1, i[1][:1]), r"the same B >= 1 in every layer, got \(1, 4\)"),
        (lambda i: i.clear(), r"1\.\.5 layers of ids, got 0"),
        (lambda i: i.extend(i[-1:]), r"1\.\.5 layers of ids, got 6"),
    ]:
        bad = [t.clone() for t in ids]
        change(bad)
        with pytest.raises(PyramidError, match=message):
            TokenPyramid(bad, layout, codebook)
    with pytest.raises(PyramidError, match="the same B >= 1"):
        TokenPyramid([t[:0] for t in ids], layout, codebook)
    with pytest.raises(PyramidError, match="decode takes a TokenPyramid"):
        model.decode(ids)


def test_paper_preset_builds_a_six_layer_pyramid():
    cfg = create_config("paper", {"codebook.source": "random:64:16", "model.base_channels": 8,
                                  "model.latent_channels": 16})
    model = SPAE(cfg.model, random_codebook("random:64:16"))
    assert model.layout.grid == 16
    assert model.layout.cumulative_tokens() == [1, 5, 21, 85, 341, 597]


def test_covering_pyramid_layer1_reads_the_head_mean_and_layer2_the_quadrant_latents():
    """Layer 1's one word is the nearest to the grid mean of the head; each of layer 2's four
    words is picked by SAQ from its quadrant's mean latent: 2 * mean(z) - e(layer 1)."""
    from spae_lab.quantizer import nearest_codes, region_mean

    torch.manual_seed(0)
    cfg = create_config("tiny", {"codebook.source": "random:256:24"})
    assert cfg.model.coarse_tokens == "cover" and cfg.model.semantic_head_layers == 1
    model = SPAE(cfg.model, random_codebook(cfg.codebook.source)).eval()
    images = torch.rand(2, 3, 16, 16)
    grid = model.layout.grid
    with torch.no_grad():
        z, quant = model.quantize(images)
        head = model._to_search_space(model.semantic_head, model.encoder(images * 2 - 1))
        table = model.quantizer.table()
        first = nearest_codes(region_mean(head, grid, grid)[:, 0], table)
        assert torch.equal(quant.ids[0][:, 0], first)
        quadrants = 2 * region_mean(z, grid, grid // 2) - table[first][:, None]
        want = nearest_codes(quadrants.reshape(-1, table.shape[1]), table).view(2, 4)
        assert torch.equal(quant.ids[1], want)


TWO_HEAD_LAYERS = {"semantic.top_k": (3, 10), "model.semantic_head_layers": 2}


@pytest.mark.parametrize("overrides,head_depth", [({}, 1), (TWO_HEAD_LAYERS, 2)])
def test_reconstruction_gradient_reaches_what_picked_the_words(overrides, head_depth):
    """Depths up to the head's layers send the decoder's gradient to the semantic head, not to the
    shared latents; deeper decodes reach the latents. Routed to the latents, the head never saw
    reconstruction and layer 2 repeated layer 1's words."""
    torch.manual_seed(0)
    cfg = create_config("tiny", {"codebook.source": "random:256:24", "semantic.top_k": (3, 10),
                                 **overrides})
    model = SPAE(cfg.model, random_codebook(cfg.codebook.source))
    images = torch.rand(2, 3, 16, 16)
    head_weight = next(model.semantic_head.parameters())

    def grads(depth: int) -> tuple[float, float]:
        model.zero_grad()
        out = model(images, torch.full((2,), depth))
        out.reconstructions.pow(2).mean().backward()
        return (head_weight.grad.abs().sum().item(),
                model.to_codebook.weight.grad.abs().sum().item())

    head_grad, latent_grad = grads(head_depth)
    assert head_grad > 0 and latent_grad == 0
    head_grad, latent_grad = grads(model.num_layers)
    assert head_grad == 0 and latent_grad > 0
