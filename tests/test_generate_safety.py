"""`generate` on hostile inputs and folders (issue 23): a link planted in OUT is never followed,
colliding and overlong names keep one output each, outputs never pass their size limit, OUT is
owned (locked, resumed, refused or replaced with force), FIFOs and duplicate archive members
are skipped, and `class` says what its accuracy means."""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_bad_input import noise, png_header_only, to_bytes, write_tar

from spae_lab.cli.main import main
from spae_lab.data import DataError, ImageFolderDataset
from spae_lab.generate import run_generation
from spae_lab.generate.outputs import (
    MAX_OUTPUT_SIDE,
    MAX_STEM_BYTES,
    GenerationFolder,
    GenerationFolderError,
    output_names,
    output_size,
)
from spae_lab.io import FolderLock

PRECIOUS = b"a file outside OUT"


# --- names and sizes -------------------------------------------------------------------------------


def test_colliding_names_each_keep_their_own_output():
    """a.png, a.jpg and a_1.png: three names (the old scheme gave a_0, a_1, a_1)."""
    assert output_names(["a", "a", "a_1"]) == ["a", "a_2", "a_1"]
    assert output_names(["a", "a", "a_2"]) == ["a", "a_3", "a_2"]
    assert output_names(["A", "a"]) == ["A", "a_2"]  # one name on macOS and Windows
    assert output_names(["a", "a", "a_2", "a_2"]) == ["a", "a_3", "a_2", "a_2_2"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                        min_size=1, max_size=300), max_size=12))
def test_output_names_are_distinct_and_short_enough(stems):
    names = output_names(stems)
    assert len(names) == len(stems)
    assert len({n.casefold() for n in names}) == len(names)
    assert all(len(f"{n}_corrupted.png".encode()) <= 255 for n in names)


def test_an_overlong_name_is_cut_with_a_hash_of_the_whole():
    long_a, long_b = "x" * 240 + "a", "x" * 240 + "b"
    names = output_names([long_a, long_b])
    assert names[0] != names[1] and all(len(n.encode()) <= MAX_STEM_BYTES for n in names)
    assert output_names(["é" * 150])[0].encode().decode()  # cut on a character boundary


def test_outputs_are_held_to_the_stated_size():
    assert output_size(12000, 12000) == (MAX_OUTPUT_SIDE, MAX_OUTPUT_SIDE)
    assert output_size(1500, 1200) == (1024, 819) and output_size(24, 20) == (24, 20)
    assert output_size(1, 170_000_000) == (1, MAX_OUTPUT_SIDE)


# --- inputs that hang or crash -----------------------------------------------------------------------


