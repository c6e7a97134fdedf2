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


# --- a full or read-only disk: one line and status 2 (issue 14) ------------------------------------


def _notebook_folder(root: Path) -> Path:
    import nbformat

    books = root / "books"
    books.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("seed: int = 0  # s", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, books / "one.ipynb")
    return books


def _writing_commands(root: Path, out: Path) -> dict[str, list[str]]:
    """One command of each kind that writes: its output goes under `out`."""
    from spae_lab.checkpoint import load_tokenizer

    word = load_tokenizer("scenes").codebook.words[0]
    return {"train": ["train", "--preset", "tiny", "--steps", "2", "--quiet", "--set", "train.num_threads=1",
                      "--out", str(out / "run")],
            "decode": ["decode", "scenes", word, "--out", str(out / "decoded.png")],
            "report": ["report", "--notebooks-dir", str(_notebook_folder(root)), "--out", str(out / "reports")]}


def _one_error_line(proc, command: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spae-lab {command}: error: "), proc.stderr
    return lines[0]


@pytest.mark.slow  # three console-script runs, one a training
@pytest.mark.parametrize("command", ["train", "decode", "report"])
def test_a_full_disk_is_one_line_with_status_2(tmp_path, command):
    """RLIMIT_FSIZE makes every write past 64 bytes fail (EFBIG, as ENOSPC would on a full disk;
    Python ignores SIGXFSZ), for real, in a real process, also when the tests run as root."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    argv = _writing_commands(tmp_path, tmp_path / "out")[command]
    proc = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=small_files)
    line = _one_error_line(proc, command)
    assert "File too large" in line or "FileTooLarge" in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes: chmod cannot make a folder read-only")
@pytest.mark.parametrize("command", ["train", "decode", "report"])
def test_a_read_only_folder_is_one_line_with_status_2(tmp_path, command):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    argv = _writing_commands(tmp_path, read_only)[command]
    read_only.chmod(0o555)
    try:
        proc = run(*argv, check=False)
    finally:
        read_only.chmod(0o755)
    assert "Permission denied" in _one_error_line(proc, command)
    assert list(read_only.iterdir()) == []
