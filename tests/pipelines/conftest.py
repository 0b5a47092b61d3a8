"""A messy corpus of real photos (scikit-image's bundled samples), built once per session.

Good inputs, one per format/mode the pipeline must handle, and bad inputs with the reason each must
be skipped for. ``MessyCorpus.good`` maps each good file to the (H, W) it decodes to (EXIF applied).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CROP = 64


@dataclass
class MessyCorpus:
    root: Path
    good: dict[str, tuple[int, int]] = field(default_factory=dict)  # relative path -> decoded (H, W)
    bad: dict[str, str] = field(default_factory=dict)  # relative path -> expected words in the reason
    tar_samples: list[str] = field(default_factory=list)  # WebDataset sample keys inside shards/photos.tar

    @property
    def n_sources(self) -> int:
        return len(self.good) + len(self.tar_samples) + len([b for b in self.bad if not b.endswith(".txt")])


def _save(img: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


def build_messy_corpus(root: Path) -> MessyCorpus:
    import skimage.data as sd

    c = MessyCorpus(root)
    astronaut = Image.fromarray(sd.astronaut()).resize((192, 192))  # small originals keep decode cheap
    coffee = Image.fromarray(sd.coffee()).resize((180, 120))
    chelsea = Image.fromarray(sd.chelsea()).resize((150, 100))
    rocket = Image.fromarray(sd.rocket()).resize((160, 107))
    camera = Image.fromarray(sd.camera()).resize((128, 128))

    def good(rel: str, img: Image.Image, size_hw: tuple[int, int], **kwargs) -> None:
        _save(img, root / rel, **kwargs)
        c.good[rel] = size_hw

    good("astronaut.png", astronaut, (192, 192))
    good("coffee.JPG", coffee, (120, 180), quality=92)  # upper-case extension
    good("nested/deeper/chelsea.webp", chelsea, (100, 150), quality=90)  # recursion + WebP
    good("rocket.bmp", rocket, (107, 160))
    good("camera_gray.tiff", camera, (128, 128))  # grayscale TIFF
    # 16-bit grayscale PNG: values above 255 must be scaled, not clipped
    gray16 = (np.asarray(camera, dtype=np.uint16) * 257).astype(np.uint16)
    img16 = Image.fromarray(gray16)
    assert img16.mode == "I;16", img16.mode
    good("gray16.png", img16, (128, 128))
    good("chelsea_rgba.png", chelsea.convert("RGBA"), (100, 150))
    good("coffee_palette.png", coffee.quantize(64), (120, 180))
    good("rocket_cmyk.jpeg", rocket.convert("CMYK"), (107, 160), quality=92)
    # EXIF orientation 6 (rotate 90° CW to display): stored 180x120, displayed 120x180 (H=180, W=120)
    exif = Image.Exif()
    exif[0x0112] = 6
    good("rotated_exif.jpg", coffee, (180, 120), exif=exif.tobytes(), quality=92)

    # A WebDataset shard of photos (jpg + cls members), as another source type.
    tar_path = root / "shards" / "photos-000000.tar"
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w") as tar:
        for key, img in (("cat", chelsea), ("mug", coffee)):
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            c.tar_samples.append(key)

    # Bad inputs: each must be skipped with its reason.
    (root / "empty.png").write_bytes(b"")
    c.bad["empty.png"] = "empty"
    buf = io.BytesIO()
    astronaut.save(buf, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    c.bad["truncated.jpg"] = "truncated"
    (root / "text_named.png").write_text("this is not a PNG\n")
    c.bad["text_named.png"] = "not an image"
    _save(astronaut.resize((40, 32)), root / "tiny.png")
    c.bad["tiny.png"] = "smaller than the crop"
    (root / "notes.txt").write_text("a file that is not an image\n")
    c.bad["notes.txt"] = "not an image file"
    return c


@pytest.fixture(scope="session")
def messy_corpus(tmp_path_factory) -> MessyCorpus:
    return build_messy_corpus(tmp_path_factory.mktemp("messy") / "corpus")
