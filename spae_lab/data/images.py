"""Reading one image: any common file format and PIL mode -> a square float32 RGB tensor.

Images are decoded with PIL + numpy only (no torchvision). Every failure is a :class:`DataError`
that names the file, so datasets can skip it or report it in one line.

An image is bounded on the size its header states, before a pixel is decoded: each side
(`MAX_IMAGE_SIDE`), the pixel count (`MAX_IMAGE_PIXELS`) and the aspect ratio (`MAX_ASPECT_RATIO`).
A 330 KB PNG can state 1 x 170 M pixels: under PIL's own cap, and a center crop of it keeps one
pixel. Only regular files are opened (a FIFO named `x.png` would wait forever for a writer).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from spae_lab.errors import SpaeError
from spae_lab.io import open_regular_file


class DataError(SpaeError, ValueError):
    """A user-facing data problem: missing dataset, empty folder, unknown name or split."""


IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# Bounds on an input image, checked on its header (the tokenizers read 32-128 px; a camera's photo
# is about 6000 x 4000). Past them an image is refused like any unreadable file.
MAX_IMAGE_SIDE = 16384  # px, either side
MAX_IMAGE_PIXELS = 8192 * 8192  # 67 M pixels: 200 MB decoded as RGB
# longer side / shorter side: a 3 x 400 strip still reads (its centre square), a 1 x 16384 line not
MAX_ASPECT_RATIO = 256
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


def check_image_size(width: int, height: int) -> None:
    """DataError (the reason alone) for an image past the stated bounds (module docstring)."""
    if min(width, height) < 1:
        raise DataError(f"{width} x {height} pixels: an empty image")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise DataError(f"{width} x {height} pixels: a side over the {MAX_IMAGE_SIDE} px limit")
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{width} x {height} pixels: over the limit of {MAX_IMAGE_PIXELS:,} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DataError(f"{width} x {height} pixels: an aspect ratio over {MAX_ASPECT_RATIO}:1")


def _open_source(path_or_bytes: Any):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(path_or_bytes))
    if isinstance(path_or_bytes, (str, os.PathLike)):
        return open_regular_file(path_or_bytes)
    return contextlib.nullcontext(path_or_bytes)  # the caller's file object: it closes it


def decode_image(path_or_bytes: Any, image_size: int, name: str | None = None
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode, center-crop and resize one image -> (uint8 array (S, S, 3), its (width, height) as
    shown, after EXIF rotation).

    Raises DataError naming the file when it cannot be read or decoded, or is past the bounds.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    label = _source_name(path_or_bytes, name)
    try:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(_open_source(path_or_bytes))
            with warnings.catch_warnings():  # the bounds below are stricter than PIL's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = stack.enter_context(Image.open(source))
            check_image_size(*img.size)
            width, height = img.size
            # Let the JPEG decoder downscale by 2/4/8 while decoding: large photos decode many
            # times faster. Ask for 2x the target so the final LANCZOS still anti-aliases.
            img.draft(None, (2 * image_size, 2 * image_size))
            img.load()  # force the full decode now, so truncated files fail here
            drafted = img.size
            img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
            shown = (height, width) if img.size == drafted[::-1] != drafted else (width, height)
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
    return array.reshape(image_size, image_size, 3), shown


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
    return _to_tensor(decode_image(path_or_bytes, image_size, name)[0])
