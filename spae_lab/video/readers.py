"""Reading and writing clips: GIFs, MP4s (and other video containers) and folders of frames.

- Video containers (.mp4, .webm, .mkv, .mov, .avi, .m4v) are decoded by PyAV (FFmpeg's libraries,
  shipped in the `av` wheel).
- GIFs are decoded by Pillow, as the image readers decode images (`spae_lab.data.images`): its GIF
  plugin composes each frame over the previous ones, and transparency becomes white.
- A folder of frames is read in name order, each frame as the image readers read one image.

Every clip becomes a float tensor (3, T, S, S) in [0, 1]: T frames evenly spaced over the whole
file (a shorter file repeats frames), each centre-cropped to a square and resized to S. Bad input is
a `ClipError` (a `DataError`) in one line that names the file: unreadable or corrupt, empty, over
MAX_CLIP_BYTES, more than MAX_CLIP_FRAMES frames, or frames over MAX_FRAME_SIDE pixels a side.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch.utils.data import Dataset

from spae_lab.data.images import IMAGE_EXTENSIONS, DataError, _resize_square, check_image_size, decode_image, to_rgb
from spae_lab.data.splits import _check_index, _class_seed, _normalise_split, _split_positions
from spae_lab.io import NotRegularFileError, atomic_open, atomic_write_bytes, open_regular_file
from spae_lab.video.data import clip_tensor

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v"})
CLIP_EXTENSIONS = VIDEO_EXTENSIONS | {".gif"}
# Caps, as the image readers cap archive members (64 MiB an image): a clip file is read whole.
MAX_CLIP_BYTES = 256 * 2**20
MAX_CLIP_FRAMES = 4096  # frames decoded from one file or folder
MAX_FRAME_SIDE = 8192  # px, width or height of one frame


class ClipError(DataError):
    """A clip that cannot be read: corrupt, empty, too large, too many frames, wrong shape."""


def _label(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    return str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory clip>"


def _read_bytes(source: Any, label: str) -> bytes:
    """The bytes of a clip file (path or bytes), refused past MAX_CLIP_BYTES."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:  # only a regular file: a FIFO named x.gif would wait forever for a writer
        with open_regular_file(source) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CLIP_BYTES:
                raise ClipError(f"cannot read clip {label}: {size / 2**20:,.1f} MiB is over the "
                                f"{MAX_CLIP_BYTES // 2**20} MiB limit per clip")
            data = f.read(MAX_CLIP_BYTES + 1)
    if len(data) > MAX_CLIP_BYTES:
        raise ClipError(f"cannot read clip {label}: over the {MAX_CLIP_BYTES // 2**20} MiB limit per clip")
    if not data:
        raise ClipError(f"cannot read clip {label}: empty file")
    return data


def _check_frame(width: int, height: int, label: str) -> None:
    """The image readers' bounds on one frame (`check_image_size`), then the clip's own side cap."""
    try:
        check_image_size(width, height)
    except DataError as e:
        raise ClipError(f"cannot read clip {label}: frames of {e}") from None
    if max(width, height) > MAX_FRAME_SIDE:
        raise ClipError(f"cannot read clip {label}: frames of {width}x{height} px are over the "
                        f"{MAX_FRAME_SIDE} px limit a side")


def _too_many(label: str) -> ClipError:
    return ClipError(f"cannot read clip {label}: more than {MAX_CLIP_FRAMES} frames (the limit per clip)")


def _gif_frames(data: bytes, image_size: int, label: str) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        if img.format != "GIF":
            raise ClipError(f"cannot read clip {label}: not a GIF (a {img.format} image)")
        _check_frame(*img.size, label)
        frames = []
        for frame in ImageSequence.Iterator(img):
            if len(frames) == MAX_CLIP_FRAMES:
                raise _too_many(label)
            frames.append(np.asarray(_resize_square(to_rgb(frame.copy()), image_size), np.uint8))
        return frames


def _video_frames(data: bytes, image_size: int, label: str) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ClipError(f"cannot read clip {label}: no video stream")
        stream = container.streams.video[0]
        _check_frame(stream.codec_context.width, stream.codec_context.height, label)
        for frame in container.decode(stream):
            if len(frames) == MAX_CLIP_FRAMES:
                raise _too_many(label)
            _check_frame(frame.width, frame.height, label)
            frames.append(np.asarray(_resize_square(frame.to_image(), image_size), np.uint8))
    return frames


def _folder_frames(folder: Path, image_size: int, label: str) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if len(files) > MAX_CLIP_FRAMES:
        raise _too_many(label)
    try:
        return [decode_image(p, image_size)[0] for p in files]
    except DataError as e:
        raise ClipError(f"cannot read clip {label}: {e}") from e


