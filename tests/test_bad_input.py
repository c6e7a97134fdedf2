"""Bad input ends in one readable message or a documented conversion, and never damages what an
earlier run wrote (issue 7, part 2).

The table runs the real command line in-process (`spae_lab.cli.main.main`, as the console script does):
a failure must exit with status 2 and print exactly one `spae-lab <command>: error: ...` line
(argparse's usage line aside), and leave every file under the test folder as it was, the trained
run folder and an earlier `decode` output included. Two cases run the console script as a process
(no traceback without `--debug`, one with it). The documented conversions of `spae_lab.data.to_rgb`
/ `load_image` (palette, 16-bit, alpha, CMYK, 1-bit, EXIF rotation, GIF frames) are checked on their
pixels, and property-based tests (hypothesis) feed the config and data parsers arbitrary input.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from spae_lab.checkpoint import load_tokenizer, read_checkpoint, save_checkpoint
from spae_lab.cli.main import main
from spae_lab.cli.tokenizer import parse_sets, read_yaml_mapping
from spae_lab.codebook import load_codebook
from spae_lab.config import (
    CodebookConfig,
    ConfigError,
    config_from_dict,
    create_config,
    list_presets,
)
from spae_lab.data import DataError, ImageFolderDataset, _safe_member_name, load_image
from spae_lab.model import SPAE, ShapeError
from spae_lab.pyramid import PyramidError
from spae_lab.teacher import BUILTIN_TEACHER, TeacherError, load_teacher
from spae_lab.training.loop import train

SCRIPT = Path(sys.executable).with_name("spae-lab")
S = 16  # the tiny preset's image size


# --- image files ----------------------------------------------------------------------------------


def to_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise(width: int = 24, height: int = 24, mode: str = "RGB") -> Image.Image:
    array = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def halves(left: tuple, right: tuple, size=(20, 20), mode: str = "RGB") -> Image.Image:
    """Left half one colour, right half another."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds almost nothing: a decompression bomb's
    header (PIL refuses more than 2 * Image.MAX_IMAGE_PIXELS before decoding anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def sixteen_bit(value: int) -> Image.Image:
    return Image.fromarray(np.full((12, 12), value, dtype=np.uint16))


def palette_with_transparency() -> Image.Image:
    """Left half: palette entry 0 (red, transparent); right half: entry 1 (opaque blue)."""
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 0, 20, 20))
    return img


def exif_rotated() -> bytes:
    """Stored 20x10, red left and blue right, with EXIF orientation 6 (shown rotated 90 degrees
    clockwise, as phones save portrait photos): displayed red on top and blue below."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return to_bytes(halves((255, 0, 0), (0, 0, 255), size=(20, 10)), "JPEG", quality=95, exif=exif)


def animated_gif() -> bytes:
    """Two frames: red, then blue."""
    frames = [Image.new("RGB", (12, 12), (255, 0, 0)), Image.new("RGB", (12, 12), (0, 0, 255))]
    return to_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return to_bytes(Image.new("CMYK", (12, 12), (0, 0, 0, 0)), "JPEG", quality=95)  # white


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- the trained run and the per-test folder ----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run trained for 2 steps (seconds), and an untrained 32 px checkpoint of 3 layers
    (shapes are all the size cases need; save_checkpoint takes milliseconds)."""
    root = tmp_path_factory.mktemp("bad_input")
    cfg = create_config("tiny", {"train.steps": 2, "train.num_threads": 1, "data.num_images": 64,
                                 "data.heldout_images": 8})
    train(cfg, root / "run", progress=False)
    big = create_config("tiny", {"model.image_size": 32, "model.layer_sizes": (1, 2, 4)})
    save_checkpoint(root / "size32.safetensors", SPAE(big.model, load_codebook(big.codebook)),
                    None, 0, big)
    return root


