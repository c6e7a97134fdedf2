"""Configs: presets, overrides, unknown keys with suggestions, type checks (property-based)."""

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spae_lab.config import ConfigError, config_from_dict, create_config, list_presets


def test_presets_build_and_round_trip():
    for name in list_presets():
        cfg = create_config(name)
        assert config_from_dict(cfg.to_dict()) == cfg
    assert create_config("small").model.latent_grid == 8
    assert create_config("paper").model.latent_grid == 16


def test_overrides_dotted_and_nested():
    cfg = create_config("tiny", {"train.steps": "7", "model": {"quantizer": "rq"}})
    assert cfg.train.steps == 7 and cfg.model.quantizer == "rq"
    cfg = create_config("small", {"model.layer_sizes": "1,2,8", "codebook.max_size": "none"})
    assert cfg.model.layer_sizes == (1, 2, 8) and cfg.codebook.max_size is None
    cfg = create_config("small", {"semantic.top_k": "1,5,50", "semantic.layer_weights": "1,1,0.5"})
    assert cfg.semantic.layer_weights == (1.0, 1.0, 0.5)


@pytest.mark.parametrize("key,suggestion", [("train.stpes", "train.steps"),
                                            ("model.quantiser", "model.quantizer"),
                                            ("trian.lr", "train.lr")])
def test_unknown_keys_suggest_the_right_one(key, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        create_config("small", {key: 1})


@pytest.mark.parametrize("overrides", [
    {"train.steps": "many"}, {"train.steps": 1.5}, {"train.lr": "fast"}, {"model.quantizer": "pq"},
    {"model.layer_sizes": (1, 3)}, {"model.image_size": 30}, {"train.precision": "fp8"},
    {"model.normalize": "maybe"}, {"train.steps": 0}, {"codebook.source": 3},
    {"semantic.layer_weights": "1,1"}, {"semantic.layer_weights": "-1"}, {"semantic.layer_weights": "nan"},
    {"model.coarse_tokens": "pool"}, {"semantic.loss_form": "all"},
    {"model.head_gradient_scale": -0.5}, {"model.head_gradient_scale": "nan"},
])
def test_bad_values_are_refused(overrides):
    with pytest.raises(ConfigError):
        create_config("small", overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        create_config("smal")


@settings(deadline=None)  # shared CI machines: a loaded core must not fail a correct test
@given(st.dictionaries(st.text(min_size=1, max_size=20), st.one_of(st.integers(), st.text(max_size=8),
                                                                   st.floats(allow_nan=False), st.none()),
                       max_size=4))
def test_arbitrary_overrides_either_apply_or_raise_config_error(overrides):
    try:
        cfg = create_config("tiny", overrides)
    except ConfigError:
        return
    assert config_from_dict(cfg.to_dict()) == cfg


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=1e-6, max_value=1.0))
def test_valid_numbers_round_trip(steps, lr):
    cfg = create_config("tiny", {"train.steps": steps, "train.lr": lr})
    assert cfg.train.steps == steps and cfg.train.lr == lr


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_config_files_are_valid(path):
    """Image configs on the small preset, clip configs (a clip dataset) on video-small."""
    import yaml

    from spae_lab.video.config import CLIP_DATASETS, create_clip_config

    overrides = yaml.safe_load(path.read_text())
    clip = overrides.get("data.dataset") in CLIP_DATASETS
    cfg = create_clip_config("video-small", overrides) if clip else create_config("small", overrides)
    assert cfg.train.steps > 0


def test_configs_saved_before_a_field_existed_load_with_that_time_s_design():
    """Checkpoints keep their config in their metadata: one saved before the MLP head and the
    lower-case codebook reads back as the design it was trained with."""
    from spae_lab.config import config_from_dict

    saved = create_config("small").to_dict()
    for section, key in (("model", "semantic_head_mlp"), ("codebook", "lowercase_only")):
        del saved[section][key]
    old = config_from_dict(saved)
    assert (old.model.semantic_head_mlp, old.codebook.lowercase_only) == (False, False)
    new = config_from_dict(create_config("small").to_dict())
    assert (new.model.semantic_head_mlp, new.codebook.lowercase_only) == (True, True)


@pytest.mark.parametrize("layout", ["cell", None])
def test_a_checkpoint_of_the_retired_cell_layout_is_refused_with_what_to_do(layout):
    """The cell pyramid (saved as coarse_tokens "cell", or before the key existed) is no longer
    read: its weights would decode wrongly in the covering pyramid."""
    from spae_lab.config import config_from_dict

    saved = create_config("small").to_dict()
    if layout is None:
        del saved["model"]["coarse_tokens"]
    else:
        saved["model"]["coarse_tokens"] = layout
    with pytest.raises(ConfigError, match="retired 'cell' pyramid layout.*retrain"):
        config_from_dict(saved)


def test_every_declared_range_and_choice_is_checked():
    """Ranges and choices are declared beside each field (`bounded`, `Literal`) and one generic
    check enforces them: one value past each end of every declared range is refused."""
    import dataclasses
    import typing

    cfg = create_config("small")
    checked = 0
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            key = f"{section.name}.{f.name}"
            if "range" in f.metadata:
                least, most, above = f.metadata["range"]
                is_int = int in typing.get_args(hints[f.name]) or hints[f.name] is int
                below = least if above else least - (1 if is_int else 1e-3)
                with pytest.raises(ConfigError, match=re.escape(key)):
                    create_config("small", {key: below})
                if most is not None:
                    with pytest.raises(ConfigError, match=re.escape(key)):
                        create_config("small", {key: most + (1 if is_int else 1e-3)})
                checked += 1
            if typing.get_origin(hints[f.name]) is typing.Literal:
                with pytest.raises(ConfigError, match=f"{re.escape(key)} must be one of"):
                    create_config("small", {key: "no-such-choice"})
                checked += 1
    assert checked >= 30