def _reason(error: Exception) -> str:
    """One short line of why PIL or FFmpeg refused a file (no object reprs, no errno)."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not a recognised GIF"
    text = re.sub(r"\[Errno -?\d+\]\s*|: '<none>'", "", " ".join(str(error).split()))
    return text or type(error).__name__


def even_indices(available: int, frames: int) -> list[int]:
    """`frames` indices evenly spaced over `available` frames, first and last included."""
    return np.rint(np.linspace(0, available - 1, frames)).astype(int).tolist()


def load_clip(source: Any, image_size: int = 32, frames: int = 8, *, name: str | None = None) -> torch.Tensor:
    """A clip file (path or bytes: GIF or a video container) or a folder of frames -> float32
    (3, frames, S, S) in [0, 1], the frames evenly spaced over the whole clip."""
    label = _label(source, name)
    is_path = isinstance(source, (str, os.PathLike))
    try:
        if is_path and Path(source).is_dir():
            decoded = _folder_frames(Path(source), image_size, label)
        else:
            data = _read_bytes(source, label)
            suffix = Path(source).suffix.lower() if is_path else ""
            gif = suffix == ".gif" or (not suffix and data[:6] in (b"GIF87a", b"GIF89a"))
            decoded = (_gif_frames if gif else _video_frames)(data, image_size, label)
    except ClipError:
        raise
    except FileNotFoundError:
        raise ClipError(f"cannot read clip {label}: no such file or folder") from None
    except NotRegularFileError:
        raise ClipError(f"cannot read clip {label}: not a regular file (files and folders of frames are read)"
                        ) from None
    except Exception as e:  # PIL and FFmpeg raise many types on malformed input
        raise ClipError(f"cannot read clip {label}: not a readable GIF or video ({_reason(e)})") from e
    if not decoded:
        raise ClipError(f"cannot read clip {label}: no frames")
    return clip_tensor(np.stack([decoded[i] for i in even_indices(len(decoded), frames)]))


def gif_bytes(clip: torch.Tensor, scale: int = 1, fps: float = 8.0) -> bytes:
    """(3, T, H, W) in [0, 1] -> an animated GIF, looping, each frame enlarged `scale` times (nearest)."""
    array = (clip.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3)
    if scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(frame) for frame in array]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


# The container each video suffix names, for PyAV (H.264 inside, VP9 in WebM).
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}


def save_clip(clip: torch.Tensor, path: str | os.PathLike, fps: int = 8, scale: int = 1, *,
              within: str | os.PathLike | None = None) -> Path:
    """(3, T, S, S) in [0, 1] -> an animated GIF (Pillow) or a video file (PyAV), by suffix, written
    atomically (inside `within` when given: `spae_lab.io`); `scale` enlarges each frame (nearest).
    Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        atomic_write_bytes(path, gif_bytes(clip, scale, fps), within=within)
        return path
    if suffix not in _CONTAINERS:
        raise ClipError(f"cannot write {path}: use a .gif or .mp4 file name")
    import av

    array = (clip.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 3, 0).cpu().numpy()  # (T, S, S, 3)
    if scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    with atomic_open(path, "wb", within=within) as f, av.open(f, "w", format=_CONTAINERS[suffix]) as container:
        stream = container.add_stream("libvpx-vp9" if suffix == ".webm" else "libx264", rate=fps,
                                      options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = array.shape[2], array.shape[1], "yuv420p"
        for frame in array:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def is_clip_path(path: str | os.PathLike) -> bool:
    """A GIF, a video file, or a folder holding image files (a folder of frames)."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
    return path.suffix.lower() in CLIP_EXTENSIONS


class ClipFolderDataset(Dataset):
    """Clips in ImageFolder layout: root/<class>/<clip>, where a clip is a GIF, a video file or a
    folder of frames. Split per class by `seed` as image folders are ("train", "heldout" or "all",
    `heldout_fraction` held out); every clip is decoded once at construction, unreadable ones are
    dropped with one warning. Items: {"video": (3, T, S, S), "label", "caption", "path"}."""

    def __init__(self, root: str | os.PathLike, image_size: int = 32, frames: int = 8, split: str = "all",
                 heldout_fraction: float = 0.2, seed: int = 0):
        self.root = Path(root).expanduser()
        self.image_size, self.frames, self.seed = int(image_size), int(frames), int(seed)
        self.split = _normalise_split(split, allow_all=True)
        if not self.root.is_dir():
            raise ClipError(f"clip folder not found: {self.root}")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        entries = [(c, p) for c in classes for p in sorted((self.root / c).iterdir())
                   if not p.name.startswith(".") and is_clip_path(p)]
        if not entries:
            raise ClipError(f"no clips found in {self.root} (expected root/<class>/<clip>: "
                            f"{', '.join(sorted(CLIP_EXTENSIONS))} files or folders of frames)")
        self.classes = sorted({c for c, _ in entries})
        chosen = []
        for name in self.classes:
            members = [p for c, p in entries if c == name]
            positions = _split_positions(len(members), self.split, heldout_fraction, _class_seed(seed, name))
            chosen += [(name, members[i]) for i in positions]
        clips, self.paths, labels, self.skipped = [], [], [], []
        for name, path in chosen:
            try:
                clips.append(load_clip(path, self.image_size, self.frames))
            except ClipError as e:
                self.skipped.append((str(path), str(e)))
                continue
            self.paths.append(str(path))
            labels.append(self.classes.index(name))
        if not clips:
            raise ClipError(f"no readable clip in split {self.split!r} of {self.root}"
                            + (f" (first failure: {self.skipped[0][1]})" if self.skipped else ""))
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} unreadable clip(s) (first: {self.skipped[0][1]})",
                          stacklevel=2)
        self._clips = torch.stack(clips)
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self))
        label = int(self.labels[i])
        return {"video": self._clips[i], "label": label, "caption": f"a video of {self.classes[label]}",
                "path": self.paths[i]}
