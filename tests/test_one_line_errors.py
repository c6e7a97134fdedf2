"""Inputs that gave tracebacks or misleading lines now give one clear line (issue 23, item 10):
a codebook source that is a folder but no model, a damaged model card, weights of the wrong type or
with NaN, a folder hiding a shipped name, and `edit` on images without classes.

Modules: spae_lab.errors (every message a SpaeError), spae_lab.cli.main.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spae_lab import pretrained
from spae_lab.checkpoint import CHECKPOINT_NAME, CheckpointError, load_tokenizer
from spae_lab.cli.main import main
from spae_lab.codebook import CodebookError


def _one_error_line(capsys, command: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spae-lab {command}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("config", [None, "{}", '{"model_type": "no-such-model"}'],
                         ids=["empty folder", "empty config", "unknown model type"])
def test_codebook_source_that_is_no_model_folder_is_one_line(tmp_path, capsys, config):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    assert main(["codebook", "--source", str(folder)]) == 2
    assert "cannot load the language model" in _one_error_line(capsys, "codebook")


def _rewrite_checkpoint(source, target, change_tensors=None, change_config=None):
    with safe_open(str(source / CHECKPOINT_NAME), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if change_tensors:
        change_tensors(tensors)
    if change_config:
        config = json.loads(metadata["config"])
        change_config(config)
        metadata["config"] = json.dumps(config)
    target.mkdir()
    save_file(tensors, str(target / CHECKPOINT_NAME), metadata=metadata)
    return target


def test_a_checkpoint_whose_codebook_source_is_a_folder_is_one_line(tiny_tokenizer_run, tmp_path):
    (tmp_path / "folder").mkdir()
    run = _rewrite_checkpoint(tiny_tokenizer_run, tmp_path / "run",
                              change_config=lambda c: c["codebook"].update(source=str(tmp_path / "folder")))
    with pytest.raises(CodebookError, match="not a Hugging Face model folder"):
        load_tokenizer(run)


def _first_weight(tensors) -> str:
    return next(k for k, v in tensors.items() if k.startswith("model.") and v.ndim == 2)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t, k: t.__setitem__(k, t[k].to(torch.int8)), "holds int8 values"),
    (lambda t, k: t.__setitem__(k, t[k] > 0), "holds bool values"),
    (lambda t, k: t[k].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    (lambda t, k: t[k].view(-1).__setitem__(3, float("-inf")), "NaN or infinite"),
], ids=["int8", "bool", "nan", "inf"])
def test_weights_of_the_wrong_type_or_not_finite_are_refused(tiny_tokenizer_run, tmp_path, change, message):
    run = _rewrite_checkpoint(tiny_tokenizer_run, tmp_path / "run",
                              change_tensors=lambda t: change(t, _first_weight(t)))
    with pytest.raises(CheckpointError, match=message):
        load_tokenizer(run)
    load_tokenizer(tiny_tokenizer_run)  # the untouched checkpoint loads


def test_a_folder_named_like_a_shipped_tokenizer_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "notes.txt").write_text("not a run")
    with pytest.warns(UserWarning, match=r"read as the shipped tokenizer; write ./digits"):
        model = load_tokenizer("digits")
    assert str(model.experiment_config.data.dataset) == "mnist"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_tokenizer("./digits")  # written as a path: the folder


@pytest.mark.parametrize("card", ['{"heldout": ', '["a list"]', '{"heldout": {"psnr": ["x"]}}'],
                         ids=["broken JSON", "not an object", "wrong types"])
def test_a_damaged_model_card_is_one_line(tmp_path, monkeypatch, capsys, card):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    (tmp_path / "mine.safetensors").write_bytes(b"")
    (tmp_path / "mine.json").write_text(card)
    assert main(["pretrained"]) == 2
    line = _one_error_line(capsys, "pretrained")
    assert "model card of 'mine'" in line and "reinstall" in line
    assert main(["pretrained", "--markdown"]) == 2


def test_edit_on_images_without_classes_judges_among_the_tokenizers_classes(tiny_tokenizer_run, tmp_path):
    from test_bad_input import noise, to_bytes

    from spae_lab.data import DIGIT_NAMES, ImageFolderDataset
    from spae_lab.generate.edit import judge_names
    from spae_lab.generate.queries import GenerationError

    flat = tmp_path / "photos"
    flat.mkdir()
    (flat / "a.png").write_bytes(to_bytes(noise()))
    data = ImageFolderDataset(flat, 16)
    assert data.flat and data.classes == ["photos"]
    model = load_tokenizer(tiny_tokenizer_run)  # trained on digits: its classes are the digits
    assert judge_names(model, data, "cat") == sorted([*DIGIT_NAMES, "cat"])
    labelled = tmp_path / "labelled"
    for name in ("bird", "cat"):
        (labelled / name).mkdir(parents=True)
        (labelled / name / "x.png").write_bytes(to_bytes(noise()))
    assert judge_names(model, ImageFolderDataset(labelled, 16), "cat") == ["bird", "cat"]
    model.experiment_config.data.dataset = str(tmp_path / "gone")  # no classes anywhere: refused
    with pytest.raises(GenerationError, match="no class folders"):
        judge_names(model, data, "cat")


@pytest.mark.parametrize("below", ["", "sub"], ids=["the file", "below the file"])
def test_a_file_in_the_way_of_out_names_it(tmp_path, capsys, below):
    """Any command whose --out is (or lies below) a file says so, instead of "[Errno 17] File exists"."""
    (tmp_path / "f").write_text("x")
    assert main(["report", "--index-only", "--out", str(tmp_path / "f" / below)]) == 2
    line = _one_error_line(capsys, "report")
    assert f"{tmp_path / 'f'} is a file, not a folder" in line and "Errno" not in line
