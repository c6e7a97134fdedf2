"""Images in ImageFolder layout (root/<class>/<file>), read from a folder or a tar archive."""

from __future__ import annotations

import os
import tarfile
import unicodedata
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from torch.utils.data import Dataset

from spae_lab.data.images import IMAGE_EXTENSIONS, DataError, _to_tensor, decode_image
from spae_lab.data.splits import _check_index, _class_seed, _normalise_split, _split_positions
from spae_lab.io import is_regular_file

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Archive members are read into memory before decoding, so their sizes are capped: a photo is a
# few MB, while a 5 MB .tar.gz can hold a 1 GB member (a decompression bomb). A bigger member is
# skipped like any unreadable image, checked on its header and again while it is read.
MAX_MEMBER_BYTES = 64 * 2**20
# preload=False keeps the chosen members' bytes in memory; past this total it refuses the archive.
MAX_HELD_BYTES = 256 * 2**20
_CHUNK_BYTES = 2**20


@dataclass
class _Entry:
    """One image file: its path relative to the root (posix), class name, and tar member."""

    relpath: str
    class_name: str
    member: tarfile.TarInfo | None = None


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(_ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entry_for(relpath: str, root_class: str) -> _Entry | None:
    """An entry for an image path relative to the root, or None for hidden/non-image files.

    The class is the folder that directly contains the file; images at the top level get
    ``root_class`` (the folder / archive name). Class names are Unicode-normalised (NFC): macOS
    writes "café" decomposed, Linux keeps what it is given, and both must be one class.
    """
    parts = PurePosixPath(relpath).parts
    if not parts or _is_hidden(parts) or not _is_image_name(relpath):
        return None
    return _Entry(relpath, unicodedata.normalize("NFC", parts[-2] if len(parts) > 1 else root_class))


def _scan_folder(root: Path) -> tuple[list[_Entry], list[str]]:
    """Image entries of a folder, plus the image names that are not regular files (FIFOs,
    devices, sockets: opening a FIFO waits for a writer), which are left out."""
    entries, irregular = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden([d]))
        for filename in filenames:
            relpath = Path(dirpath, filename).relative_to(root).as_posix()
            entry = _entry_for(relpath, root.name)
            if entry is None:
                continue
            if is_regular_file(root / relpath):
                entries.append(entry)
            else:
                irregular.append(relpath)
    return entries, irregular


