"""The clip pyramid (layout, SAQ over (t, h, w) regions, exact inverse) and ClipSPAE's API
(spae_lab.video.model), a clip tokenizer started from an image one (clip.init_from in
spae_lab.video.train), and the shipped `moving-scenes`."""

import pytest
import torch

from spae_lab.checkpoint import create_tokenizer
from spae_lab.config import ConfigError
from spae_lab.model import ShapeError
from spae_lab.pyramid import PyramidError, PyramidLayout, TokenPyramid
from spae_lab.quantizer import PyramidQuantizer, add_spread, region_mean
from spae_lab.video.config import create_clip_config
from spae_lab.video.data import MovingScenes
from spae_lab.video.model import clip_layout_summary, with_inference_settings


def test_clip_layout_counts_and_coords():
    layout = PyramidLayout(8, (1, 1, 2, 4, 8), frames=4, time_sizes=(1, 1, 2, 4, 4))
    assert layout.num_positions == 256
    assert layout.tokens_per_layer() == [1, 1, 8, 64, 256]
    assert layout.cumulative_tokens() == [1, 2, 10, 74, 330]
    assert layout.region(2) == (8, 4, 4, 2) and layout.layer_shape(2) == "2x2x2"
    coords = layout.coords(2)
    assert coords.shape == (8, 3) and coords[:4, 0].tolist() == [1] * 4 and coords[4:, 0].tolist() == [3] * 4
    image = PyramidLayout(8, (1, 2, 4, 8, 8))
    assert image.region(1) == (8, 4, 1, 1) and image.layer_shape(1) == "2x2" and image.coords(1).shape == (4, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"frames": 4}, "needs time_sizes"),
    ({"frames": 4, "time_sizes": (1, 3)}, "power of two"),
    ({"frames": 4, "time_sizes": (2, 1)}, "coarse to fine"),
    ({"frames": 4, "time_sizes": (1,)}, "one time size per layer"),
])
def test_clip_layout_refuses(kwargs, match):
    with pytest.raises(PyramidError, match=match):
        PyramidLayout(4, (1, 2), **kwargs)


def test_region_mean_and_spread_over_time():
    B, F, G, D = 2, 4, 4, 3
    x = torch.randn(B, F * G * G, D)
    grid = x.view(B, F, G, G, D)
    means = region_mean(x, G, 2, F, 2)  # regions of 2 frames x 2 x 2 cells
    assert means.shape == (B, 2 * 2 * 2, D)
    assert torch.allclose(means[:, 0], grid[:, :2, :2, :2].mean(dim=(1, 2, 3)))
    assert torch.allclose(means[:, 7], grid[:, 2:, 2:, 2:].mean(dim=(1, 2, 3)))
    spread = add_spread(torch.zeros_like(x), means, G, 2, F, 2).view(B, F, G, G, D)
    assert torch.equal(spread[:, 3, 3, 3], means[:, 7]) and torch.equal(spread[:, 0, 1, 0], means[:, 0])


