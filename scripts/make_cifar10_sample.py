"""Write the CIFAR-10 sample that ships with the package (spae_lab/assets/cifar10_sample.tar).

    python scripts/make_cifar10_sample.py ../shared/data/cifar10/cifar10-train-jpeg.tar.gz

The first PER_CLASS images of each class of the archive's held-out split (seed 0): images that
neither the shipped tokenizers nor the shipped teacher trained on. The demo and the notebooks run
few-shot on them, so a user needs no download. The JPEG bytes are copied unchanged.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

from spae_lab.data import ImageFolderDataset

PER_CLASS = 30
OUT = Path(__file__).resolve().parents[1] / "spae_lab" / "assets" / "cifar10_sample.tar"


def main(archive: str) -> None:
    heldout = ImageFolderDataset(archive, 32, split="heldout", seed=0, max_per_class=PER_CLASS)
    with tarfile.open(archive) as src, tarfile.open(OUT, "w") as dst:
        members = {m.name: m for m in src.getmembers() if m.isfile()}
        for path in heldout.paths:
            member = members[path[len(archive) + 1:]]  # paths read ARCHIVE/train/<class>/<n>.jpg
            data = src.extractfile(member).read()
            info = tarfile.TarInfo("/".join(Path(member.name).parts[-2:]))
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    print(f"{OUT}: {len(heldout)} images, {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main(sys.argv[1])