def test_a_fifo_among_the_images_is_left_out_instead_of_hanging(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.png").write_bytes(to_bytes(noise()))
    os.mkfifo(folder / "pipe.png")
    with pytest.warns(UserWarning, match="not regular files"):
        data = ImageFolderDataset(folder, 16)
    assert [Path(p).name for p in data.paths] == ["ok.png"]
    os.mkfifo(tmp_path / "archive.tar")
    with pytest.raises(DataError, match="neither a folder nor a regular file"):
        ImageFolderDataset(tmp_path / "archive.tar", 16)


@pytest.mark.parametrize("first", [b"junk", png_header_only(20000, 20000)], ids=["junk", "bomb"])
def test_two_archive_members_of_one_name_read_as_the_last(tmp_path, first):
    """What extracting the archive leaves: the later member. The earlier one (junk, or a 20000^2
    bomb) is never probed outside the reader's guards."""
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as tar:
        for data in (first, to_bytes(noise(30, 20))):
            info = tarfile.TarInfo("cls/img.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = ImageFolderDataset(archive, 16)
    assert len(data) == 1 and (data[0]["width"], data[0]["height"]) == (30, 20)


@pytest.mark.parametrize(("size", "reason"), [((1, 4000), "aspect ratio"), ((17000, 2), "side over"),
                                              ((9000, 9000), "over the limit of")])
def test_images_past_the_bounds_are_refused_on_their_header(tmp_path, size, reason):
    archive = write_tar(tmp_path / "a.tar.gz", {"c/big.png": png_header_only(*size),
                                                "c/ok.png": to_bytes(noise())})
    with pytest.warns(UserWarning, match=reason):
        data = ImageFolderDataset(archive, 16)
    assert [Path(p).name for p in data.paths] == ["ok.png"]


# --- generate end to end ------------------------------------------------------------------------------


def _generate(tokenizer_run, tiny_llama, folder, out, *extra) -> int:
    return main(["generate", "inpaint", "--tokenizer", str(tokenizer_run), "--input", str(folder),
                 "--out", str(out), "--backend", f"hf:{tiny_llama}", "--examples", "1",
                 "--layers", "2", "--quiet", *extra])


@pytest.fixture()
def hostile_folder(tmp_path):
    """a.png, a.jpg, a_1.png (names that collide once made unique), a 245-character name, a photo
    bigger than the output limit and a FIFO named like an image; context images in context/."""
    folder, context = tmp_path / "in", tmp_path / "context"
    folder.mkdir()
    context.mkdir()
    for path in (folder / "a.png", folder / "a.jpg", folder / "a_1.png", folder / ("n" * 241 + ".png"),
                 context / "c1.png", context / "c2.png"):
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(path)
    Image.new("RGB", (1500, 1200), (200, 30, 30)).save(folder / "big.png")
    os.mkfifo(folder / "pipe.png")
    return folder


def _error_lines(capsys, command: str = "generate") -> list[str]:
    """The error lines of a command (Hugging Face's loading bars aside)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"spae-lab {command}:")]


def _plant(out: Path, precious: Path) -> None:
    for name in ("images/a_generated.png", "results.csv", "llm_cache.sqlite-wal"):
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(precious)


def test_generate_keeps_every_output_never_follows_a_link_and_bounds_sizes(
        tiny_tokenizer_run, tiny_llama, hostile_folder, tmp_path, capsys):
    out, precious = tmp_path / "out", tmp_path / "precious.png"
    precious.write_bytes(PRECIOUS)
    (out / "images").mkdir(parents=True)
    _plant(out, precious)  # in an OUT no run wrote: refused, nothing followed
    args = ("--images", "0", "--context", str(hostile_folder.parent / "context"))
    with pytest.warns(UserWarning, match="not regular files"):
        assert _generate(tiny_tokenizer_run, tiny_llama, hostile_folder, out, *args) == 2
    assert "holds files this generation did not write" in _error_lines(capsys)[0]
    with pytest.warns(UserWarning, match="not regular files"):  # force: the links are replaced
        result = run_generation("inpaint", str(tiny_tokenizer_run), input=str(hostile_folder), out=out,
                                context=str(hostile_folder.parent / "context"), backend=f"hf:{tiny_llama}",
                                examples=1, layers=2, images=0, progress=False, force=True)
    assert precious.read_bytes() == PRECIOUS and len(result.names) == 5
    _plant(out, precious)  # in the run's own OUT: the same run resumes and replaces them
    with pytest.warns(UserWarning, match="not regular files"):
        assert _generate(tiny_tokenizer_run, tiny_llama, hostile_folder, out, *args) == 0
    assert precious.read_bytes() == PRECIOUS
    assert not any(p.is_symlink() for p in [*out.iterdir(), *(out / "images").iterdir()])
    rows = (out / "results.csv").read_text().splitlines()[1:]
    names = [row.split(",")[0] for row in rows]
    assert sorted(names)[:3] == ["a", "a_1", "a_2"] and len(set(names)) == 5
    pngs = sorted(p.name for p in (out / "images").iterdir())
    assert len(pngs) == 2 * len(names) and not any(p.is_symlink() for p in (out / "images").iterdir())
    assert all(len(p.encode()) <= 255 for p in pngs)
    assert Image.open(out / "images" / "big_generated.png").size == (1024, 819)
    assert Image.open(out / "images" / "a_2_corrupted.png").size == (24, 20)
    assert "images, results.csv" in capsys.readouterr().out


def test_generate_owns_out_as_training_does(tiny_tokenizer_run, tiny_llama, hostile_folder, tmp_path, capsys):
    out = tmp_path / "out"
    folder = tmp_path / "few"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (folder / name).write_bytes((hostile_folder / "a_1.png").read_bytes())
    assert _generate(tiny_tokenizer_run, tiny_llama, folder, out, "--images", "3") == 0
    first = sorted(p.name for p in (out / "images").iterdir())
    # the same run again: resumed from the cache, nothing asked again
    assert _generate(tiny_tokenizer_run, tiny_llama, folder, out, "--images", "3") == 0
    assert json.loads((out / "config.json").read_text())["calls_computed"] == 0
    # fewer images, or another task: refused, nothing touched
    assert _generate(tiny_tokenizer_run, tiny_llama, folder, out, "--images", "2") == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "holds another run (" in err[0] and "--force" in err[0]
    assert "config.images 3, not 2" in err[0] and "outputs: 6 images, not 4" in err[0]
    assert sorted(p.name for p in (out / "images").iterdir()) == first
    # a second process writing OUT: refused at once
    lock = FolderLock(out)
    lock.acquire()
    try:
        assert _generate(tiny_tokenizer_run, tiny_llama, folder, out, "--images", "3") == 2
        assert "being written by another process" in _error_lines(capsys)[0]
    finally:
        lock.release()
    # force replaces the run: the old images go, a file of the user's stays
    (out / "images" / "mine.txt").write_text("keep")
    (out / "notes.md").write_text("keep")
    result = run_generation("inpaint", str(tiny_tokenizer_run), input=str(folder), out=out,
                            backend=f"hf:{tiny_llama}", examples=1, layers=2, images=2,
                            progress=False, force=True)
    left = sorted(p.name for p in (out / "images").iterdir())
    assert left == sorted(["mine.txt", *(f"{n}_{k}.png" for n in result.names for k in ("corrupted", "generated"))])
    assert (out / "notes.md").read_text() == "keep" and len(result.records) == 2


def test_out_that_is_a_file_is_one_line(tiny_tokenizer_run, tiny_llama, hostile_folder, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert _generate(tiny_tokenizer_run, tiny_llama, hostile_folder, tmp_path / "out") == 2
    assert _error_lines(capsys) == [f"spae-lab generate: error: --out {tmp_path / 'out'} is a file, not a folder"]


def test_class_refuses_images_that_are_not_digits(tiny_tokenizer_run, tiny_llama, tmp_path, capsys):
    folder = tmp_path / "animals"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        (folder / name / "x.png").write_bytes(to_bytes(noise()))
    assert main(["generate", "class", "--tokenizer", str(tiny_tokenizer_run), "--input", str(folder),
                 "--out", str(tmp_path / "out"), "--backend", f"hf:{tiny_llama}", "--quiet"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "other classes (cat, dog)" in err[0] and "digit classifier" in err[0]


def test_the_digit_verdict_says_chance_and_the_judge():
    from spae_lab.generate.run import digit_verdict

    summary = {"images": 50, "accuracy": 0.54, "chance": 0.1, "classifier_real_heldout": 0.98,
               "classifier_reconstructed_heldout": 0.95}
    assert "(95% interval 40-67%), above chance (10%)" in digit_verdict(summary)
    weak = digit_verdict({**summary, "accuracy": 0.12, "classifier_reconstructed_heldout": 0.3})
    assert "not distinguishable from chance" in weak and "too few for this accuracy to mean much" in weak


# --- the bar: a 1 x 170M-pixel PNG ends in one line within 3 GB of address space -----------------------


def write_tall_png(path: Path, height: int) -> None:
    """A real, valid 1 x `height` grey PNG (about 2 KB per million rows), written in chunks."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, parts = zlib.compressobj(9), []
    rows = b"\x00\x80" * 1_000_000  # filter byte 0, one grey pixel
    for start in range(0, height, 1_000_000):
        parts.append(compressor.compress(rows[:2 * min(1_000_000, height - start)]))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", 1, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


@pytest.mark.slow
def test_a_1_by_170m_pixel_png_ends_in_one_line_within_3_gb(tiny_tokenizer_run, tiny_llama, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_tall_png(folder / "tall.png", 170_000_000)
    assert Image.open(folder / "tall.png").size == (1, 170_000_000)
    script = Path(sys.executable).with_name("spae-lab")
    proc = subprocess.run([str(script), "generate", "inpaint", "--tokenizer", str(tiny_tokenizer_run),
                           "--input", str(folder), "--out", str(tmp_path / "out"),
                           "--backend", f"hf:{tiny_llama}", "--quiet"],
                          capture_output=True, text=True, timeout=600, preexec_fn=_limit_address_space,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stderr.splitlines() if "Warning" not in line and line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("spae-lab generate: error: no readable image") and "1 x 170000000 pixels" in lines[-1]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr


def test_a_run_of_an_older_version_is_refused_and_force_removes_its_images(tmp_path):
    """Folders written before --out was owned: config.json without an identity, results.csv naming
    the images. Refused without force; force removes the images its rows name, nothing else."""
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"task": "inpaint", "config": {}}))
    (out / "results.csv").write_text("image,task\nold1,inpaint\nold2,inpaint\n")
    for name in ("old1_corrupted.png", "old1_generated.png", "old2_generated.png", "mine.png"):
        (out / "images" / name).write_bytes(b"png")
    folder = GenerationFolder(out)
    with pytest.raises(GenerationFolderError, match="an older spae-lab"):
        folder.claim({"task": "class"}, ["000_class_0.png"])
    assert not (out / ".lock").exists()  # the refusal let go of the folder
    folder.claim({"task": "class"}, ["000_class_0.png"], force=True)
    folder.release()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["mine.png"]
    assert json.loads((out / "config.json").read_text())["identity"]["task"] == "class"
