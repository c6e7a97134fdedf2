"""Tests for spae_lab.data: offline and fast (everything is generated in tmp_path).

Modules: spae_lab.data.digits, spae_lab.data.folders, spae_lab.data.images, spae_lab.data.scenes,
spae_lab.data.splits.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from spae_lab.data import (
    COLORS,
    DATASETS,
    NUMBER_WORDS,
    PLURALS,
    SHAPES,
    DataError,
    DigitsDataset,
    ImageFolderDataset,
    MNISTSample,
    Scene,
    SyntheticScenes,
    collate,
    load_image,
    make_dataset,
    render_scene,
    to_rgb,
)
from spae_lab.data import folders as data_folders

torch.set_num_threads(1)

CIFAR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10/cifar10-train-jpeg.tar.gz"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
S = 16  # small image size keeps the tests fast


def assert_image(image: torch.Tensor, size: int = S) -> None:
    assert image.shape == (3, size, size)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


# ------------------------------------------------------------------------------------------
# Test image files
# ------------------------------------------------------------------------------------------

def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def palette_with_transparency() -> Image.Image:
    """Left half: transparent palette index 0 (red); right half: opaque blue."""
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 0, 20, 20))
    img.info["transparency"] = 0
    return img


def rgba_half_transparent() -> Image.Image:
    """Left half: fully transparent red; right half: opaque green."""
    array = np.zeros((20, 20, 4), np.uint8)
    array[:, :10] = (255, 0, 0, 0)
    array[:, 10:] = (0, 200, 0, 255)
    return Image.fromarray(array)


def sixteen_bit(value: int) -> Image.Image:
    return Image.fromarray(np.full((20, 24), value, np.uint16))


def good_files() -> dict[str, bytes]:
    gradient = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (25, 1))
    return {
        "cat/a_photo.jpg": encode(noise_rgb(40, 30, 1), "JPEG", quality=90),
        "cat/b_photo.png": encode(noise_rgb(20, 20, 2), "PNG"),
        "cat/c_gray.png": encode(Image.fromarray(gradient), "PNG"),
        "cat/d_palette.png": encode(palette_with_transparency(), "PNG", transparency=0),
        "dog/a_rgba.png": encode(rgba_half_transparent(), "PNG"),
        "dog/b_16bit.png": encode(sixteen_bit(128 * 257), "PNG"),
        "dog/c_photo.JPEG": encode(noise_rgb(30, 50, 3), "JPEG"),
    }


def bad_files() -> dict[str, bytes]:
    jpeg = encode(noise_rgb(64, 64, 4), "JPEG", quality=95)
    return {
        "dog/x_zero.jpg": b"",
        "dog/y_truncated.jpg": jpeg[: len(jpeg) // 2],
        "dog/z_text.jpg": b"this is not an image, just text with a .jpg name\n",
    }


def ignored_files() -> dict[str, bytes]:
    """Hidden files/folders and non-image extensions: never listed, never counted as bad."""
    return {
        "dog/notes.txt": b"hello",
        "cat/.hidden.png": encode(noise_rgb(8, 8), "PNG"),
        ".cache/cat/x.png": encode(noise_rgb(8, 8), "PNG"),
        "dog/.DS_Store": b"\x00\x01",
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relpath, data in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


class Zeros(io.RawIOBase):
    """A stream of `size` zero bytes, produced as read: writes a huge archive member cheaply."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "pets", {**good_files(), **bad_files(), **ignored_files()})


# ------------------------------------------------------------------------------------------
# to_rgb / load_image
# ------------------------------------------------------------------------------------------