def test_saq_over_clip_regions_has_an_exact_inverse():
    torch.manual_seed(0)
    layout = PyramidLayout(4, (1, 1, 2, 4), frames=2, time_sizes=(1, 1, 2, 2))
    quantizer = PyramidQuantizer(layout, torch.randn(64, 8), "saq", None, True)
    z = torch.randn(3, layout.num_positions, 8)
    out = quantizer(z)
    assert [ids.shape for ids in out.ids] == [(3, n) for n in layout.tokens_per_layer()]
    for depth in range(1, layout.num_layers + 1):
        assert torch.allclose(quantizer.dequantize(out.ids, depth), out.latents[depth - 1], atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = create_clip_config("video-tiny", {"semantic.enabled": False})
    return create_tokenizer(cfg).eval(), cfg


def test_clip_tokenizer_encodes_and_decodes_any_prefix(tiny):
    model, cfg = tiny
    clips = torch.stack([MovingScenes(2, "heldout", 0, 16, 4)[i]["video"] for i in range(2)])
    pyramid = model.encode(clips)
    assert isinstance(pyramid, TokenPyramid) and len(pyramid) == 2
    assert [ids.shape[1] for ids in pyramid.ids] == model.layout.tokens_per_layer()
    assert pyramid.describe().splitlines()[2].startswith("layer 3 (1x2x2):")
    for depth in (1, 3, None):
        out = model.decode(pyramid, depth)
        assert out.shape == clips.shape and 0 <= out.min() and out.max() <= 1
    text = pyramid.to_text(2, image=1)
    again = TokenPyramid.from_text(text, model.layout, model.codebook)
    assert [t.tolist() for t in again.ids] == [t[1:].tolist() for t in pyramid.ids[:2]]
    assert torch.equal(model.encode(clips).ids[-1], pyramid.ids[-1])  # eval mode is deterministic


def test_clip_tokenizer_refuses_bad_clips(tiny):
    model, _ = tiny
    with pytest.raises(ShapeError, match=r"\(B, 3, 4, 16, 16\)"):
        model.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ShapeError, match="uint8"):
        model.encode(torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        model.encode(torch.full((1, 3, 4, 16, 16), 2.0))
    image = PyramidLayout(2, (1, 2))
    with pytest.raises(PyramidError, match="another pyramid"):
        model.decode(TokenPyramid([torch.zeros(1, 1, dtype=torch.long)], image, model.codebook))


@pytest.mark.parametrize("override, match", [
    ({"clip.layer_frames": (1, 1, 1, 2)}, "one entry per entry"),
    ({"clip.layer_frames": (1, 1, 1, 2, 4)}, "dividing"),
    ({"clip.frames": 6}, "power of two"),
    ({"clip.time_downsample": 3}, "time_downsample"),
    ({"clip.word_templates": ("{}",)}, "one per guided layer"),
])
def test_clip_config_checks(override, match):
    with pytest.raises(ConfigError, match=match):
        create_clip_config("video-tiny", override)


def test_shipped_moving_scenes_names_the_motion_and_gives_the_clip_back():
    """The shipped clip tokenizer on held-out clips of a seed it never saw: layers 1-2 hold the
    direction and a colour or shape word far more often than two random codebook words, and every
    layer brings the clip closer."""
    from spae_lab import load_tokenizer
    from spae_lab.metrics import random_words
    from spae_lab.video.evaluate import word_hits

    model = load_tokenizer("moving-scenes")
    scenes = MovingScenes(32, "heldout", 123, model.config.image_size, model.frames)
    items = [scenes[i] for i in range(32)]
    clips = torch.stack([it["video"] for it in items])
    pyramid = model.encode(clips)
    hits = [word_hits(pyramid.to_text(2, image=i).split(), it) for i, it in enumerate(items)]
    drawn = [word_hits(w, it) for w, it in zip(random_words(model.codebook, 32, per_image=2), items, strict=True)]
    for key in ("direction_hit", "content_hit"):
        assert sum(h[key] for h in hits) / 32 >= 0.8 > sum(h[key] for h in drawn) / 32 + 0.5, key
    errors = [(model.decode(pyramid, d) - clips).pow(2).mean().item() for d in (1, 3, 5, 7)]
    assert errors == sorted(errors, reverse=True)


def test_inference_settings_keep_the_weights(tiny):
    model, _ = tiny
    reader = with_inference_settings(model, {"model.top_word": "head", "train.steps": 7})
    assert reader is not model and reader.experiment_config.train.steps == 7
    assert model.experiment_config.train.steps != 7  # the model's own config is left alone
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reader.state_dict().values(),
                                                 strict=True))
    clips = torch.stack([MovingScenes(2, "heldout", 0, 16, 4)[i]["video"] for i in range(2)])
    assert all(torch.equal(a, b) for a, b in zip(model.encode(clips).ids, reader.encode(clips).ids, strict=True))
    assert clip_layout_summary(model).startswith("4 frames of 16 px; latent 2 x ")