def _safe_member_name(name: str) -> str | None:
    """Normalised posix name of a tar member, or None if it is absolute or escapes with '..'."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _scan_archive(archive: tarfile.TarFile, root_class: str) -> tuple[list[_Entry], list[str]]:
    """Image entries of an open archive, plus the names of unsafe members that were ignored. Of
    members sharing a name, the last one is the image (what extracting the archive leaves)."""
    entries: dict[str, _Entry] = {}
    unsafe = []
    for member in archive.getmembers():
        if not member.isfile():  # links and devices are never followed
            continue
        name = _safe_member_name(member.name)
        if name is None:
            unsafe.append(member.name)
            continue
        entry = _entry_for(name, root_class)
        if entry is not None:
            entry.member = member
            entries.pop(name, None)  # a later member of the same name replaces the earlier one
            entries[name] = entry
    return list(entries.values()), unsafe


def _is_archive(path: Path) -> bool:
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _skip_warning(count: int, first: tuple[str, str]) -> str:
    noun = "image" if count == 1 else "images"
    return f"skipped {count} unreadable {noun} (first: {first[0]}: {first[1]})"


class ImageFolderDataset(Dataset):
    """Images in ImageFolder layout (root/<class>/<file>), from a folder or a tar archive.

    ``root`` may be a directory or a .tar / .tar.gz / .tgz (also .bz2 / .xz) archive, read in
    place (never extracted). The class of an image is the folder that directly contains it, so
    an extra top-level folder (CIFAR-10's ``train/<class>/...``) is fine. Hidden files/folders
    and non-image extensions are ignored; archive members with absolute or '..' paths are
    ignored with a warning. Order and class list are sorted.

    ``split``: "all", "train" or "heldout" (aliases "test", "val"): a deterministic per-class
    split by ``seed`` with ``heldout_fraction`` held out. ``max_per_class`` then keeps the first
    N of each class (sorted order) *before* decoding, so huge archives load fast.

    ``preload=True`` decodes everything once into a uint8 array; unreadable files are dropped
    and summarised in one warning. ``preload=False`` decodes in ``__getitem__`` and replaces an
    unreadable file by the next readable one (also warned once). For archives, preload=False
    still reads the (compressed) file bytes once into memory, up to ``MAX_HELD_BYTES`` in all:
    random access into a gzip stream would re-decompress it from the start for every item.
    Archive members over ``MAX_MEMBER_BYTES`` are never read: they count as unreadable files.

    Items: {"image": (3, S, S) float32, "label": int, "caption": "a photo of a <class>",
    "path": str, "width": int, "height": int} (the file's size as shown, EXIF rotation applied).
    Images past the bounds of `spae_lab.data.images` (side, pixels, aspect ratio) and names that
    are not regular files count as unreadable. ``skipped`` lists (path, reason) of unreadable files found so far.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 32, split: str = "all",
                 heldout_fraction: float = 0.1, seed: int = 0, max_per_class: int | None = None,
                 preload: bool = True):
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.split = _normalise_split(split, allow_all=True)
        self.seed = int(seed)
        self.preload = bool(preload)
        self.skipped: list[tuple[str, str]] = []
        self._warned = False
        self._bad: set[int] = set()
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
        if not 0.0 <= heldout_fraction <= 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")

        # Archive member bytes (or why a member was not read) for lazy decoding; None for folders
        # (read from disk) and once everything is decoded.
        self._blobs: list[bytes | DataError] | None = None
        self._images: np.ndarray | None = None
        self._load(heldout_fraction, max_per_class)

    # -- scanning ----------------------------------------------------------------------------

    def _load(self, fraction: float, cap: int | None) -> None:
        """List, split and cap the image entries; decode them (preload) or keep archive bytes.

        An archive is read forward once, member by member: with preload, each member is decoded
        as soon as it is read, so only one member's bytes are in memory at a time.
        """
        if not self.root.exists():
            raise DataError(f"dataset path not found: {self.root}")
        if self.root.is_dir():
            found, irregular = _scan_folder(self.root)
            if irregular:
                warnings.warn(f"left out {len(irregular)} image names in {self.root} that are not "
                              f"regular files (FIFOs, devices), e.g. {irregular[0]!r}", stacklevel=3)
            self._set_entries(self._select(found, fraction, cap))
            if self.preload:
                self._preload_all((i, path) for i, path in enumerate(self.paths))
            return
        if not is_regular_file(self.root):
            raise DataError(f"{self.root} is neither a folder nor a regular file (a FIFO or device)")
        if not _is_archive(self.root):
            raise DataError(f"{self.root} is neither a folder nor a tar archive "
                            f"({', '.join(_ARCHIVE_SUFFIXES)})")
        try:
            with tarfile.open(self.root, "r:*") as archive:
                found, unsafe = _scan_archive(archive, _archive_stem(self.root))
                if unsafe:
                    warnings.warn(f"ignored {len(unsafe)} archive members with unsafe paths "
                                  f"(absolute or '..') in {self.root}, e.g. {unsafe[0]!r}",
                                  stacklevel=3)
                entries = self._select(found, fraction, cap)
                self._set_entries(entries)
                if self.preload:
                    self._preload_all(_read_members(archive, entries, self.paths))
                else:
                    self._check_held_size(entries)
                    self._blobs = self._hold(_read_members(archive, entries, self.paths))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            # tarfile's "r:*" lists every compression it tried, one per line: keep the first line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
            raise DataError(f"cannot read archive {self.root}: {reason}") from exc

    def _select(self, entries: list[_Entry], fraction: float, cap: int | None) -> list[_Entry]:
        """Sort, derive classes, split per class, cap per class."""
        if not entries:
            raise DataError(f"no image files found in {self.root} (expected root/<class>/<image> "
                            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
        entries = sorted(entries, key=lambda e: e.relpath)
        self.classes = sorted({e.class_name for e in entries})
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        by_class: dict[str, list[_Entry]] = {name: [] for name in self.classes}
        for entry in entries:
            by_class[entry.class_name].append(entry)
        chosen: list[_Entry] = []
        for name, members in by_class.items():
            positions = _split_positions(len(members), self.split, fraction,
                                         _class_seed(self.seed, name))
            chosen.extend(members[p] for p in positions[:cap])
        if not chosen:
            raise DataError(f"split {self.split!r} of {self.root} is empty "
                            f"({len(entries)} images in total)")
        return sorted(chosen, key=lambda e: (self.class_to_idx[e.class_name], e.relpath))

    def _set_entries(self, entries: list[_Entry]) -> None:
        self.paths = [(self.root / entry.relpath).as_posix() for entry in entries]
        self.sizes: list[tuple[int, int] | None] = [None] * len(entries)  # (width, height) once decoded
        # every image directly in the root: the one "class" is the folder's own name, no label
        self.flat = all("/" not in entry.relpath for entry in entries)
        self.labels = np.array([self.class_to_idx[e.class_name] for e in entries], np.int64)

    def _check_held_size(self, entries: list[_Entry]) -> None:
        """Refuse, before reading, to keep more than MAX_HELD_BYTES of member bytes in memory
        (a member reads at most the size its header states; bigger ones are never read)."""
        sizes = [e.member.size for e in entries]
        held = sum(size for size in sizes if size <= MAX_MEMBER_BYTES)
        if held > MAX_HELD_BYTES:
            raise DataError(f"cannot hold the images of {self.root} in memory for preload=False: "
                            f"{_size_text(held)}, over the {_size_text(MAX_HELD_BYTES)} limit; "
                            f"use preload=True (decodes one image at a time) or extract it")

    def _hold(self, blobs: Iterable[tuple[int, bytes | DataError]]) -> list[bytes | DataError]:
        """Keep the read bytes (or read errors) of every entry, by entry position."""
        held: list[bytes | DataError] = [b""] * len(self.paths)
        for i, blob in blobs:
            held[i] = blob
        return held

    # -- decoding ----------------------------------------------------------------------------

    def _decode(self, i: int, source: str | bytes | DataError | None = None) -> np.ndarray:
        """Decode entry i from ``source`` (file path, bytes or the error that kept it unread),
        by default from its held bytes or its path; its size as shown goes to ``self.sizes``."""
        if source is None:
            source = self._blobs[i] if self._blobs is not None else self.paths[i]
        if isinstance(source, DataError):
            raise source
        array, self.sizes[i] = decode_image(source, self.image_size, name=self.paths[i])
        return array

    def _preload_all(self, sources: Iterable[tuple[int, str | bytes | DataError]]) -> None:
        """Decode every entry once, from (position, path or bytes) pairs in any order; drop
        unreadable ones (one summary warning)."""
        from tqdm.auto import tqdm

        arrays: dict[int, np.ndarray] = {}
        failures: dict[int, DataError] = {}
        for i, source in tqdm(sources, total=len(self.paths), desc=f"loading {self.root.name}",
                              unit="img", leave=False, disable=None):
            try:
                arrays[i] = self._decode(i, source)
            except DataError as exc:
                failures[i] = exc
        self.skipped.extend((self.paths[i], _reason(failures[i], self.paths[i]))
                            for i in sorted(failures))
        if not arrays:
            raise DataError(f"no readable image in {self.root}: all {len(self.paths)} failed "
                            f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})")
        keep = sorted(arrays)
        self.paths = [self.paths[i] for i in keep]
        self.sizes = [self.sizes[i] for i in keep]
        self.labels = self.labels[keep]
        self._images = np.stack([arrays.pop(i) for i in keep])
        if self.skipped:
            self._warned = True
            # stacklevel: _preload_all <- _load <- __init__ <- the caller
            warnings.warn(_skip_warning(len(self.skipped), self.skipped[0]), stacklevel=4)

    def _note_bad(self, i: int, exc: DataError) -> None:
        """Remember an unreadable lazy item; warn the first time only (an epoch can be long)."""
        self._bad.add(i)
        self.skipped.append((self.paths[i], _reason(exc, self.paths[i])))
        if not self._warned:
            self._warned = True
            warnings.warn(_skip_warning(1, self.skipped[0]) + "; it was replaced by the next "
                          "readable image (further failures are only recorded in .skipped)",
                          stacklevel=3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self))
        if self._images is not None:
            return self._item(i, self._images[i])
        # Lazy: walk forward (wrapping) past unreadable files rather than crash mid-epoch.
        for step in range(len(self)):
            j = (i + step) % len(self)
            if j in self._bad:
                continue
            try:
                return self._item(j, self._decode(j))
            except DataError as exc:
                self._note_bad(j, exc)
        raise DataError(f"no readable image in {self.root}: all {len(self)} files failed "
                        f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})")

    def _item(self, i: int, array: np.ndarray) -> dict:
        label = int(self.labels[i])
        width, height = self.sizes[i]
        return {"image": _to_tensor(array), "label": label,
                "caption": f"a photo of a {self.classes[label]}", "path": self.paths[i],
                "width": width, "height": height}