def test_load_image_converts_modes_and_composites_on_white(tmp_path: Path) -> None:
    palette = load_image(encode(palette_with_transparency(), "PNG", transparency=0), S)
    assert torch.allclose(palette[:, :, 0], torch.ones(3, S))  # transparent -> white
    assert torch.allclose(palette[:, :, -1], torch.tensor([0.0, 0.0, 1.0])[:, None].expand(3, S))

    rgba = load_image(encode(rgba_half_transparent(), "PNG"), S)
    assert torch.allclose(rgba[:, :, 0], torch.ones(3, S))
    assert torch.allclose(rgba[:, 0, -1], torch.tensor([0.0, 200 / 255, 0.0]))

    deep = load_image(encode(sixteen_bit(128 * 257), "PNG"), S)  # 16-bit mid-grey stays mid-grey
    assert torch.allclose(deep, torch.full((3, S, S), 128 / 255))
    white16 = load_image(encode(sixteen_bit(65535), "PNG"), S)
    assert torch.allclose(white16, torch.ones(3, S, S))

    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(noise_rgb(50, 30), "JPEG"))
    assert_image(load_image(path, S))
    assert_image(load_image(str(path), 40), 40)  # upscaling works too


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("1", (4, 3), 1), 255),
        (Image.new("L", (4, 3), 77), 77),
        (Image.new("LA", (4, 3), (0, 0)), 255),  # fully transparent -> white
        (Image.new("I", (4, 3), 257 * 10), 10),  # "I" holds 16-bit data
        (Image.new("F", (4, 3), 0.5), 128),  # normalised float
        (Image.new("F", (4, 3), 200.0), 200),  # 8-bit-scale float
        (Image.new("CMYK", (4, 3), (0, 0, 0, 0)), 255),
    ],
)
def test_to_rgb_modes(img: Image.Image, expected: int) -> None:
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == img.size
    assert np.all(np.asarray(rgb) == expected)


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["L", "RGBA", "P", "I;16"]),
    width=st.integers(1, 12),
    height=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    transparent=st.booleans(),
)
def test_to_rgb_property(mode: str, width: int, height: int, seed: int, transparent: bool) -> None:
    rng = np.random.default_rng(seed)
    if mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8))
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        if mode == "P":
            img = img.convert("P")
            if transparent:
                img.info["transparency"] = int(rng.integers(0, 256))
    assert img.mode == mode
    rgb = to_rgb(img)
    assert rgb.mode == "RGB"
    assert rgb.size == (width, height)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_image(bad, S)
    with pytest.raises(DataError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg", S)
    with pytest.raises(DataError, match="member.jpg"):
        load_image(b"", S, name="archive.tar/member.jpg")


# ------------------------------------------------------------------------------------------
# Synthetic scenes
# ------------------------------------------------------------------------------------------

def test_render_scene_is_deterministic() -> None:
    for index in (0, 7, 12345):
        image_a, scene_a = render_scene(index, seed=3)
        image_b, scene_b = render_scene(index, seed=3)
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
        assert scene_a == scene_b
    different = [render_scene(i, seed=0)[1].caption != render_scene(i, seed=1)[1].caption
                 for i in range(20)]
    assert any(different)


def test_scene_captions_match_objects() -> None:
    counts = set()
    for index in range(300):
        image, scene = render_scene(index, image_size=32, max_objects=3)
        assert isinstance(scene, Scene) and image.size == (32, 32) and image.mode == "RGB"
        assert 1 <= scene.count <= 3
        counts.add(scene.count)
        assert len(set(scene.shapes)) == 1 and len(set(scene.colors)) == 1
        assert set(scene.shapes) <= set(SHAPES) and set(scene.colors) <= set(COLORS)
        assert scene.background in COLORS and scene.background not in scene.colors
        shape, color = scene.shapes[0], scene.colors[0]
        words = scene.caption.split()
        assert color in words
        if scene.count == 1:
            obj = scene.objects[0]
            assert scene.caption.startswith(f"a {obj['size']} {color} {shape} ")
            assert scene.caption.endswith(obj["position"])
        else:
            number = {2: "two", 3: "three"}[scene.count]
            assert words[0] == number == NUMBER_WORDS[scene.count]
            assert words[-1] == PLURALS[shape] != shape
        positions = [obj["position"] for obj in scene.objects]
        assert len(set(positions)) == len(positions)  # one object per grid cell
        for obj in scene.objects:
            assert obj["size"] in ("small", "large")
            x, y = obj["center"]
            column = ("left", "", "right")[min(int(x * 3), 2)]
            row = ("top", "", "bottom")[min(int(y * 3), 2)]
            assert obj["position"] == (" ".join(p for p in (row, column) if p) or "center")
    assert counts == {1, 2, 3}  # a mixture of single-object and counting scenes


def test_scene_pixels_show_the_object_colour() -> None:
    for index in range(40):
        image, scene = render_scene(index, image_size=64)
        pixels = np.asarray(image).astype(int)
        for obj in scene.objects:
            x, y = (int(c * 64) for c in obj["center"])
            assert np.abs(pixels[y, x] - COLORS[obj["color"]]).max() <= 30, scene
        corner = pixels[0, 0]  # corners are never covered by an object
        assert np.abs(corner - COLORS[scene.background]).max() <= 30


def test_synthetic_scenes_dataset_and_splits() -> None:
    train = SyntheticScenes(num_images=12, image_size=S, seed=5)
    again = SyntheticScenes(num_images=12, image_size=S, seed=5)
    heldout = SyntheticScenes(num_images=12, image_size=S, seed=5, split="heldout")
    assert len(train) == 12 and train.classes == list(SHAPES)
    item = train[3]
    assert_image(item["image"])
    assert item["label"] == SHAPES.index(item["shape"])
    assert item["caption"] == train.scene(3).caption and item["count"] == train.scene(3).count
    assert torch.equal(item["image"], again[3]["image"]) and item["caption"] == again[3]["caption"]
    assert torch.equal(train[-1]["image"], train[11]["image"])
    with pytest.raises(IndexError):
        train[12]
    train_images = torch.stack([train[i]["image"] for i in range(12)])
    heldout_images = torch.stack([heldout[i]["image"] for i in range(12)])
    assert not any(torch.equal(a, b) for a in train_images for b in heldout_images)
    for alias in ("test", "val"):
        assert SyntheticScenes(4, S, seed=5, split=alias)[0]["caption"] == heldout[0]["caption"]
    with pytest.raises(DataError, match="split"):
        SyntheticScenes(4, S, split="validation-ish")


def test_collate_with_dataloader() -> None:
    loader = DataLoader(SyntheticScenes(num_images=6, image_size=S), batch_size=4,
                        collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, S, S)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert batch["count"].shape == (4,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4
    assert all(isinstance(color, str) for color in batch["color"])


# ------------------------------------------------------------------------------------------
# Built-in datasets
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DATASETS))
def test_builtin_datasets_shape_and_range(name: str) -> None:
    kwargs = {"num_images": 8} if name == "scenes" else {}
    dataset = make_dataset(name, image_size=S, split="train", seed=0, **kwargs)
    assert len(dataset) > 0
    for i in (0, len(dataset) - 1):
        item = dataset[i]
        assert_image(item["image"])
        assert 0 <= item["label"] < len(dataset.classes)
        assert isinstance(item["caption"], str) and item["caption"]
    assert float(dataset[0]["image"].max()) > 0.5  # not an all-black image


