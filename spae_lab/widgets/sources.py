"""Images for the apps: a tokenizer's held-out data, or a file (an upload or a path) fitted to its
size with a note that says what was done to it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from spae_lab.errors import SpaeError

# A file larger than this on either side is refused before it is decoded (a phone photo is about
# 4,000 px; a crafted PNG can claim far more than memory holds).
MAX_SIDE = 10_000
MAX_FILE_BYTES = 50 * 2**20


class ImageSourceError(SpaeError, ValueError):
    """An image the apps cannot take: unreadable, too large, not an image."""


def heldout_dataset(model):
    """The tokenizer's held-out data (the split of its training data it never saw; the shipped
    CIFAR-10 sample where the training archive is not on this machine)."""
    from spae_lab.generate.queries import default_dataset

    return default_dataset(model)


def heldout_images(model, count: int = 12, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """`count` held-out images spread evenly over the split (folder and digit splits are sorted
    by class, so the first N would all be one class), with a caption each: (B, 3, S, S), names."""
    data = heldout_dataset(model)
    count = max(1, min(count, len(data)))
    offset = seed % max(1, len(data) // count)
    indices = [offset + int(i * len(data) / count) for i in range(count)]
    items = [data[i] for i in indices]
    classes = getattr(data, "classes", None)
    captions = []
    for i, item in zip(indices, items, strict=True):
        label = item.get("label")
        name = classes[int(label)] if classes is not None and label is not None else item.get("caption", "")
        captions.append(f"held-out #{i}: {name}")
    return torch.stack([item["image"] for item in items]), captions


def read_image(source: bytes | str | os.PathLike, image_size: int, name: str | None = None
               ) -> tuple[torch.Tensor, str]:
    """An image file (its bytes or a path) as (3, S, S) in [0, 1] for a tokenizer of `image_size`,
    and a note saying what was done: centre-cropped to a square and resized."""
    from PIL import Image

    from spae_lab.data import DataError, load_image

    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ImageSourceError(f"no image file at {path}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageSourceError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MB")
        data, name = path.read_bytes(), name or path.name
    else:
        data, name = bytes(source), name or "upload"
        if len(data) > MAX_FILE_BYTES:
            raise ImageSourceError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception as e:  # PIL raises many kinds on files that are not images
        raise ImageSourceError(f"{name} is not an image PIL can read ({type(e).__name__})") from None
    if max(width, height) > MAX_SIDE or min(width, height) < 1:
        raise ImageSourceError(f"{name} is {width}x{height} px; the apps take images up to {MAX_SIDE} px a side")
    try:
        image = load_image(data, image_size, name=name)
    except DataError as e:
        raise ImageSourceError(str(e)) from None
    side = min(width, height)
    steps = []
    if width != height:
        steps.append(f"centre-cropped to {side}x{side}")
    if side != image_size:
        steps.append(f"{'shrunk' if side > image_size else 'enlarged'} to {image_size}x{image_size} px "
                     "(the tokenizer's size)")
    done = ", ".join(steps) if steps else "used as it is"
    return image, f"{name}: {width}x{height} px, {done}"
