"""The `spae-lab` console script, run as a user would: a real process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("spae-lab")


def run(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run("train", "--preset", "tiny", "--steps", "8", "--out", str(out), "--quiet",
               "--set", "train.num_threads=1")
    assert "held-out PSNR per depth after 8 steps" in proc.stdout
    return out


def test_presets():
    out = run("presets").stdout
    for name in ("tiny", "small", "paper"):
        assert name in out
    assert "(1, 2, 4, 8, 16, 16)" in out


def test_encode_prints_words_layer_by_layer_and_decode_reads_them(run_dir, tmp_path):
    out = run("encode", str(run_dir), "--count", "2").stdout
    assert out.count("layer 1 (1x1): ") == 2 and "layer 5 (8x8): " in out
    text = run("encode", str(run_dir), "--layers", "2", "--text").stdout.splitlines()[1]
    assert len(text.split()) == 5
    png = tmp_path / "x.png"
    assert "decoded 2 layers" in run("decode", str(run_dir), text, "--out", str(png)).stdout
    assert png.stat().st_size > 0


def test_encode_an_image_file(run_dir, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    out = run("encode", str(run_dir), str(tmp_path / "red.png")).stdout
    assert "red.png" in out and "layer 3 (4x4): " in out


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = run("train", "--preset", "tiny", "--set", "train.stpes=3", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "train.steps" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--preset", "tiny", "--dataset", str(tmp_path / "nope"), "--out",
               str(tmp_path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run("encode", str(tmp_path / "missing-run"), check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr
    proc = run("--debug", "encode", str(tmp_path / "missing-run"), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_codebook_reports_sizes():
    out = run("codebook", "--max-size", "100", "--show", "5").stdout
    assert "49152 tokens in the vocabulary" in out and "100 kept" in out