@pytest.mark.parametrize("cls", [DigitsDataset, MNISTSample])
def test_digit_splits_are_disjoint_and_deterministic(cls) -> None:
    train, heldout = cls(image_size=8, split="train"), cls(image_size=8, split="heldout")
    everything = cls(image_size=8, split="all")
    assert len(train) + len(heldout) == len(everything)
    assert 0.18 < len(heldout) / len(everything) < 0.22
    assert set(np.unique(heldout.labels)) == set(range(10))
    assert not set(train.indices.tolist()) & set(heldout.indices.tolist())
    assert torch.equal(cls(image_size=8, split="heldout")[5]["image"], heldout[5]["image"])
    assert not np.array_equal(cls(image_size=8, split="heldout", seed=1).indices, heldout.indices)
    assert "digit" in train[0]["caption"]


# ------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------

def test_image_folder_preload_skips_bad_files(messy_folder: Path) -> None:
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable images \(first: .*x_zero\.jpg"):
        dataset = ImageFolderDataset(messy_folder, image_size=S)
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset) == len(good_files()) and len(dataset.skipped) == 3
    assert [Path(p).name for p in dataset.paths] == [Path(p).name for p in sorted(good_files())]
    for i in range(len(dataset)):
        item = dataset[i]
        assert_image(item["image"])
        assert item["caption"] == f"a photo of a {dataset.classes[item['label']]}"
        assert Path(item["path"]).parent.name == dataset.classes[item["label"]]
    # converted, not just decoded: the 16-bit file is mid-grey, the palette one half white
    by_name = {Path(dataset[i]["path"]).name: dataset[i]["image"] for i in range(len(dataset))}
    assert torch.allclose(by_name["b_16bit.png"], torch.full((3, S, S), 128 / 255))
    assert torch.allclose(by_name["d_palette.png"][:, :, 0], torch.ones(3, S))


