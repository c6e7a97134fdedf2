"""What a generation writes, and the folder it writes into.

- `output_names`: one file name stem per query image, unique against every other name (case
  folded, as macOS and Windows compare names) and short enough for `NAME_corrupted.png`, decided
  before any LLM call;
- `output_size`, `save_png`: outputs at the input's size, never past `MAX_OUTPUT_SIDE`;
- `GenerationFolder`: `--out` owned as a training run folder is: locked while a run writes it (a
  second run is refused at once), resumed when the same run is asked again, refused when another
  run is asked (another task, other images, another tokenizer) unless `force` replaces it,
  removing only the files a generation writes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from spae_lab.errors import SpaeError
from spae_lab.generate.decode import prompt_id
from spae_lab.io import (
    FolderLock,
    atomic_save_image,
    atomic_write_text,
    remove_owned,
    remove_stale_temporaries,
    sha256_text,
)

# Outputs come back at the input's size (the tokenizer decodes 32-128 px), scaled down so that
# neither side passes this: a 12000 x 12000 input gives 1024 x 1024 outputs, not 1.6 GB of PNG.
MAX_OUTPUT_SIDE = 1024  # px
# A stem longer than this (UTF-8 bytes) is cut and given a hash of the whole name, so that
# `NAME_corrupted.png` and its temporary stay under the 255-byte limit of file names.
MAX_STEM_BYTES = 200
IMAGES = "images"
CONFIG = "config.json"
CACHE = "llm_cache.sqlite"
# Every file a generation writes besides its images (what `force` removes).
RUN_FILES = ("results.csv", "summary.json", CONFIG, "prompts.jsonl", "prefixes.jsonl",
             "prompt_example.txt", CACHE, f"{CACHE}-wal", f"{CACHE}-shm", f"{CACHE}-journal")


class GenerationFolderError(SpaeError):
    """An output folder this generation may not write: another process writes it, it is a file,
    or it holds another run (and `force` was not given)."""


def _cut(stem: str, limit: int = MAX_STEM_BYTES) -> str:
    """`stem`, or for a stem over `limit` bytes its start and 8 hex digits of its hash."""
    if len(stem.encode()) <= limit:
        return stem
    head = stem.encode()[:limit - 9].decode(errors="ignore")
    return f"{head}~{sha256_text(stem)[:8]}"


def output_names(stems: Sequence[str]) -> list[str]:
    """One distinct name per stem, in order: the first image of a stem keeps it (cut when too
    long); a later one gets `_2`, `_3`, ..., the first number giving a name no other image holds
    (`a.png`, `a.jpg` and `a_2.png` give a, a_3, a_2). Names are compared case folded (macOS and
    Windows see `A` and `a` as one name)."""
    cut = [_cut(stem) for stem in stems]
    taken = {name.casefold() for name in cut}
    seen: set[str] = set()
    out = []
    for name in cut:
        if name.casefold() in seen:
            number = 2
            while f"{name}_{number}".casefold() in taken:
                number += 1
            name = f"{name}_{number}"
            taken.add(name.casefold())
        seen.add(name.casefold())
        out.append(name)
    return out


def output_size(width: int, height: int, limit: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so that neither side passes `limit` (>= 1 px)."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_png(image, path: Path, size: tuple[int, int], folder: Path) -> None:
    """(3, S, S) in [0, 1] -> a PNG of `size` (width, height) held to `MAX_OUTPUT_SIDE`, written
    atomically inside `folder` (a link at `path` is replaced, never followed)."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(array)
    size = output_size(*size)
    if img.size != size:
        img = img.resize(size, Image.BICUBIC)
    atomic_save_image(img, path, within=folder)


def _normalised(data) -> object:
    return json.loads(json.dumps(data, default=str))


