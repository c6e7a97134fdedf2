"""Files on disk: every write a command makes, the reads of user files, and the claim on a folder.

Writes: a reader sees the old file or the complete new one, never half of one, and a write never
goes through a link that is already there. Every writer makes a temporary file in the target's
folder and renames it over the target (`atomic_open`, `atomic_write_*`, `atomic_save_image`,
`atomic_save_figure`; `atomic_write_path` for writers that want a path, such as safetensors or
`save_pretrained`). A rename replaces a link planted at the target; it never writes where the link
points. `within=FOLDER` also proves that the target lies inside the folder the command owns (a
planted link to a folder above the target cannot lead out). Logs that grow by lines use
`append_text`, which refuses a link instead of following it.

Reads: `open_regular_file` opens only regular files (a FIFO named `x.png` would block forever).

Folders: `remove_owned` removes only what lies inside a command's folder; `FolderLock` is one
process's claim on a folder (a second process is refused at once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from spae_lab.errors import SpaeError

# The longest file name most filesystems take (ext4, APFS, NTFS: 255 bytes, UTF-8 on Linux).
MAX_NAME_BYTES = 255
# Temporaries are named `.<target name, cut>.<random>.tmp`; the cut keeps them under the limit.
_TMP_NAME_CHARS = 80
# The permissions a plain `open(path, "w")` would give (mkstemp makes 0600 files).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class OwnershipError(SpaeError):
    """A path a command was about to remove or replace lies outside the folder it owns."""


class OutputError(SpaeError):
    """A file a command cannot write where it was asked: a folder on its path is a file, its name
    is too long, a link sits where a log is appended."""


class FolderBusyError(SpaeError):
    """A folder another process is writing (it holds the folder's lock)."""


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
    """Remove the `.NAME.XXXX.tmp` files the atomic writers leave when their process is killed.
    Call it only while no other process can be writing `folder` (its `FolderLock` held)."""
    folder = Path(folder)
    removed = []
    for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        remove_owned(path, folder)
        removed.append(path)
    return removed


def remove_links(*paths: str | os.PathLike) -> None:
    """Remove the paths that are symbolic links (the links only). For writers that open a path
    themselves (SQLite and its -wal / -shm files): what they write then stays where it is named."""
    for path in paths:
        if Path(path).is_symlink():
            Path(path).unlink()


# --- writing -------------------------------------------------------------------------------------


def _first_file_on(path: Path) -> Path | None:
    """The first component of `path` (from the root down) that exists and is not a folder."""
    for parent in reversed([path, *path.parents]):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def writable_target(target: str | os.PathLike, within: str | os.PathLike | None = None) -> Path:
    """`target` with its folder created, checked before anything is written: inside `within` when
    given (OwnershipError), a name the filesystem takes and a folder on its path that is a folder
    (OutputError, one line, instead of [Errno 36] or [Errno 17] from deep inside a writer)."""
    target = Path(target)
    if within is not None:
        target = owned_path(target, within)
    size = len(os.fsencode(target.name))
    if size > MAX_NAME_BYTES:
        raise OutputError(f"cannot write {target.name[:40]}...: the file name is {size} bytes long, "
                          f"over the {MAX_NAME_BYTES}-byte limit of file names")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _first_file_on(target.parent) or target.parent
        raise OutputError(f"cannot write {target}: {blocker} is a file, not a folder") from None
    if target.is_dir() and not target.is_symlink():
        raise OutputError(f"cannot write the file {target}: a folder of that name is there")
    return target


def describe_os_error(error: OSError) -> str | None:
    """One line a person can act on for the OSErrors of a path in the wrong shape (a file where a
    folder should be, a name too long), which Python words as "[Errno 17] File exists: 'x'";
    None for the others (their own text says what happened)."""
    if error.filename is None:
        return None
    path = Path(os.fsdecode(error.filename))
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = _first_file_on(path)
        if blocker is not None:
            return f"{blocker} is a file, not a folder (it is in the way of {path})"
    if error.errno == errno.ENAMETOOLONG:
        longest = max(path.parts, key=lambda part: len(os.fsencode(part)))
        return (f"the file name {longest[:40]}... is {len(os.fsencode(longest))} bytes long, over the "
                f"{MAX_NAME_BYTES}-byte limit of file names")
    return None


def _temporary_in(folder: Path, name: str) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{name[:_TMP_NAME_CHARS]}.", suffix=".tmp", dir=folder)
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "wb", *, within: str | os.PathLike | None = None,
                encoding: str | None = None) -> Iterator[IO]:
    """A file object on a new temporary file beside `target`; on success it is flushed to disk and
    renamed over `target` (a link there is replaced, never followed). On error the temporary goes
    and `target` stays as it was. `mode`: "wb" or "w" (text, UTF-8 unless `encoding`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    target = writable_target(target, within)
    fd, tmp = _temporary_in(target.parent, target.name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write_path(target: str | os.PathLike, *, within: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success, rename it over `target`.

    For writers that take a path (safetensors, `save_pretrained`, papermill): a file or a whole
    directory is written into the yielded path. On error the temporary is removed and `target` is
    untouched. The rename is atomic on POSIX filesystems because the temporary lives in the same
    directory; a link at `target` is replaced, never followed.
    """
    target = Path(target)
    if not target.is_dir() or target.is_symlink():
        target = writable_target(target, within)
    elif within is not None:
        target = owned_path(target, within)
    fd, tmp = _temporary_in(target.parent, target.name)
    os.close(fd)
    os.unlink(tmp)  # the caller creates a file or a directory here
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if target.is_dir() and not target.is_symlink() and tmp.is_dir():
            old = target.with_name(f".{target.name[:_TMP_NAME_CHARS]}.old")
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


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, within=None) -> None:
    with atomic_open(target, "wb", within=within) as f:
        f.write(data)