def test_image_folder_lazy_replaces_bad_files(messy_folder: Path) -> None:
    dataset = ImageFolderDataset(messy_folder, image_size=S, preload=False)
    assert len(dataset) == len(good_files()) + len(bad_files())
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        items = [dataset[i] for i in range(len(dataset))]
    for item in items:
        assert_image(item["image"])
        assert "x_zero" not in item["path"] and "truncated" not in item["path"]
    assert len(dataset.skipped) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only, even on a second epoch
        list(DataLoader(dataset, batch_size=4, collate_fn=collate))


def test_image_folder_split_and_cap(tmp_path: Path) -> None:
    files = {f"{cls}/{k:03d}.png": encode(noise_rgb(8, 8, k), "PNG")
             for cls in ("ant", "bee") for k in range(20)}
    root = write_tree(tmp_path / "bugs", files)
    train = ImageFolderDataset(root, S, split="train", heldout_fraction=0.25, seed=1)
    heldout = ImageFolderDataset(root, S, split="heldout", heldout_fraction=0.25, seed=1)
    assert len(train) == 30 and len(heldout) == 10
    assert not set(train.paths) & set(heldout.paths)
    assert ImageFolderDataset(root, S, split="test", heldout_fraction=0.25, seed=1).paths \
        == heldout.paths
    assert ImageFolderDataset(root, S, split="heldout", heldout_fraction=0.25, seed=2).paths \
        != heldout.paths
    capped = ImageFolderDataset(root, S, split="train", heldout_fraction=0.25, seed=1,
                                max_per_class=3)
    assert capped.paths == train.paths[:3] + train.paths[15:18]
    assert ImageFolderDataset(root, S, max_per_class=2).paths == [
        f"{root.as_posix()}/{name}" for name in ("ant/000.png", "ant/001.png", "bee/000.png",
                                                 "bee/001.png")]


def test_image_folder_from_tar_gz(tmp_path: Path) -> None:
    files = {f"top/{name}": data for name, data in {**good_files(), **ignored_files()}.items()}
    archive = write_tar(tmp_path / "pets.tar.gz", files)
    for preload in (True, False):
        dataset = ImageFolderDataset(archive, image_size=S, preload=preload)
        assert dataset.classes == ["cat", "dog"] and len(dataset) == len(good_files())
        items = [dataset[i] for i in range(len(dataset))]
        assert all(item["image"].shape == (3, S, S) for item in items)
        assert items[0]["path"].endswith("pets.tar.gz/top/cat/a_photo.jpg")
    assert not (tmp_path / "top").exists()  # read in place, never extracted
    plain = write_tar(tmp_path / "plain.tar", {"x/cat/a.png": files["top/cat/b_photo.png"]}, "w")
    assert len(make_dataset(str(plain), image_size=S, split="all")) == 1


def test_tar_with_unsafe_members_is_handled_safely(tmp_path: Path) -> None:
    png = encode(noise_rgb(8, 8), "PNG")
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("../evil/cat/x.png", "/abs/cat/y.png", "ok/cat/../../../z.png",
                     "ok/cat/fine.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tar.addfile(info, io.BytesIO(png))
        link = tarfile.TarInfo("ok/cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        tar.addfile(link)
    with pytest.warns(UserWarning, match="ignored 3 archive members with unsafe paths"):
        dataset = ImageFolderDataset(archive, image_size=S)
    assert dataset.classes == ["cat"] and len(dataset) == 1
    assert dataset[0]["path"].endswith("ok/cat/fine.png")
    assert not (tmp_path.parent / "evil").exists()

    only_evil = write_tar(tmp_path / "only_evil.tar.gz", {"../cat/x.png": png})
    with pytest.warns(UserWarning, match="unsafe"), pytest.raises(DataError, match="no image"):
        ImageFolderDataset(only_evil, image_size=S)


def test_archive_with_a_huge_member_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """Issue 14, item 5: a small .tar.gz holding a huge member (a decompression bomb) was read
    whole before any check. Now the member's size is checked before reading: it is skipped like
    any unreadable image, with its name and the limit, and memory stays bounded."""
    huge = 200 * 2**20  # zeros: under 1 MB compressed
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("pets/cat/huge.png")
        info.size = huge
        tar.addfile(info, Zeros(huge))
        png = encode(noise_rgb(8, 8), "PNG")
        info = tarfile.TarInfo("pets/dog/fine.png")
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))
    assert archive.stat().st_size < 2 * 2**20
    expected = (r"skipped 1 unreadable image \(first: \S*bomb\.tar\.gz/pets/cat/huge\.png: archive "
                r"member of 200 MiB is over the 64 MiB limit per image\)")
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match=expected):
            dataset = ImageFolderDataset(archive, image_size=S)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The bar is 300 MB; reading the member at all would take 200 MB.
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert [item["path"].rsplit("/", 2)[1] for item in dataset] == ["dog"]
    assert dataset.skipped[0][1] == "archive member of 200 MiB is over the 64 MiB limit per image"

    lazy = ImageFolderDataset(archive, image_size=S, preload=False)  # never held in memory
    assert len(lazy) == 2 and lazy.classes == ["cat", "dog"]
    with pytest.warns(UserWarning, match="huge.png: archive member of 200 MiB is over"):
        assert lazy[0]["path"].endswith("dog/fine.png")