def _reason(exc: DataError, path: str) -> str:
    """The reason part of a decode error (its message without the "cannot read image <path>")."""
    message = str(exc)
    prefix = f"cannot read image {path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _read_members(archive: tarfile.TarFile, entries: list[_Entry], names: list[str]
                  ) -> Iterator[tuple[int, bytes | DataError]]:
    """(position, bytes) of the chosen archive members, one at a time in archive order
    (forward-only on gzip). A member over MAX_MEMBER_BYTES gives the DataError that names it
    (``names[position]``) instead of its bytes."""
    for k in sorted(range(len(entries)), key=lambda k: entries[k].member.offset_data):
        try:
            blob: bytes | DataError = _read_member(archive, entries[k].member, names[k])
        except DataError as exc:
            blob = exc
        yield k, blob


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> bytes:
    """The bytes of one archive member, refused (DataError) past MAX_MEMBER_BYTES: on the size
    its header states, and again while reading, in chunks, so that no size is trusted."""
    limit = MAX_MEMBER_BYTES
    if member.size > limit:
        raise DataError(f"cannot read image {name}: archive member of {_size_text(member.size)} "
                        f"is over the {_size_text(limit)} limit per image")
    handle = archive.extractfile(member)
    if handle is None:
        return b""
    chunks, size = [], 0
    while chunk := handle.read(min(_CHUNK_BYTES, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise DataError(f"cannot read image {name}: archive member is over the "
                            f"{_size_text(limit)} limit per image")
    return b"".join(chunks)


def _size_text(size: int) -> str:
    if size < 2**20:
        return f"{size:,} bytes"
    return f"{size / 2**20:,.1f} MiB".replace(".0 MiB", " MiB")
