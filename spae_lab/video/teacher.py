"""A clip teacher that knows motion: a small clip tower against the locked MiniLM text tower.

SPAE's semantic guidance needs `s(clip, word)` for every codebook word. No pretrained video-text
model can be had offline, so, as for still images (`spae_lab.teacher_train`), the project trains
one LiT-style: all-MiniLM-L6-v2 stays locked and a small 2D+1D CNN learns to match the exact
captions of moving scenes and moving digits ("a large red circle moving left", "the digit seven
moving up"). Each clip is paired with one of several texts (the caption, "a red circle", "red",
"circle", "moving left", "left") so that single words, what the codebook holds, land near the
clips they describe; the direction words only ever describe motion, so the tower must look at
time to place them. Health figures on held-out clips: zero-shot accuracy of direction ("moving
left" against "moving right", "up", "down"), colour, shape and digit.

`load_clip_teacher("lit-clip:builtin")` loads the shipped one (`assets/lit_clip_teacher.safetensors`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from spae_lab.data import COLORS, DIGIT_NAMES, SHAPES
from spae_lab.io import atomic_write_json
from spae_lab.losses import warmup_cosine
from spae_lab.teacher import LiTTeacher, MiniLMTextEncoder, TeacherError
from spae_lab.teacher.model import load_tower, save_tower
from spae_lab.video.data import DIRECTIONS, MovingDigits, MovingScenes

BUILTIN_CLIP_TEACHER = Path(__file__).parents[1] / "assets" / "lit_clip_teacher.safetensors"
_FORMAT = "spae_lab.lit_clip_teacher.v1"


class ClipTower(nn.Module):
    """(B, 3, T, S, S) in [0, 1] -> (B, embed_dim) unit vectors (other frame counts and sizes are
    resampled to the tower's own first). Two stride-2 stages per frame (S/4), reading the frame and
    its difference to the next one (a motion signal, as in two-stream video networks); two 3x3x3
    convolutions over (time, rows, columns), a stride-2 spatial one, the mean over time and space,
    a linear head."""

    def __init__(self, embed_dim: int = 384, width: int = 32, image_size: int = 32, frames: int = 8):
        super().__init__()
        self.image_size, self.frames = image_size, frames
        w = width
        self.frame_net = nn.Sequential(  # each frame and its difference to the next one (motion)
            nn.Conv2d(6, w, 3, padding=1, stride=2), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.GroupNorm(8, 2 * w), nn.SiLU())
        self.time_net = nn.Sequential(
            nn.Conv3d(2 * w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),
            nn.Conv3d(4 * w, 4 * w, (1, 3, 3), padding=(0, 1, 1), stride=(1, 2, 2)), nn.GroupNorm(8, 4 * w),
            nn.SiLU())
        self.head = nn.Linear(4 * w, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's temperature

    @property
    def width(self) -> int:
        return self.frame_net[0].out_channels

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.shape[2:] != (self.frames, self.image_size, self.image_size):  # its own frames and size
            clips = F.interpolate(clips, size=(self.frames, self.image_size, self.image_size), mode="trilinear",
                                  align_corners=False)
        B, _, T, S, _ = clips.shape
        motion = torch.cat([clips[:, :, 1:] - clips[:, :, :-1], clips.new_zeros(B, 3, 1, S, S)], dim=2)
        x = torch.cat([clips * 2 - 1, 4 * motion], dim=1)  # (B, 6, T, S, S)
        frames = self.frame_net(x.transpose(1, 2).reshape(B * T, 6, S, S))  # (B*T, C, S/4, S/4)
        x = frames.view(B, T, *frames.shape[1:]).transpose(1, 2)  # (B, C, T, S/4, S/4)
        return F.normalize(self.head(self.time_net(x).mean(dim=(2, 3, 4))), dim=-1)


class ClipTeacher(LiTTeacher):
    """Trained clip tower + locked MiniLM text tower. `embed_images` takes clips (B, 3, T, S, S)."""

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        t = self.tower
        meta = {"format": _FORMAT, "embed_dim": str(t.head.out_features), "width": str(t.width),
                "image_size": str(t.image_size), "frames": str(t.frames), "info": json.dumps(metadata or {})}
        save_tower(t, path, meta)

    @classmethod
    def load(cls, path: str | Path, text_encoder: MiniLMTextEncoder | None = None) -> ClipTeacher:
        tower, info, digest = load_tower(
            path, _FORMAT, "clip teacher checkpoint",
            lambda meta: ClipTower(int(meta["embed_dim"]), int(meta["width"]), int(meta["image_size"]),
                                   int(meta["frames"])))
        teacher = cls(tower, text_encoder, name=f"lit-clip-{digest}")
        teacher.info = info
        return teacher


def load_clip_teacher(spec: str = "lit-clip:builtin", device: str | torch.device = "cpu") -> ClipTeacher:
    """'lit-clip:builtin' (shipped) or 'lit-clip:PATH'."""
    kind, _, target = spec.partition(":")
    if kind != "lit-clip":
        raise TeacherError(f"unknown clip teacher {spec!r}: use 'lit-clip:builtin' or 'lit-clip:PATH'")
    path = BUILTIN_CLIP_TEACHER if target in ("", "builtin") else Path(target)
    return ClipTeacher.load(path).to(device)


# --- training -------------------------------------------------------------------------------------


@dataclass
class ClipTeacherConfig:
    image_size: int = 32  # px per frame
    frames: int = 8  # frames per clip
    width: int = 24  # channels of the first stage (x1, x2, x4)
    steps: int = 2000
    batch_size: int = 48  # clips a step
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    scenes: int = 20000  # moving scenes in the training mix
    digits: int = 10000  # moving digits in the training mix (0: none)
    digits_weight: float = 0.35  # share of a batch drawn from the digits
    # codebook words (read through each negative template) added to every step's texts as negatives:
    # the teacher ranks the whole codebook when it guides, so it must learn that "down", and not
    # "descend" or "drop", is the word for a clip moving down (docs/video.md measures the difference)
    codebook_negatives: int = 256
    negative_templates: tuple[str, ...] = ("{}", "moving {}")
    eval_clips: int = 512  # held-out clips per source for the zero-shot figures
    checkpoint_every: int = 250  # steps between checkpoints (with zero-shot figures on 128 held-out clips)
    num_threads: int | None = None


def clip_texts(item: dict) -> list[str]:
    """The texts a clip may be paired with: its caption, what it shows, how it moves."""
    motion = f"moving {item['direction']}"
    if "digit" in item:
        name = DIGIT_NAMES[item["digit"]]
        return [item["caption"], f"the digit {name}", name, motion, item["direction"]]
    thing = f"a {item['color']} {item['shape']}"
    return [item["caption"], thing, item["color"], item["shape"], motion, item["direction"],
            f"{thing} {motion}"]


def _batch(sources: list[MovingScenes | MovingDigits], weights: list[float], step: int, cfg: ClipTeacherConfig):
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    picks = torch.multinomial(torch.tensor(weights), cfg.batch_size, replacement=True, generator=gen).tolist()
    clips, texts = [], []
    for which in picks:
        source = sources[which]
        item = source[int(torch.randint(len(source), (1,), generator=gen))]
        options = clip_texts(item)
        clips.append(item["video"])
        texts.append(options[int(torch.randint(len(options), (1,), generator=gen))])
    return torch.stack(clips), texts


# What each zero-shot question asks: (attribute of an item, the answers, how an answer is written)
QUESTIONS = {"direction": ("direction", DIRECTIONS, "moving {}"), "colour": ("color", tuple(COLORS), "a {} thing"),
             "shape": ("shape", SHAPES, "a {}"), "digit": ("digit", DIGIT_NAMES, "the digit {}")}


@torch.no_grad()
def zero_shot(teacher: ClipTeacher, dataset, batch_size: int = 128) -> dict[str, float]:
    """Held-out accuracy of every question that applies to `dataset` (nearest answer text)."""
    correct: dict[str, int] = {}
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        emb = teacher.embed_images(torch.stack([it["video"] for it in items])).float()
        for name, (key, answers, template) in QUESTIONS.items():
            if key not in items[0]:
                continue
            text = teacher.embed_texts([template.format(a) for a in answers])
            pred = (emb @ text.t()).argmax(1).tolist()
            truth = [it[key] if isinstance(it[key], int) else answers.index(it[key]) for it in items]
            correct[name] = correct.get(name, 0) + sum(p == t for p, t in zip(pred, truth, strict=True))
    return {name: round(c / max(1, len(dataset)), 4) for name, c in correct.items()}


def train_clip_teacher(cfg: ClipTeacherConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the clip tower; writes teacher.safetensors and metrics.json in `out_dir`. Returns the
    metrics: zero-shot accuracy per source and question on held-out clips of the seed, chance."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    size, frames = cfg.image_size, cfg.frames
    sources = [MovingScenes(cfg.scenes, "train", cfg.seed, size, frames)]
    weights = [1.0 - cfg.digits_weight]
    heldout = {"moving-scenes": MovingScenes(cfg.eval_clips, "heldout", cfg.seed, size, frames)}
    if cfg.digits:
        sources.append(MovingDigits(cfg.digits, "train", cfg.seed, size, frames))
        weights.append(cfg.digits_weight)
        heldout["moving-digits"] = MovingDigits(cfg.eval_clips, "heldout", cfg.seed, size, frames)
    text_encoder = MiniLMTextEncoder()
    negatives: list[str] = []
    if cfg.codebook_negatives:
        from spae_lab.codebook import load_codebook
        from spae_lab.config import CodebookConfig

        words = load_codebook(CodebookConfig()).words  # the default codebook: what the teacher ranks
        negatives = [t.format(w) for t in cfg.negative_templates for w in words]
        text_encoder(negatives)  # embedded once (memoised)
    tower = ClipTower(text_encoder.dim, cfg.width, size, frames)
    optimizer = torch.optim.AdamW(tower.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = time.monotonic(), []
    tower.train()
    bar = tqdm(range(cfg.steps), desc="clip teacher", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, 0.0)
        clips, texts = _batch(sources, weights, step, cfg)
        distinct = list(dict.fromkeys(texts))  # shared texts are not negatives of each other
        targets = torch.tensor([distinct.index(t) for t in texts])
        if negatives:  # codebook words as further negatives (those that are a text of the batch excepted)
            drawn = torch.randperm(len(negatives), generator=torch.Generator().manual_seed(cfg.seed + step))
            known = set(distinct)
            distinct += [negatives[i] for i in drawn[: cfg.codebook_negatives].tolist() if negatives[i] not in known]
        logits = tower.logit_scale.exp().clamp(max=100) * tower(clips) @ text_encoder(distinct).t()
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0 or (step + 1) % cfg.checkpoint_every == 0:
            history.append({"step": step + 1, "loss": round(loss.item(), 4),
                            "minutes": round((time.monotonic() - start) / 60, 2)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:  # a teacher to look at meanwhile
            tower.eval()
            quick = {name: zero_shot(ClipTeacher(tower, text_encoder), Subset(data, range(min(128, len(data)))))
                     for name, data in heldout.items()}
            ClipTeacher(tower, text_encoder).save(out_dir / "teacher.safetensors", {"step": step + 1})
            history[-1]["zero_shot_128"] = quick
            tower.train()
        if not progress and (step + 1) % 50 == 0:
            print(json.dumps(history[-1]), flush=True)
    tower.eval()
    teacher = ClipTeacher(tower, text_encoder)
    accuracy = {name: zero_shot(teacher, data) for name, data in heldout.items()}
    result = {"zero_shot": accuracy,
              "chance": {name: round(1 / len(answers), 4) for name, (_, answers, _) in QUESTIONS.items()},
              "minutes": round((time.monotonic() - start) / 60, 2), "config": asdict(cfg), "history": history}
    teacher.save(out_dir / "teacher.safetensors", {"zero_shot": accuracy, "config": asdict(cfg)})
    atomic_write_json(out_dir / "metrics.json", result)
    return result