def test_archive_size_limits_name_the_member_and_the_limit(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    png = encode(noise_rgb(8, 8), "PNG")
    archive = write_tar(tmp_path / "pets.tar.gz", {"cat/a.png": png, "dog/b.png": png})
    monkeypatch.setattr(data_folders, "MAX_MEMBER_BYTES", len(png) - 1)
    with pytest.raises(DataError) as info:
        ImageFolderDataset(archive, image_size=S)
    message = str(info.value)
    assert "\n" not in message and message == (
        f"no readable image in {archive}: all 2 failed (first: {archive.as_posix()}/cat/a.png: "
        f"archive member of {len(png):,} bytes is over the {len(png) - 1:,} bytes limit per image)")

    # A header that understates the size cannot get past the limit: reads are capped too.
    class Liar:
        def extractfile(self, member: tarfile.TarInfo) -> io.BytesIO:
            return io.BytesIO(bytes(10 * len(png)))

    member = tarfile.TarInfo("cat/a.png")
    member.size = 1
    with pytest.raises(DataError, match=r"a\.png: archive member is over the [\d,]+ bytes limit"):
        data_folders._read_member(Liar(), member, "a.png")  # type: ignore[arg-type]

    # preload=False keeps the bytes: their total is bounded as well, checked before reading.
    monkeypatch.setattr(data_folders, "MAX_MEMBER_BYTES", 64 * 2**20)
    monkeypatch.setattr(data_folders, "MAX_HELD_BYTES", len(png))
    with pytest.raises(DataError, match=r"cannot hold the images of .*pets\.tar\.gz in memory"):
        ImageFolderDataset(archive, image_size=S, preload=False)
    assert len(ImageFolderDataset(archive, image_size=S)) == 2  # preload holds one at a time


def test_missing_empty_and_unreadable_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files found"):
        ImageFolderDataset(tmp_path / "empty")
    only_bad = write_tree(tmp_path / "bad", bad_files())
    with pytest.raises(DataError, match="no readable image"):
        ImageFolderDataset(only_bad, preload=True)
    lazy = ImageFolderDataset(only_bad, preload=False)
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(DataError, match="readable"):
        lazy[0]
    not_archive = tmp_path / "file.txt"
    not_archive.write_text("hi")
    with pytest.raises(DataError, match="neither a folder nor a tar"):
        ImageFolderDataset(not_archive)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot read archive"):
        ImageFolderDataset(broken)


def test_make_dataset_resolves_names_and_paths(messy_folder: Path) -> None:
    assert isinstance(make_dataset("scenes", S, num_images=3), SyntheticScenes)
    with pytest.warns(UserWarning, match="skipped 3"):
        folder = make_dataset(str(messy_folder), S, split="all")
    assert isinstance(folder, ImageFolderDataset) and len(folder) == len(good_files())
    with pytest.raises(DataError, match=r"did you mean 'scenes'\?") as info:
        make_dataset("scnes", S)
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(DataError, match="digits"):
        make_dataset("no/such/folder", S)


@pytest.mark.skipif(not CIFAR.exists(), reason="CIFAR-10 archive not available")
def test_cifar10_archive_with_max_per_class() -> None:
    dataset = ImageFolderDataset(CIFAR, image_size=32, split="train", max_per_class=20)
    assert dataset.classes == CIFAR_CLASSES
    assert len(dataset) == 200
    assert np.bincount(dataset.labels).tolist() == [20] * 10
    item = dataset[-1]
    assert_image(item["image"], 32)
    assert item["caption"] == "a photo of a truck" and "/train/truck/" in item["path"]
