"""Moving scenes and digits (exact ground truth) and the clip readers (GIF, MP4, frame folders)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import spae_lab
from spae_lab.data import COLORS, SHAPES
from spae_lab.video import readers
from spae_lab.video.data import DIRECTIONS, MovingDigits, MovingScenes, render_moving_scene
from spae_lab.video.readers import ClipError, ClipFolderDataset, load_clip, save_clip


def test_moving_scenes_items_and_ground_truth():
    ds = spae_lab.MovingScenes(12, split="heldout", seed=3)
    item = ds[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert 0 <= item["video"].min() and item["video"].max() <= 1
    for i in range(len(ds)):
        scene = ds.scene(i)
        assert set(scene.directions) <= set(DIRECTIONS) and len(set(scene.directions)) == 1
        assert set(scene.colors) <= set(COLORS) and set(scene.shapes) <= set(SHAPES)
        assert 1 <= scene.count <= 3 and scene.direction in scene.caption
        assert ds[i]["label"] == DIRECTIONS.index(scene.direction)


def test_moving_scenes_move_the_way_the_caption_says():
    """The centre of mass of the object's pixels moves in the captioned direction."""
    for index in range(40):
        frames, scene = render_moving_scene(index, seed=1)
        background = np.array(COLORS[scene.background])
        mask = np.abs(frames.astype(int) - background).sum(-1) > 60  # (T, S, S) object pixels
        rows, cols = np.indices(mask.shape[1:])
        centre = [(rows[m].mean(), cols[m].mean()) for m in mask[[0, -1]]]
        d_row, d_col = centre[1][0] - centre[0][0], centre[1][1] - centre[0][1]
        expected = {"left": -d_col, "right": d_col, "up": -d_row, "down": d_row}[scene.direction]
        assert expected > 4, (scene.caption, d_row, d_col)  # at least 4 px along the motion


def test_splits_are_disjoint_and_deterministic():
    train, heldout = MovingScenes(20, "train", 0), MovingScenes(20, "heldout", 0)
    assert torch.equal(train[5]["video"], MovingScenes(20, "train", 0)[5]["video"])
    assert not any(torch.equal(train[i]["video"], heldout[i]["video"]) for i in range(20))
    assert not torch.equal(MovingScenes(3, "train", 1)[0]["video"], train[0]["video"])


def test_moving_digits():
    ds = MovingDigits(8, "heldout", 0, image_size=32, frames=8)
    item = ds[0]
    assert item["video"].shape == (3, 8, 32, 32) and "moving" in item["caption"]
    assert item["video"][:, 0].amax() > 0.5 and item["direction"] in DIRECTIONS


def test_bad_arguments():
    with pytest.raises(ValueError, match="frames"):
        MovingScenes(2, frames=1)
    with pytest.raises(spae_lab.DataError, match="split"):
        MovingScenes(2, split="validation-ish")


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_clip_files_round_trip(tmp_path, suffix):
    clip = MovingScenes(1, seed=2)[0]["video"]
    path = save_clip(clip, tmp_path / f"clip{suffix}")
    loaded = load_clip(path, 32, 8)
    assert loaded.shape == clip.shape
    assert (loaded - clip).abs().mean() < (0.002 if suffix == ".gif" else 0.02)
    assert load_clip(path.read_bytes(), 16, 4).shape == (3, 4, 16, 16)  # bytes, resized, resampled in time


def test_folder_of_frames_and_frame_sampling(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(3):  # three frames: red, green, blue
        Image.new("RGB", (40, 30), [(255, 0, 0), (0, 255, 0), (0, 0, 255)][t]).save(folder / f"{t:03d}.png")
    clip = load_clip(folder, 16, 5)  # 5 evenly spaced over 3: 0, 0 or 1, 1, 1 or 2, 2
    assert clip.shape == (3, 5, 16, 16)
    assert clip[0, 0].mean() > 0.99 and clip[2, -1].mean() > 0.99


def test_bad_clips_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 20)
    (tmp_path / "empty.gif").write_bytes(b"")
    (tmp_path / "cut.gif").write_bytes((save_clip(MovingScenes(1)[0]["video"], tmp_path / "ok.gif")).read_bytes()[:60])
    for name, reason in (("bad.mp4", "not a readable"), ("empty.gif", "empty file"), ("cut.gif", "not a readable"),
                         ("missing.gif", "no such file")):
        with pytest.raises(ClipError, match=reason) as info:
            load_clip(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    monkeypatch.setattr(readers, "MAX_CLIP_FRAMES", 4)
    with pytest.raises(ClipError, match="more than 4 frames"):
        load_clip(tmp_path / "ok.gif")
    monkeypatch.setattr(readers, "MAX_CLIP_BYTES", 100)
    with pytest.raises(ClipError, match="over the"):
        load_clip(tmp_path / "ok.gif")


def test_too_large_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FRAME_SIDE", 16)
    save_clip(torch.rand(3, 2, 32, 32), tmp_path / "big.gif")
    with pytest.raises(ClipError, match="16 px limit"):
        load_clip(tmp_path / "big.gif")


def test_clip_folder_dataset(tmp_path):
    scenes = MovingScenes(6, seed=4)
    for i in range(6):
        cls = scenes[i]["direction"]
        (tmp_path / cls).mkdir(exist_ok=True)
        save_clip(scenes[i]["video"], tmp_path / cls / f"{i}.gif")
    (tmp_path / "left").mkdir(exist_ok=True)
    (tmp_path / "left" / "broken.gif").write_bytes(b"GIF89a broken")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = ClipFolderDataset(tmp_path, 32, 8, split="all")
    assert len(ds) == 6 and ds[0]["video"].shape == (3, 8, 32, 32)
    assert ds.classes == sorted({scenes[i]["direction"] for i in range(6)} | {"left"})
    empty = tmp_path / "empty_root"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(ClipError, match="no clips found"):
        ClipFolderDataset(empty, 32, 8)


def test_a_fifo_is_refused_at_once_and_a_failed_write_keeps_the_old_file(tmp_path):
    fifo = tmp_path / "pipe.gif"
    os.mkfifo(fifo)
    with pytest.raises(ClipError, match="not a regular file"):
        load_clip(fifo)  # a blocking open would wait forever for a writer
    path = save_clip(torch.rand(3, 2, 8, 8), tmp_path / "kept.gif")
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_clip(torch.rand(5, 2, 8, 8), path)  # 5 channels: fails inside the write, the old file stays
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ClipError, match=".gif or .mp4"):
        save_clip(torch.rand(3, 2, 8, 8), tmp_path / "clip.txt")