class GenerationFolder:
    """`out`, owned by one generation at a time (see the module docstring).

    `check(force)` before any work (a locked folder, a file); `claim(identity, outputs, force)`
    once the run is known (takes the lock, resumes the same run or refuses another, `force`
    removes the other's files) and writes config.json with `identity`; `release()` at the end."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = FolderLock(self.path, GenerationFolderError)

    def check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise GenerationFolderError(f"--out {self.path} is a file, not a folder")
        if (self.path / IMAGES).exists() and not (self.path / IMAGES).is_dir():
            raise GenerationFolderError(f"{self.path / IMAGES} is a file, not a folder")
        self.lock.refuse_if_locked()

    def _recorded(self) -> dict | None:
        """The identity of the run in the folder: {} for files of something else, None if empty."""
        path = self.path / CONFIG
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            record = None
        except (OSError, ValueError):
            record = {}
        if record is None:
            has_files = any((self.path / name).exists() for name in RUN_FILES) or \
                any((self.path / IMAGES).glob("*.png"))
            return {} if has_files else None
        if isinstance(record, dict) and "task" in record and "identity" not in record:
            return {"written by": "an older spae-lab, which recorded no run identity"}
        return record.get("identity", {}) if isinstance(record, dict) else {}

    def claim(self, identity: dict, outputs: Sequence[str], force: bool = False) -> None:
        """Take the folder for the run `identity` writing the image files `outputs`."""
        self.check()
        self.lock.acquire()
        try:
            identity = _normalised({**identity, "outputs": list(outputs)})
            recorded = self._recorded()
            if recorded is not None and recorded != identity:
                if not force:
                    raise GenerationFolderError(
                        f"{self.path} holds {_difference(recorded, identity)}: --force to replace it "
                        "(run_generation(..., force=True)), or another --out")
                self._clear(recorded.get("outputs") or self._listed_outputs())
            for folder in (self.path, self.path / IMAGES):
                remove_stale_temporaries(folder)  # debris of killed writers: none can be alive
            atomic_write_text(self.path / CONFIG, json.dumps({"identity": identity}, indent=2),
                              within=self.path)
        except BaseException:
            self.lock.release()
            raise
        self.identity = identity

    def _listed_outputs(self) -> list[str]:
        """The image files the rows of results.csv name (a run that recorded no outputs)."""
        try:
            with open(self.path / "results.csv", newline="") as f:
                names = [row.get("image") for row in csv.DictReader(f)]
        except (OSError, UnicodeDecodeError, csv.Error):
            return []
        suffixes = ("_corrupted.png", "_generated.png", "_original.png", "_edited.png", ".png")
        return [f"{name}{suffix}" for name in names if name for suffix in suffixes]

    def _clear(self, outputs: Sequence[str]) -> None:
        """Remove another run's files: its run files and its images, nothing else."""
        for name in RUN_FILES:
            remove_owned(self.path / name, self.path)
        images = self.path / IMAGES
        for name in outputs:
            if isinstance(name, str) and name.endswith(".png"):
                remove_owned(images / name, images)
        with contextlib.suppress(OSError):
            images.rmdir()  # only when nothing else is left in it

    def write_config(self, record: dict) -> None:
        """config.json at the end: the identity and what the run did."""
        atomic_write_text(self.path / CONFIG, json.dumps({"identity": self.identity, **record},
                                                         indent=2, default=str), within=self.path)

    def release(self) -> None:
        self.lock.release()


def _difference(recorded: dict, wanted: dict) -> str:
    """'another run (task inpaint, not class; outputs: 20 images, not 5)' for the refusal."""
    if not recorded:
        return "files this generation did not write (no generate config.json)"
    if "written by" in recorded:
        return f"a run written by {recorded['written by']}"
    parts = []
    for key in sorted(recorded.keys() | wanted.keys()):
        old, new = recorded.get(key), wanted.get(key)
        if old == new:
            continue
        if key == "outputs":
            parts.append(f"outputs: {len(old or [])} images, not {len(new or [])}" if
                         len(old or []) != len(new or []) else "other images")
        elif isinstance(old, dict) and isinstance(new, dict):
            parts += [f"{key}.{k} {old.get(k)!r}, not {new.get(k)!r}"
                      for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        else:
            parts.append(f"{key} {old!r}, not {new!r}")
    more = f" and {len(parts) - 4} more" if len(parts) > 4 else ""
    return f"another run ({'; '.join(parts[:4])}{more})"


def write_prompts(out: Path, writer, prefixes: dict[str, str]) -> None:
    """prefixes.jsonl (each distinct prefix once, by its `prompt_id`), prompts.jsonl (every call) and
    prompt_example.txt (the last call's whole prompt and the words written)."""
    by_sha = {prompt_id(p): p for p in prefixes.values()}
    lines = [json.dumps({"prefix_id": k, "prefix": v}) for k, v in by_sha.items()]
    atomic_write_text(out / "prefixes.jsonl", "\n".join(lines) + "\n", within=out)
    calls = [json.dumps({"prefix_id": p["prefix_sha"], "query": p["query"], "answer": p["answer"],
                         "words": [writer.words[r] for r in p["answer"]]}) for p in writer.prompts]
    atomic_write_text(out / "prompts.jsonl", "\n".join(calls) + "\n", within=out)
    if writer.prompts:
        last = writer.prompts[-1]
        example = by_sha.get(last["prefix_sha"], "") + last["query"]
        atomic_write_text(out / "prompt_example.txt", example + "\n# the LLM wrote:" +
                          "".join(" " + writer.words[r] for r in last["answer"]) + "\n", within=out)
