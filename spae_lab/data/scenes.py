"""Synthetic scenes of coloured shapes with exact captions, and their public vocabulary.

The vocabulary (:data:`SHAPES`, :data:`COLORS`, :data:`PLURALS`, :data:`NUMBER_WORDS`) is what
captions are made of; question answering and word-hit metrics read it from here rather than
spelling it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from spae_lab.data.images import _to_tensor
from spae_lab.data.splits import _check_index, _normalise_split

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
# The plural of each shape, as counting captions spell it ("three red crosses").
PLURALS: dict[str, str] = {
    shape: shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s") for shape in SHAPES
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

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
    return f"{NUMBER_WORDS[len(objects)]} {first['color']} {PLURALS[first['shape']]}"


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

    def images_and_captions(self, count: int | None = None) -> tuple[torch.Tensor, list[str]]:
        """The first `count` scenes (all by default) stacked: images (B, 3, S, S) in [0, 1] and their
        captions."""
        items = [self[i] for i in range(len(self) if count is None else min(count, len(self)))]
        return torch.stack([item["image"] for item in items]), [item["caption"] for item in items]