def _image_tokenizer_file(tmp_path, **model):
    """A fresh image tokenizer with video-tiny's 2D network, saved as a checkpoint file."""
    from spae_lab.checkpoint import save_checkpoint
    from spae_lab.config import create_config

    torch.manual_seed(1)
    cfg = create_config("tiny", {"semantic.enabled": False, "codebook.max_size": 1024, "model.image_size": 16,
                                 "model.base_channels": 16, "model.channel_mults": (1, 2),
                                 "model.latent_channels": 32, "model.layer_sizes": (1, 2, 4, 8),
                                 **{f"model.{k}": v for k, v in model.items()}})
    image = create_tokenizer(cfg).eval()
    path = tmp_path / "image.safetensors"
    save_checkpoint(path, image, None, 0, cfg)
    return image, path


def test_a_clip_tokenizer_started_from_an_image_one_is_that_one_frame_by_frame(tmp_path):
    """clip.init_from: the 2D halves and projections are copied and the temporal blocks start as
    the identity, so the clip tokenizer's latents and decodes are the image tokenizer's per frame."""
    from spae_lab.video.train import start_from_image_tokenizer

    image, path = _image_tokenizer_file(tmp_path)
    cfg = create_clip_config("video-tiny", {"semantic.enabled": False, "clip.time_downsample": 1,
                                            "clip.init_from": str(path)})
    clip_model = create_tokenizer(cfg).eval()
    assert start_from_image_tokenizer(clip_model, str(path)) == len(image.state_dict())
    clips = torch.stack([MovingScenes(2, "heldout", 0, 16, 4)[i]["video"] for i in range(2)])
    frames = clips.transpose(1, 2).reshape(-1, 3, 16, 16)  # (B*T, 3, S, S), frame-major per clip
    with torch.no_grad():
        z = clip_model.encode_latents(clips)
        assert torch.allclose(z.reshape(-1, 64, z.shape[-1]), image.encode_latents(frames), atol=1e-5)
        decoded = clip_model.decode_latents(z).transpose(1, 2).reshape(-1, 3, 16, 16)
        assert torch.allclose(decoded, image.decode_latents(image.encode_latents(frames)), atol=1e-5)


def test_a_clip_tokenizer_refuses_an_image_tokenizer_of_another_shape(tmp_path):
    from spae_lab.video.train import start_from_image_tokenizer

    _, path = _image_tokenizer_file(tmp_path, base_channels=8)
    clip_model = create_tokenizer(create_clip_config("video-tiny", {"semantic.enabled": False}))
    with pytest.raises(ConfigError, match=r"model\.base_channels is 8, this clip tokenizer's is 16"):
        start_from_image_tokenizer(clip_model, str(path))


def test_a_new_clip_run_starts_from_the_image_tokenizer_it_names(tmp_path):
    from spae_lab.checkpoint import read_checkpoint
    from spae_lab.video.train import train_clips

    image, path = _image_tokenizer_file(tmp_path)
    cfg = create_clip_config("video-tiny", {"semantic.enabled": False, "clip.init_from": str(path),
                                            "train.num_threads": 1, "train.steps": 1, "train.lr": 1e-7})
    train_clips(cfg, tmp_path / "run", progress=False)
    tensors, _ = read_checkpoint(tmp_path / "run")
    for name, weight in image.state_dict().items():  # one step at a tiny learning rate: still the image's
        assert torch.allclose(tensors[f"model.{name}"], weight, atol=1e-5), name


def test_the_shipped_clip_tokenizer_s_first_two_words_are_its_teacher_s():
    """Read with model.top_word = teacher, layers 1-2 hold the clip teacher's words whatever the
    weights: what SmolLM2 reads of a clip does not change when the tokenizer is retrained."""
    from spae_lab import load_tokenizer

    model = load_tokenizer("moving-scenes")
    scenes = MovingScenes(8, "heldout", 5, model.config.image_size, model.frames)
    clips = torch.stack([scenes[i]["video"] for i in range(8)])
    pyramid = model.encode(clips)
    top = model.top_word_guide.top_words(clips)
    assert all(torch.equal(pyramid.ids[layer], top[layer][:, :1]) for layer in range(2))
