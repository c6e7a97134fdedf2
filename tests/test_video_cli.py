"""The clip paths of the command line (spae_lab.video.cli) and of the run folder: train a clip
preset, encode clip files, decode words to a GIF, MP4 or PNG strip, resume exactly, refuse bad clips
in one line. And the animated views the notebook shows (spae_lab.video.figures)."""

import pytest
import torch

from spae_lab.checkpoint import load_tokenizer, read_checkpoint
from spae_lab.cli.main import main
from spae_lab.video.config import create_clip_config
from spae_lab.video.data import MovingScenes
from spae_lab.video.figures import animation_html, clip_reconstruction_grid
from spae_lab.video.readers import load_clip, save_clip
from spae_lab.video.train import train_clips

TINY = ["--preset", "video-tiny", "--set", "semantic.enabled=false", "--set", "train.num_threads=1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_run")
    assert main(["train", *TINY, "--steps", "4", "--out", str(out), "--force"]) == 0
    return out


def test_train_encode_decode_a_clip_from_the_command_line(run, tmp_path, capsys):
    clip = MovingScenes(1, "heldout", 3, 16, 4)[0]["video"]
    gif = save_clip(clip, tmp_path / "clip.gif")
    capsys.readouterr()
    assert main(["encode", str(run), str(gif), "--text", "--layers", "2"]) == 0
    words = capsys.readouterr().out.splitlines()[1]
    assert len(words.split()) == 2
    model = load_tokenizer(run)
    assert words == model.encode(load_clip(gif, 16, 4)[None]).to_text(2)
    for suffix in (".gif", ".mp4", ".png"):
        assert main(["decode", str(run), words, "--out", str(tmp_path / f"out{suffix}")]) == 0
        assert (tmp_path / f"out{suffix}").stat().st_size > 0
    assert load_clip(tmp_path / "out.gif", 16, 4).shape == (3, 4, 16, 16)
    assert main(["encode", str(run), "--count", "2"]) == 0
    assert "layer 3 (1x2x2)" in capsys.readouterr().out


def test_bad_clip_files_and_outputs_are_one_line_errors(run, tmp_path, capsys):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    assert main(["encode", str(run), str(tmp_path / "bad.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spae-lab encode: error: cannot read clip") and "\n" not in err
    assert main(["decode", str(run), "a b", "--out", str(tmp_path / "x.jpg")]) == 2
    assert "gif" in capsys.readouterr().err


def test_a_clip_run_resumes_exactly(tmp_path):
    cfg = create_clip_config("video-tiny", {"semantic.enabled": False, "train.num_threads": 1, "train.steps": 4,
                                            "train.checkpoint_every": 2})
    train_clips(cfg, tmp_path / "straight", progress=False)
    short = create_clip_config("video-tiny", {"semantic.enabled": False, "train.num_threads": 1, "train.steps": 2})
    train_clips(short, tmp_path / "resumed", progress=False)
    train_clips(cfg, tmp_path / "resumed", resume=True, progress=False)
    straight, _ = read_checkpoint(tmp_path / "straight")
    resumed, _ = read_checkpoint(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_animations_are_gifs_inlined_in_the_page():
    """One looping GIF per clip, as a data URI (it plays in JupyterLab and in the HTML report), with
    every frame; the still grid has a row per depth."""
    import base64
    import io
    import re

    from PIL import Image

    clips = {"a <clip>": torch.rand(3, 4, 8, 8), "b": torch.zeros(3, 4, 8, 8)}
    page = animation_html(clips, scale=2, title="two clips")
    data = re.findall(r'src="data:image/gif;base64,([^"]+)"', page)
    assert len(data) == 2 and "a &lt;clip&gt;" in page and "two clips" in page
    with Image.open(io.BytesIO(base64.b64decode(data[0]))) as gif:
        assert gif.n_frames == 4 and gif.size == (16, 16) and gif.info.get("loop") == 0
    figure = clip_reconstruction_grid(torch.rand(3, 4, 8, 8), torch.rand(3, 3, 4, 8, 8), [1, 2, 10])
    assert figure is not None
