"""A small digit classifier, trained in the project, that judges generated digits.

A two-block CNN on grey 32 x 32 digits, trained on the training split of the MNIST sample (the
split the `digits` tokenizer trained on) and, when a tokenizer is given, also on that tokenizer's
full-depth reconstructions of the same images: generated digits are decodes, slightly blurred, and
a classifier that never saw a decode misreads them more often. It is trained once, on one CPU
thread, and cached under the spae_lab cache folder, keyed by its settings and the tokenizer's
weights.

    classifier = load_digit_classifier(tokenizer)
    classifier.predict(images)          # (B, 3, S, S) in [0, 1] -> (B,) digits
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    dataset: str = "mnist"  # built-in digits to train on (its training split)
    seed: int = 0  # split seed (the digits tokenizer's) and initialisation
    epochs: int = 6  # passes over the training images (and their reconstructions)
    batch_size: int = 64
    learning_rate: float = 2e-3  # Adam
    max_shift: int = 2  # px of random translation per batch (augmentation)
    with_reconstructions: bool = True  # also train on the tokenizer's decodes of the same images


class DigitCNN(nn.Module):
    """(B, 1, 32, 32) grey in [0, 1] -> (B, 10) logits."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 16
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 x 8
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),  # 2 x 2
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitClassifier:
    """The trained CNN with its input handling (RGB or grey, any square size)."""

    def __init__(self, net: DigitCNN, config: ClassifierConfig):
        self.net, self.config = net.eval(), config

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """(B, 3 or 1, S, S) in [0, 1] -> (B, 1, 32, 32) grey."""
        grey = images.float().mean(1, keepdim=True)
        if grey.shape[-1] != 32:
            grey = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
        return grey

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B,) int64 digits."""
        out = [self.net(self.prepare(images[i:i + 256])).argmax(-1)
               for i in range(0, len(images), 256)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(images) == labels).float().mean())


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    return images, torch.as_tensor(dataset.labels, dtype=torch.long)


@torch.no_grad()
def reconstruct_all(tokenizer, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Full-depth decodes of (B, 3, S, S) images, in batches."""
    return torch.cat([tokenizer.reconstruct(images[i:i + batch])
                      for i in range(0, len(images), batch)])


def train_digit_classifier(config: ClassifierConfig = ClassifierConfig(), tokenizer=None,
                           progress: bool = False) -> DigitClassifier:
    """Train the CNN on the training split (plus reconstructions, see the module docstring)."""
    from tqdm.auto import tqdm

    from spae_lab.data import make_dataset

    images, labels = _stack(make_dataset(config.dataset, 32, split="train", seed=config.seed))
    if config.with_reconstructions and tokenizer is not None:
        size = tokenizer.config.image_size
        small = F.interpolate(images, size=(size, size), mode="bilinear") if size != 32 else images
        recon = reconstruct_all(tokenizer, small)
        images = torch.cat([images, F.interpolate(recon, size=(32, 32), mode="bilinear")
                            if size != 32 else recon])
        labels = torch.cat([labels, labels])
    grey = DigitClassifier.prepare(images)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net = DigitCNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    steps = config.epochs * (-(-len(grey) // config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=steps)
    bar = tqdm(total=steps, desc="digit classifier", disable=not progress)
    net.train()
    # Callers may hold torch.no_grad() (the generation tasks do); training needs gradients.
    with torch.enable_grad():
        for _ in range(config.epochs):
            order = torch.randperm(len(grey), generator=generator)
            for start in range(0, len(grey), config.batch_size):
                index = order[start:start + config.batch_size]
                x = grey[index]
                if config.max_shift:
                    dx, dy = torch.randint(-config.max_shift, config.max_shift + 1, (2,),
                                           generator=generator).tolist()
                    x = x.roll((dy, dx), dims=(-2, -1))
                loss = F.cross_entropy(net(x), labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
    bar.close()
    return DigitClassifier(net, config)


def load_digit_classifier(tokenizer=None, config: ClassifierConfig = ClassifierConfig(),
                          use_cache: bool = True, progress: bool = False) -> DigitClassifier:
    """The classifier from the cache folder, trained (and stored) on first use."""
    from safetensors.torch import load_file, save_file

    from spae_lab.assets import cache_dir
    from spae_lab.checkpoint import weights_fingerprint
    from spae_lab.io import atomic_write_path, sha256_text

    fingerprint = weights_fingerprint(tokenizer) if tokenizer is not None and config.with_reconstructions else "none"
    key = sha256_text(json.dumps([asdict(config), fingerprint, 1]))[:16]
    path = cache_dir() / "digit_classifier" / f"{key}.safetensors"
    if use_cache and path.exists():
        net = DigitCNN()
        net.load_state_dict(load_file(str(path)))
        return DigitClassifier(net, config)
    classifier = train_digit_classifier(config, tokenizer, progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in classifier.net.state_dict().items()}, str(tmp))
    return classifier