def atomic_write_text(target: str | os.PathLike, text: str, *, within=None) -> None:
    with atomic_open(target, "w", within=within) as f:
        f.write(text)


def atomic_write_json(target: str | os.PathLike, data, *, within=None) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True), within=within)


def atomic_save_image(image, target: str | os.PathLike, *, within=None, **options) -> Path:
    """A PIL image saved atomically in the format the target's extension names (.png, .jpg, ...)."""
    from PIL import Image

    target = Path(target)
    image_format = Image.registered_extensions().get(target.suffix.lower())
    if image_format is None:
        raise OutputError(f"cannot save an image as {target}: give a file name ending in .png or .jpg")
    with atomic_open(target, "wb", within=within) as f:
        image.save(f, format=image_format, **options)
    return target


def atomic_save_figure(figure, target: str | os.PathLike, *, within=None, **options) -> Path:
    """A matplotlib figure saved atomically (`savefig` options such as dpi pass through)."""
    target = Path(target)
    with atomic_open(target, "wb", within=within) as f:
        figure.savefig(f, format=target.suffix.lstrip(".").lower() or "png", **options)
    return target


def append_text(path: str | os.PathLike, text: str, *, within=None) -> None:
    """Append `text` to a log (metrics.jsonl, resumes.jsonl): the file is opened without following
    a link (a link there is refused, OutputError). A kill can cut the last line: readers skip it."""
    path = writable_target(path, within)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"refusing to append to {path}: it is a link, and logs are never "
                              f"written through links; remove it") from None
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


# --- reading -------------------------------------------------------------------------------------


class NotRegularFileError(OSError):
    """A path that is not a regular file (a FIFO, a device, a socket, a folder)."""


def open_regular_file(path: str | os.PathLike) -> IO[bytes]:
    """`path` opened for reading in binary, only if it is a regular file (after links). Opened
    without blocking first, so a FIFO is refused at once instead of waiting for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise NotRegularFileError(f"{path} is {kind}; only regular files are read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (after links), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_safetensors(path: str | os.PathLike, expected_format: str, error: type[Exception],
                     what: str = "checkpoint") -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file whose metadata "format" is `expected_format`;
    `error` (one readable line) for a missing, damaged or foreign file. Safetensors, so reading it
    runs no code (no unpickling)."""
    from safetensors import safe_open  # torch only where tensors are read

    path = Path(path)
    if not path.exists():
        raise error(f"no {what} at {path}")
    if not is_regular_file(path):
        raise error(f"{path} is not a {what} file (a folder, FIFO or device)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise error(f"{path} is not a readable safetensors {what}: {e}") from e
    if metadata.get("format") != expected_format:
        raise error(f"{path} is not a spae_lab {what} (format {metadata.get('format')!r})")
    return tensors, metadata


# --- checksums -----------------------------------------------------------------------------------


def sha256_text(text: str) -> str:
    """The SHA-256 of a text (UTF-8), as 64 hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes, read in chunks, as 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- owning a folder -----------------------------------------------------------------------------

LOCK_NAME = ".lock"


class FolderLock:
    """One process's claim on a folder: it holds `<folder>/.lock` (fcntl.flock, so the lock goes
    with the process, SIGKILL included) and a second process is refused at once (`error`, by
    default FolderBusyError). The lock file is opened without following a link."""

    def __init__(self, path: str | os.PathLike, error: type[Exception] = FolderBusyError):
        self.path = Path(path)
        self.error = error
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return f"pid {int((self.path / LOCK_NAME).read_text().strip())}"
        return "pid unknown"

    def _busy(self) -> Exception:
        return self.error(f"{self.path} is being written by another process ({self.holder()})")

    def refuse_if_locked(self) -> None:
        """`error` when another process holds the lock (checked without creating the lock file)."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # no lock file (or no folder): nobody writes here
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy() from None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Create the folder and take its lock, for this process's lifetime or until `release`."""
        writable_target(self.path / LOCK_NAME)
        lock = self.path / LOCK_NAME
        while True:
            remove_links(lock)  # a planted link is replaced by the lock file, never followed
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue  # a link planted again between the removal and the open
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy() from None
            try:  # the file locked is still the one at the path (a releasing owner unlinks it)
                same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path / LOCK_NAME)  # unlinked while still locked: see `acquire`
        os.close(self._fd)
        self._fd = None