@dataclass
class Env:
    """The current folder of one case: `run` (a copy of the trained run) and `previous` (an
    earlier decode output) must come out of every failing command byte for byte."""

    root: Path
    run: Path
    trained: Path
    previous: Path

    def file(self, name: str, data: bytes | str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def folder(self, name: str, files: dict[str, bytes | str] | None = None) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        for relpath, data in (files or {}).items():
            self.file(f"{name}/{relpath}", data)
        return str(self.root / name)

    def checkpoint(self, name: str, drop: str | None = None, **metadata: str) -> str:
        """The run's checkpoint, metadata entries replaced (None: removed) or a tensor dropped."""
        tensors, meta = read_checkpoint(self.run)
        meta = {k: v for k, v in {**meta, **metadata}.items() if v is not None}
        if drop:
            tensors.pop(next(k for k in tensors if k.startswith(drop)))
        save_file(tensors, str(self.root / name), metadata=meta)
        return str(self.root / name)

    def saved_config(self, **changes) -> str:
        """The run's config as JSON, with {"section.key": value} changed."""
        data = json.loads(read_checkpoint(self.run)[1]["config"])
        for key, value in changes.items():
            section, _, name = key.partition(".")
            data[section][name] = value
        return json.dumps(data)


@pytest.fixture
def env(trained, tmp_path, monkeypatch) -> Env:
    monkeypatch.chdir(tmp_path)  # a bare `train` would write runs/ here, never in the repository
    run = tmp_path / "run"
    run.mkdir()
    for path in (trained / "run").iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    previous = tmp_path / "previous.png"
    noise().save(previous)
    return Env(tmp_path, run, trained, previous)


def snapshot(root: Path) -> dict[str, str | None]:
    """Every file (sha256) and folder (None) under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else None for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def message_lines(stderr: str) -> list[str]:
    """stderr without argparse's usage lines (which it prints before its one error line)."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        in_usage = line.startswith("usage:") or (in_usage and line.startswith(" "))
        if line.strip() and not in_usage:
            lines.append(line)
    return lines


# --- the table -----------------------------------------------------------------------------------


def case(id: str, setup: Callable[[Env], list[str]], fails: str | None = None,
         prints: str | None = None):
    """`setup` writes the case's input files and returns the command line. `fails`: a pattern
    the one error line matches; else the command succeeds and stdout matches `prints`."""
    return pytest.param(setup, fails, prints, id=id)


def encode(e: Env, *images: str) -> list[str]:
    return ["encode", str(e.run), *images]


def train_into_run(e: Env, *args: str) -> list[str]:
    """`train` with the run folder as --out: a failure must leave the finished run as it was, even
    with --force (given unless the case resumes: the old run is removed only once the new one is
    ready to write)."""
    force = [] if "--resume" in args else ["--force"]
    return ["train", "--preset", "tiny", "--out", str(e.run), "--quiet", *force, *args]


def resume_after(damage: Callable[[Env], object]) -> Callable[[Env], list[str]]:
    """`train --resume` into the run folder after `damage` changed it."""
    def setup(e: Env) -> list[str]:
        damage(e)
        return train_into_run(e, "--resume")
    return setup


def decode(e: Env, checkpoint: str, text: str, out: str | None = None) -> list[str]:
    return ["decode", checkpoint, text, "--out", out or str(e.previous)]


def words(e: Env, count: int) -> str:
    return " ".join(load_tokenizer(e.run).codebook.words[:count])


def traversal_only_archive(e: Env) -> str:
    png = to_bytes(noise())
    return str(write_tar(e.root / "evil.tar.gz", {"../../cat/x.png": png, "/etc/cat/y.png": png}))


IMAGE_CASES = [
    case("zero-byte-png", lambda e: encode(e, e.file("empty.png", b"")),
         fails=r"cannot read image .*empty\.png: empty file"),
    case("truncated-png", lambda e: encode(e, e.file("cut.png", to_bytes(noise(64, 64))[:300])),
         fails=r"cannot read image .*cut\.png: .*truncated"),
    case("truncated-jpeg",
         lambda e: encode(e, e.file("cut.jpg", to_bytes(noise(64, 64), "JPEG")[:400])),
         fails=r"cannot read image .*cut\.jpg"),
    case("text-saved-as-jpg", lambda e: encode(e, e.file("notes.jpg", "shopping list: eggs\n")),
         fails=r"notes\.jpg: not a recognised image format"),
    case("html-page-saved-as-png", lambda e: encode(e, e.file(
        "page.png", "<!DOCTYPE html><html><body>404 Not Found</body></html>")),
         fails=r"page\.png: not a recognised image format"),
    case("decompression-bomb-header",
         lambda e: encode(e, e.file("bomb.png", png_header_only(50_000, 50_000))),
         fails=r"bomb\.png: .*decompression bomb"),
    case("folder-named-like-an-image", lambda e: encode(e, e.folder("album.jpg")),
         fails=r"cannot read image .*album\.jpg"),
    case("missing-image-file", lambda e: encode(e, str(e.root / "nowhere.png")),
         fails=r"cannot read image .*nowhere\.png"),
    case("one-bad-image-among-good-ones", lambda e: encode(
        e, e.file("good.png", to_bytes(noise())), e.file("bad.png", b"\x89PNG\r\n\x1a\n")),
         fails=r"bad\.png"),
    # documented conversions (the pixels are checked in test_documented_conversions)
    case("16-bit-png", lambda e: encode(e, e.file("deep.png", to_bytes(sixteen_bit(30000)))),
         prints=r"deep\.png\nlayer 1 \(1x1\): \w+"),
    case("palette-with-transparency", lambda e: encode(
        e, e.file("pal.png", to_bytes(palette_with_transparency(), transparency=0))),
         prints=r"layer 5 \(8x8\)"),
    case("rgba", lambda e: encode(e, e.file("rgba.png", to_bytes(noise(mode="RGBA")))),
         prints=r"layer 5 \(8x8\)"),
    case("la", lambda e: encode(e, e.file("la.png", to_bytes(noise(mode="LA")))),
         prints=r"layer 5 \(8x8\)"),
    case("grayscale", lambda e: encode(e, e.file("gray.png", to_bytes(noise(mode="L")))),
         prints=r"layer 5 \(8x8\)"),
    case("cmyk-jpeg", lambda e: encode(e, e.file("cmyk.jpg", cmyk_jpeg())), prints=r"cmyk\.jpg"),
    case("1-bit", lambda e: encode(e, e.file("bits.png", to_bytes(noise(mode="1")))),
         prints=r"bits\.png"),
    case("exif-rotated-jpeg", lambda e: encode(e, e.file("phone.jpg", exif_rotated())),
         prints=r"phone\.jpg"),
    case("animated-gif", lambda e: encode(e, e.file("anim.gif", animated_gif())),
         prints=r"anim\.gif"),
    case("1x1-and-3x400-pixels", lambda e: encode(
        e, e.file("dot.png", to_bytes(noise(1, 1))), e.file("strip.png", to_bytes(noise(3, 400)))),
         prints=r"dot\.png(.|\n)*strip\.png"),
]

DATASET_CASES = [
    case("empty-folder", lambda e: train_into_run(e, "--dataset", e.folder("empty/cat")),
         fails=r"no image files found in .*empty"),
    case("missing-folder", lambda e: train_into_run(e, "--dataset", str(e.root / "no-such-folder")),
         fails=r"unknown dataset .*no-such-folder.*no such file or folder"),
    case("folder-with-only-non-images", lambda e: train_into_run(e, "--dataset", e.folder(
        "docs", {"cat/readme.txt": "hi", "cat/.DS_Store": b"\0\1", "dog/data.csv": "a,b"})),
         fails=r"no image files found in .*docs"),
    case("folder-with-only-unreadable-images", lambda e: train_into_run(e, "--dataset", e.folder(
        "broken", {"cat/a.png": b"", "dog/b.jpg": "text"})),
         fails=r"no readable image in .*broken: all 2 failed"),
    case("archive-with-path-traversal-members", lambda e: train_into_run(
        e, "--dataset", traversal_only_archive(e)),
         fails=r"no image files found in .*evil\.tar\.gz"),
    case("corrupt-archive", lambda e: train_into_run(
        e, "--dataset", e.file("photos.tar.gz", b"\x1f\x8b\x08 not really gzip")),
         fails=r"cannot read archive .*photos\.tar\.gz"),
    case("plain-file-as-dataset",
         lambda e: train_into_run(e, "--dataset", e.file("list.txt", "a.png")),
         fails=r"list\.txt is neither a folder nor a tar archive"),
    case("mistyped-builtin-dataset", lambda e: train_into_run(e, "--dataset", "scnes"),
         fails=r"did you mean 'scenes'\?"),
]

CONFIG_CASES = [
    case("unknown-key", lambda e: train_into_run(e, "--set", "train.stpes=3"),
         fails=r"unknown config key 'train\.stpes' \(did you mean 'train\.steps'\?\)"),
    case("mistyped-section", lambda e: train_into_run(e, "--set", "trian.lr=0.1"),
         fails=r"did you mean 'train\.lr'\?"),
    case("unknown-key-in-yaml-file", lambda e: train_into_run(
        e, "--config", e.file("exp.yaml", "model:\n  quantiser: rq\n")),
         fails=r"unknown config key 'model\.quantiser' \(did you mean 'model\.quantizer'\?\)"),
    case("string-for-int", lambda e: train_into_run(e, "--set", "train.batch_size=many"),
         fails=r"train\.batch_size: expected an integer, got 'many'"),
    case("fraction-for-int", lambda e: train_into_run(e, "--set", "train.steps=2.5"),
         fails=r"train\.steps: expected an integer, got 2\.5"),
    case("negative-steps", lambda e: train_into_run(e, "--steps", "-5"),
         fails=r"argument --steps: must be in 1\.\.10,000,000, got -5"),
    case("zero-log-interval", lambda e: train_into_run(e, "--set", "train.log_every=0"),
         fails=r"train\.log_every must be at least 1"),
    case("nan-learning-rate", lambda e: train_into_run(e, "--set", "train.lr=.nan"),
         fails=r"train\.lr: expected a finite number"),
    case("not-a-bool", lambda e: train_into_run(e, "--set", "model.normalize=maybe"),
         fails=r"model\.normalize: expected true/false, got 'maybe'"),
    case("empty-channel-list", lambda e: train_into_run(e, "--set", "model.channel_mults=()"),
         fails=r"model\.channel_mults must be one or more positive integers"),
    case("set-without-equals", lambda e: train_into_run(e, "--set", "train.steps"),
         fails=r"--set takes key=value, got 'train\.steps'"),
    case("set-value-not-yaml", lambda e: train_into_run(e, "--set", "model.layer_sizes=[1, 2"),
         fails=r"model\.layer_sizes: cannot parse '\[1, 2'"),
    case("config-file-not-yaml", lambda e: train_into_run(
        e, "--config", e.file("exp.yaml", "train: {steps: [1,\n")),
         fails=r"cannot read .*exp\.yaml"),
    case("config-file-not-a-mapping", lambda e: train_into_run(
        e, "--config", e.file("exp.yaml", "- train.steps=3\n")),
         fails=r"exp\.yaml must hold a mapping"),
    case("argparse-type-error", lambda e: train_into_run(e, "--steps", "many"),
         fails=r"spae-lab train: error: argument --steps: expected a whole number, got 'many'"),
    case("unknown-device", lambda e: train_into_run(e, "--device", "gpu"),
         fails=r"unknown device 'gpu'"),
    case("absent-cuda-device", lambda e: train_into_run(e, "--device", "cuda:7"),
         fails=r"device 'cuda:7': this machine has \d CUDA device"),
    case("out-is-a-file", lambda e: ["train", "--preset", "tiny", "--out", str(e.previous)],
         fails=r"--out .*previous\.png is a file"),
    case("encode-layers-out-of-range", lambda e: encode(e, "--layers", "9"),
         fails=r"--layers must be in 1\.\.5"),
    case("encode-count-zero", lambda e: encode(e, "--count", "0"),
         fails=r"argument --count: must be in 1\.\.10,000, got 0"),
    case("codebook-negative-size", lambda e: ["codebook", "--max-size", "-3"],
         fails=r"argument --max-size: must be in 0\.\."),
    case("codebook-random-spec-too-large",
         lambda e: ["codebook", "--source", "random:10000000:8", "--max-size", "0"],
         fails=r"random codebook 'random:10000000:8': need 1 <= V <= 100000"),
    case("report-parameters-not-yaml", lambda e: [
        "report", "--notebooks-dir", e.folder("books", {"a.ipynb": "{}"}), "--out", str(e.run),
        "-f", e.file("p.yaml", "steps: [1,\n")],
         fails=r"cannot read the parameters file .*p\.yaml"),
    case("teacher-file-not-safetensors", lambda e: train_into_run(
        e, "--set", f"semantic.teacher=lit:{e.file('teacher.safetensors', 'not weights')}"),
         fails=r"teacher\.safetensors is not a readable safetensors LiT teacher checkpoint"),
]

CHECKPOINT_CASES = [
    case("missing-checkpoint", lambda e: ["encode", str(e.root / "no-run")],
         fails=r"no checkpoint at"),
    case("zero-byte-checkpoint", lambda e: ["encode", e.file("c.safetensors", b"")],
         fails=r"c\.safetensors is not a readable safetensors checkpoint"),
    case("truncated-checkpoint", lambda e: ["encode", e.file(
        "c.safetensors", (e.run / "checkpoint.safetensors").read_bytes()[:5000])],
         fails=r"is not a readable safetensors checkpoint"),
    case("text-as-checkpoint", lambda e: ["encode", e.file("c.safetensors", "{}" * 20)],
         fails=r"is not a readable safetensors checkpoint"),
    case("safetensors-of-something-else", lambda e: ["encode", str(BUILTIN_TEACHER)],
         fails=r"is not a spae_lab checkpoint"),
    case("metadata-config-not-json",
         lambda e: ["encode", e.checkpoint("c.safetensors", config="{oops")],
         fails=r"c\.safetensors: unusable config in its metadata: Expecting property name"),
    case("metadata-config-missing",
         lambda e: ["encode", e.checkpoint("c.safetensors", config=None)],
         fails=r"unusable config in its metadata: no config"),
    case("metadata-config-a-list",
         lambda e: ["encode", e.checkpoint("c.safetensors", config="[1]")],
         fails=r"unusable config .*must be a mapping"),
    case("metadata-config-from-a-newer-version", lambda e: ["encode", e.checkpoint(
        "c.safetensors", config=e.saved_config(**{"model.fancy_new_option": 1}))],
         fails=r"unusable config .*unknown config key 'model\.fancy_new_option'"),
    case("weights-of-another-preset", lambda e: ["encode", e.checkpoint(
        "c.safetensors", config=e.saved_config(**{"model.latent_channels": 48}))],
         fails=r"does not fit this model: size mismatch for"),
    case("tensor-missing",
         lambda e: ["encode", e.checkpoint("c.safetensors", drop="model.decoder")],
         fails=r"does not fit this model: missing \['decoder"),
    case("codebook-does-not-match", lambda e: ["encode", e.checkpoint(
        "c.safetensors", codebook_fingerprint="0123456789abcdef")],
         fails=r"trained with another codebook than 'smollm2'"),
    case("resume-with-another-preset", lambda e: train_into_run(e, "--resume", "--preset", "small"),
         fails=r"belongs to a run with other settings \(preset 'tiny'\): codebook\.max_size 1024 -> 8192"),
    case("resume-from-truncated-checkpoint", resume_after(lambda e: e.file(
        "run/checkpoint.safetensors", (e.run / "checkpoint.safetensors").read_bytes()[:-100])),
         fails=r"run/checkpoint\.safetensors is not a readable safetensors checkpoint"),
    case("resume-with-a-bad-step", resume_after(
        lambda e: e.checkpoint("run/checkpoint.safetensors", step="twelve")),
         fails=r"no valid step in its metadata"),
]

DECODE_CASES = [
    case("unknown-word", lambda e: decode(e, str(e.run), "xyzzy"),
         fails=r"'xyzzy' is not a word of this codebook"),
    case("mistyped-word-among-good-ones", lambda e: decode(e, str(e.run), words(e, 4) + " thhe"),
         fails=r"'thhe' is not a word"),
    case("word-count-not-a-layer-count", lambda e: decode(e, str(e.run), words(e, 3)),
         fails=r"cumulative layer count of words \[1, 5, 21, 85, 149\], got \[3\]"),
    case("empty-text", lambda e: decode(e, str(e.run), ""), fails=r"got \[0\]"),
    case("text-of-a-deeper-tokenizer", lambda e: decode(
        e, str(e.trained / "size32.safetensors"), words(e, 85)),
         fails=r"\[1, 5, 21\], got \[85\]"),
    case("out-with-unknown-extension",
         lambda e: decode(e, str(e.run), words(e, 1), str(e.root / "x.txt")),
         fails=r"cannot save an image as .*x\.txt"),
    case("out-is-a-folder", lambda e: decode(e, str(e.run), words(e, 1), e.folder("pictures")),
         fails=r"cannot save an image as .*pictures"),
    case("decode-one-layer", lambda e: decode(e, str(e.run), words(e, 1), str(e.root / "new.jpg")),
         prints=r"decoded 1 layers to .*new\.jpg"),
    case("other-size-checkpoint-resizes-the-image", lambda e: [
        "encode", str(e.trained / "size32.safetensors"),
        e.file("photo.png", to_bytes(noise(50, 40)))],
         prints=r"layer 3 \(4x4\)"),
]


def notebook(cells: str) -> str:
    """A notebook whose parameters cell holds `cells` (issue 14's report probes)."""
    return json.dumps({"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": cells,
                                  "outputs": [], "execution_count": None}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def report(e: Env, *args: str) -> list[str]:
    """`report` of one notebook into reports/, beside a folder `precious` that must survive."""
    e.folder("precious", {"keep.txt": "mine"})
    books = e.folder("books", {"a.ipynb": notebook("n: int = 1  # a count\nnames: list = ['x']  # words\n")})
    return ["report", "--notebooks-dir", books, "--out", str(e.root / "reports"), *args]


def resume(e: Env, *args: str) -> list[str]:
    """--resume with the run's own settings, then `args`."""
    return train_into_run(e, "--resume", "--set", "data.num_images=64", "--set", "data.heldout_images=8", *args)


# Issue 14: a run folder is owned, a resume keeps the run's meaning, sizes have upper bounds, a
# report tag is a plain name and parameters have their declared types.
OWNERSHIP_CASES = [
    case("train-over-a-finished-run", lambda e: ["train", "--preset", "tiny", "--out", str(e.run), "--quiet"],
         fails=r"run already holds a run with a checkpoint at step 2: --resume to continue it, --force to "
               r"replace it"),
    case("resume-and-force", lambda e: train_into_run(e, "--resume", "--force"),
         fails=r"argument --force: not allowed with argument --resume"),
    case("resume-with-another-seed", lambda e: resume(e, "--seed", "1"),
         fails=r"other settings \(preset 'tiny'\): train\.seed 0 -> 1; resume it with its own settings"),
    case("resume-with-another-dataset", lambda e: resume(e, "--dataset", "digits"),
         fails=r"data\.dataset 'scenes' -> 'digits'"),
    case("resume-with-another-semantic-loss", lambda e: resume(e, "--set", "semantic.loss_form=each"),
         fails=r"semantic\.loss_form 'any' -> 'each'"),
    case("resume-below-the-checkpoint-step", lambda e: resume(e, "--steps", "1"),
         fails=r"is at step 2, past train\.steps = 1; give at least 2 steps"),
    case("image-size-far-too-large", lambda e: train_into_run(e, "--set", "model.image_size=65536"),
         fails=r"model\.image_size must be at most 1,024, got 65,536"),
    case("batch-far-too-large", lambda e: train_into_run(e, "--batch-size", "100000"),
         fails=r"argument --batch-size: must be in 1\.\.4,096, got 100,000"),
    case("steps-far-too-many", lambda e: train_into_run(e, "--steps", "1000000000"),
         fails=r"argument --steps: must be in 1\.\.10,000,000, got 1,000,000,000"),
    case("channels-far-too-wide", lambda e: train_into_run(e, "--set", "model.channel_mults=[1, 2, 1000]"),
         fails=r"model\.channel_mults: at most 8 stages of at most 64"),
    case("report-tag-leading-out", lambda e: report(e, "--tag", "x/../../precious"),
         fails=r"--tag must be a plain name .*got 'x/\.\./\.\./precious'"),
    case("report-tag-absolute", lambda e: report(e, "--tag", str(e.root / "precious")),
         fails=r"--tag must be a plain name"),
    case("report-parameter-not-an-int", lambda e: report(e, "-p", "n=abc"),
         fails=r"a: parameter 'n' is declared int, got 'abc' \(str\)"),
    case("report-parameter-not-a-list", lambda e: report(e, "-p", "names=runs/demo"),
         fails=r"parameter 'names' is declared list, got 'runs/demo'"),
    case("decode-without-out", lambda e: ["decode", str(e.run), words(e, 1)],
         fails=r"the following arguments are required: --out"),
]


CLI_CASES = IMAGE_CASES + DATASET_CASES + CONFIG_CASES + CHECKPOINT_CASES + DECODE_CASES + OWNERSHIP_CASES


@pytest.mark.parametrize(("setup", "fails", "prints"), CLI_CASES)
def test_cli(env, capsys, setup, fails, prints):
    argv = setup(env)
    before = snapshot(env.root)
    code, out, err = run_cli(argv, capsys)
    after = snapshot(env.root)
    assert "Traceback" not in err
    if fails:
        assert code == 2, f"exit {code}\n{out}\n{err}"
        lines = message_lines(err)
        assert len(lines) == 1 and lines[0].startswith(f"spae-lab {argv[0]}: error: "), err
        assert re.search(fails, lines[0]), lines[0]
        assert after == before, "a failing command changed files"
    else:
        assert code == 0, err
        assert re.search(prints, out), out
        assert {k: after.get(k) for k in before} == before, "a command changed earlier output"


# --- as a process: no traceback without --debug ---------------------------------------------------


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_console_script(env, debug):
    args = ["--debug"] * debug + encode(env, env.file("notes.jpg", "not a photo"))
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and proc.stdout == ""
    if debug:
        assert "Traceback" in proc.stderr and "DataError" in proc.stderr
    else:
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == [
            f"spae-lab encode: error: cannot read image {env.root / 'notes.jpg'}: "
            "not a recognised image format"]


# --- documented conversions, on their pixels ------------------------------------------------------

RED, BLUE, WHITE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)


def colour_at(image: torch.Tensor, row: int, col: int) -> tuple:
    return tuple(round(float(v), 2) for v in image[:, row, col])


def uniform(image: torch.Tensor, level: int) -> bool:
    return torch.allclose(image, torch.full_like(image, level / 255))


def close_to(colour, expected, tolerance=0.12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


@pytest.mark.parametrize(("data", "check"), [
    pytest.param(to_bytes(sixteen_bit(128 * 257)), lambda x: uniform(x, 128),
                 id="16-bit-scaled-not-clipped"),
    pytest.param(to_bytes(palette_with_transparency(), transparency=0),
                 lambda x: colour_at(x, 8, 0) == WHITE and colour_at(x, 8, S - 1) == BLUE,
                 id="palette-transparent-entry-white"),
    pytest.param(to_bytes(halves((255, 0, 0, 0), (0, 0, 255, 255), mode="RGBA")),
                 lambda x: colour_at(x, 8, 0) == WHITE and colour_at(x, 8, S - 1) == BLUE,
                 id="rgba-composited-on-white"),
    pytest.param(to_bytes(halves((0, 0), (0, 255), mode="LA")),
                 lambda x: colour_at(x, 8, 0) == WHITE and colour_at(x, 8, S - 1) == (0, 0, 0),
                 id="la-composited-on-white"),
    pytest.param(to_bytes(Image.new("L", (9, 9), 77)), lambda x: uniform(x, 77),
                 id="grayscale-to-three-equal-channels"),
    pytest.param(cmyk_jpeg(), lambda x: close_to(colour_at(x, 8, 8), WHITE), id="cmyk-to-rgb"),
    pytest.param(to_bytes(halves(0, 1, mode="1")),
                 lambda x: colour_at(x, 8, 0) == (0, 0, 0) and colour_at(x, 8, S - 1) == WHITE,
                 id="1-bit-to-black-and-white"),
    pytest.param(exif_rotated(), lambda x: close_to(colour_at(x, 0, 0), RED)
                 and close_to(colour_at(x, S - 1, 0), BLUE), id="exif-orientation-applied"),
    pytest.param(animated_gif(), lambda x: close_to(colour_at(x, 8, 8), RED), id="gif-first-frame"),
    pytest.param(to_bytes(halves((255, 0, 0), (0, 0, 255), size=(60, 20))),
                 lambda x: close_to(colour_at(x, 8, 0), RED)
                 and close_to(colour_at(x, 8, S - 1), BLUE), id="wide-image-centre-cropped"),
])
def test_documented_conversions(data, check):
    image = load_image(data, S)
    assert image.shape == (3, S, S) and image.dtype == torch.float32
    assert check(image), image[:, 8]


# --- the library: the same rules without the command line ----------------------------------------


def test_images_of_another_size_are_refused_by_the_model(trained):
    model = load_tokenizer(trained / "run")
    with pytest.raises(ShapeError, match=r"shape \(B, 3, 16, 16\), got \(1, 3, 32, 32\)"):
        model.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ShapeError):
        model.encode(torch.rand(3, 16, 16))  # no batch axis


def test_tokens_of_another_codebook_are_refused(trained, tmp_path, monkeypatch):
    model = load_tokenizer(trained / "run")
    monkeypatch.setenv("SPAE_LAB_CACHE", str(tmp_path))  # the random codebook is cached here
    cfg = create_config("tiny", {"codebook.source": "random:1024:576", "semantic.enabled": False})
    other = SPAE(cfg.model, load_codebook(cfg.codebook))
    pyramid = other.encode(torch.rand(1, 3, S, S))
    with pytest.raises(PyramidError, match="another codebook"):
        model.decode(pyramid)


def test_archive_members_outside_the_root_are_never_read_or_written(tmp_path):
    png = to_bytes(noise())
    archive = write_tar(tmp_path / "mixed.tgz",
                        {"../../escape/cat/x.png": png, "ok/cat/fine.png": png})
    with pytest.warns(UserWarning, match="ignored 1 archive members with unsafe paths"):
        dataset = ImageFolderDataset(archive, image_size=S)
    assert len(dataset) == 1 and dataset[0]["path"].endswith("ok/cat/fine.png")
    assert sorted(p.name for p in tmp_path.parent.rglob("*") if "escape" in p.parts) == []


def test_class_names_differing_only_by_unicode_normalisation_are_one_class(tmp_path):
    """macOS writes "café" decomposed (e + combining accent), Linux keeps what it is given: a
    dataset copied between them holds both spellings, which are one class (NFC)."""
    import unicodedata

    png = to_bytes(noise())
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    for name, folder in [("a.png", composed), ("b.png", decomposed), ("c.png", "dog")]:
        (tmp_path / "photos" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / folder / name).write_bytes(png)
    archive = write_tar(tmp_path / "photos.tar", {f"{composed}/a.png": png, f"{decomposed}/b.png": png,
                                                  "dog/c.png": png})
    for root in (tmp_path / "photos", archive):
        dataset = ImageFolderDataset(root, image_size=S)
        assert dataset.classes == [composed, "dog"] and list(dataset.labels) == [0, 0, 1]


def test_damaged_teacher_metadata_is_a_teacher_error(tmp_path):
    from safetensors import safe_open

    with safe_open(str(BUILTIN_TEACHER), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={**meta, "info": "{not json"})
    with pytest.raises(TeacherError, match="damaged LiT teacher checkpoint"):
        load_teacher(f"lit:{tmp_path / 't.safetensors'}")


def test_damaged_codebook_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAE_LAB_CACHE", str(tmp_path))
    config = CodebookConfig(source="random:64:8", max_size=None, word_list=None)
    first = load_codebook(config)
    (meta,) = (tmp_path / "codebooks").glob("*.json")
    meta.write_text("{this is not json")
    with pytest.warns(UserWarning, match="rebuilding the damaged codebook cache"):
        again = load_codebook(config)
    assert again.words == first.words and torch.equal(again.embeddings, first.embeddings)
    assert json.loads(meta.read_text())["words"] == first.words  # the entry is whole again


# --- property-based: arbitrary input, only the documented error types ---------------------------

TINY = create_config("tiny").to_dict()
SECTIONS = sorted(k for k in TINY if k != "preset")
FIELD_KEYS = sorted(f"{section}.{name}" for section in SECTIONS for name in TINY[section])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["1,2,4", "none", "true", "1e3", "-0", "()", "1e999"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
keys = st.one_of(st.sampled_from(FIELD_KEYS), st.sampled_from(SECTIONS), st.text(max_size=20),
                 st.sampled_from(FIELD_KEYS).map(lambda k: k.replace("_", "", 1)))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(preset=st.sampled_from(list_presets()), overrides=st.dictionaries(keys, values, max_size=4))
def test_config_overrides_give_a_valid_config_or_config_error(preset, overrides):
    try:
        cfg = create_config(preset, overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert config_from_dict(json.loads(cfg.to_json())) == cfg


@FAST
@given(st.one_of(values, st.dictionaries(st.sampled_from(SECTIONS + ["preset"]), values, max_size=4)))
def test_config_from_dict_gives_a_valid_config_or_config_error(data):
    try:
        config_from_dict(data)
    except ConfigError:
        pass


@FAST
@given(st.lists(st.text(max_size=30), max_size=4))
def test_set_pairs_parse_or_config_error(pairs):
    try:
        overrides = parse_sets(pairs)
    except ConfigError:
        return
    assert all(isinstance(k, str) and k for k in overrides)
    try:
        create_config("tiny", overrides)
    except ConfigError:
        pass


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_yaml_config_files_parse_or_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("yaml") / "exp.yaml"
    path.write_bytes(data)
    try:
        assert isinstance(read_yaml_mapping(str(path)), dict)
    except ConfigError:
        pass


VALID_IMAGES = [to_bytes(noise(10, 7)), to_bytes(noise(9, 9), "JPEG"), animated_gif(),
                to_bytes(sixteen_bit(999)), to_bytes(palette_with_transparency(), transparency=0),
                to_bytes(noise(6, 6), "BMP"), to_bytes(noise(5, 8), "TIFF"),
                to_bytes(noise(8, 5), "WEBP"), exif_rotated()]


@st.composite
def damaged_images(draw) -> bytes:
    """A valid image file cut short and/or with a few bytes overwritten."""
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | damaged_images(), size=st.integers(1, 24))
def test_load_image_gives_an_image_or_data_error(data, size):
    try:
        image = load_image(data, size)
    except DataError as e:
        assert "cannot read image <in-memory image>" in str(e)
        return
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


@FAST
@given(st.text(alphabet=st.sampled_from("ab./\\:C_ ."), max_size=20) | st.text(max_size=20))
def test_archive_member_names_never_leave_the_root(name):
    safe = _safe_member_name(name)
    if safe is not None:
        parts = safe.split("/")
        assert not safe.startswith("/") and ".." not in parts and "" not in parts
