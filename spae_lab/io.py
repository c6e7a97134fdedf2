"""Files on disk: atomic writes (a reader sees the old file or the complete new one, never half of
one), removal of only what a command owns, and a checked safetensors read (never unpickling)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spae_lab.errors import SpaeError


class OwnershipError(SpaeError):
    """A path a command was about to remove or replace lies outside the folder it owns."""


def owned_path(path: str | os.PathLike, owner: str | os.PathLike) -> Path:
    """`path`, once proven to lie strictly inside the folder `owner`; OwnershipError otherwise.

    Both are resolved first (`..`, symbolic links of the folders above), so a name such as
    `x/../../precious`, or a link to elsewhere, cannot lead out. The last component is not
    followed: a link inside `owner` is itself owned (removing it removes the link only)."""
    path, owner = Path(path), Path(owner).resolve()
    if path.name in ("", ".", ".."):
        raise OwnershipError(f"refusing to remove or replace {str(path)!r}: not a plain name inside {owner}")
    real = path.parent.resolve() / path.name
    if real == owner or not real.is_relative_to(owner):
        raise OwnershipError(f"refusing to remove or replace {path}: it lies outside {owner}, "
                             f"the folder this command writes")
    return real


def remove_owned(path: str | os.PathLike, owner: str | os.PathLike) -> bool:
    """Remove the file, link or folder `path` (missing: nothing to do), only if it lies inside
    `owner` (`owned_path`). A link is removed, never followed. True when something was removed."""
    real = owned_path(path, owner)
    if real.is_symlink() or (real.exists() and not real.is_dir()):
        real.unlink()
    elif real.is_dir():
        shutil.rmtree(real)
    else:
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the `.NAME.XXXX.tmp` files `atomic_write_path` leaves when its writer is killed.
    Call it only while no other process can be writing `folder` (a run folder's lock held)."""
    folder = Path(folder)
    removed = []
    for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        remove_owned(path, folder)
        removed.append(path)
    return removed


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
            remove_owned(old, target.parent)
            os.replace(target, old)
            os.replace(tmp, target)
            with contextlib.suppress(OSError):  # written already; a leftover .old is harmless
                remove_owned(old, target.parent)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            remove_owned(tmp, target.parent)


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
