"""Files on disk: atomic writes (a reader sees the old file or the complete new one, never half of
one) and a checked safetensors read (never unpickling)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success, rename it over `target`.

    Works for a file or a whole directory (written into the yielded path). On error the temporary
    is removed and `target` is untouched. The rename is atomic on POSIX filesystems because the
    temporary lives in the same directory.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.unlink(tmp)  # the caller creates a file or a directory here
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_write_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: str | os.PathLike, data) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True))


def read_safetensors(path: str | os.PathLike, expected_format: str, error: type[Exception],
                     what: str = "checkpoint") -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file whose metadata "format" is `expected_format`;
    `error` (one readable line) for a missing, damaged or foreign file. Safetensors, so reading it
    runs no code (no unpickling)."""
    from safetensors import safe_open  # torch only where tensors are read

    path = Path(path)
    if not path.exists():
        raise error(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise error(f"{path} is not a readable safetensors {what}: {e}") from e
    if metadata.get("format") != expected_format:
        raise error(f"{path} is not a spae_lab {what} (format {metadata.get('format')!r})")
    return tensors, metadata
