"""The training source: float pairs from shards or synthesised on the fly, the same pairs either way."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from deblurdiff.errors import UsageError

CROP = 64
SETTINGS = dict(recipe="clean-motion", crop=CROP, crops_per_image=1, seed=5)


@pytest.fixture(scope="module")
def small_corpus(messy_corpus, tmp_path_factory):
    """Four good photos and one broken file."""
    import shutil

    root = tmp_path_factory.mktemp("stream") / "photos"
    root.mkdir()
    for rel in ("astronaut.png", "coffee.JPG", "rocket_cmyk.jpeg", "rotated_exif.jpg", "text_named.png"):
        shutil.copy(messy_corpus.root / rel, root / rel)
    return root


@pytest.fixture(scope="module")
def shards(ray_cluster, small_corpus, tmp_path_factory):
    from deblurdiff.pipelines import run_synth

    out = tmp_path_factory.mktemp("stream") / "pairs"
    run_synth([str(small_corpus)], str(out), shard_size=3, workers=1, **SETTINGS)
    return out


def _pairs(ds, batch_size: int = 3) -> dict[str, np.ndarray]:
    """Iterate like a Ray Train worker does; sharp-crop digest -> blurry."""
    import torch

    out = {}
    for batch in ds.iter_torch_batches(batch_size=batch_size):
        sharp, blurry = batch["sharp"], batch["blurry"]
        assert sharp.dtype == blurry.dtype == torch.float32
        assert sharp.shape[1:] == blurry.shape[1:] == (3, CROP, CROP) and sharp.shape[0] <= batch_size
        assert 0.0 <= float(sharp.min()) and float(sharp.max()) <= 1.0
        for s, b in zip(sharp.numpy(), blurry.numpy()):
            out[hashlib.sha1(np.round(s * 255).astype(np.uint8).tobytes()).hexdigest()] = b
    return out


@pytest.mark.integration
def test_shards_and_on_the_fly_give_the_same_pairs(shards, small_corpus):
    from deblurdiff.pipelines import training_dataset

    from_shards = _pairs(training_dataset(shards=str(shards)))
    on_the_fly = _pairs(training_dataset(images=str(small_corpus), **SETTINGS))
    assert len(from_shards) == 4  # the broken file is skipped (and logged), not fatal
    assert from_shards.keys() == on_the_fly.keys()
    for digest, blurry in from_shards.items():
        np.testing.assert_array_equal(on_the_fly[digest], blurry)
        assert not np.array_equal(blurry, np.zeros_like(blurry))


@pytest.mark.integration
def test_every_pass_over_the_photos_draws_new_crops_and_new_blur(shards, small_corpus):
    from deblurdiff.pipelines import training_dataset

    one_pass = _pairs(training_dataset(images=str(small_corpus), **SETTINGS))
    three = _pairs(training_dataset(images=str(small_corpus), **{**SETTINGS, "passes": 3}))
    again = _pairs(training_dataset(images=str(small_corpus), **{**SETTINGS, "passes": 3}))
    # 4 readable photos × 1 crop × 3 passes: 12 distinct sharp crops; pass 0 is synth's (and the 1-pass stream's)
    assert len(three) == 12 and one_pass.keys() <= three.keys()
    assert three.keys() == again.keys()  # seeded: the same stream on every run (a resume continues it)
    for digest, blurry in again.items():
        np.testing.assert_array_equal(three[digest], blurry)
    # min_pairs asks for as many passes as it takes: ceil(13 / 5 sources listed, the broken one included) = 3.
    assert len(_pairs(training_dataset(images=str(small_corpus), min_pairs=13, **SETTINGS))) == 12


def test_pass_rows_visit_every_photo_once_per_pass_in_a_seeded_order():
    from deblurdiff.pipelines.sources import Source
    from deblurdiff.pipelines.stream import pass_rows

    sources = [Source(key=f"{i}.png", path=f"/p/{i}.png", uri=f"/p/{i}.png") for i in range(6)]
    rows = pass_rows(sources, seed=3, passes=4)
    assert [r["pass"] for r in rows] == [p for p in range(4) for _ in range(6)]
    orders = [[r["source"] for r in rows if r["pass"] == p] for p in range(4)]
    assert all(sorted(o) == sorted(orders[0]) for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # the order changes from pass to pass
    assert pass_rows(sources, seed=3, passes=4) == rows


@pytest.mark.integration
def test_shards_can_be_cropped_smaller(shards):
    import torch

    from deblurdiff.pipelines import training_dataset

    batch = next(iter(training_dataset(shards=str(shards), crop=32).iter_torch_batches(batch_size=4)))
    assert batch["sharp"].shape == batch["blurry"].shape == torch.Size([4, 3, 32, 32])


def test_bad_data_settings_are_usage_errors(tmp_path):
    from deblurdiff.pipelines import training_dataset

    with pytest.raises(UsageError, match="exactly one of data.shards"):
        training_dataset()
    with pytest.raises(UsageError, match="data.shards .*no such file"):
        training_dataset(shards=str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="no .tar shards"):
        training_dataset(shards=str(tmp_path))
    with pytest.raises(UsageError, match="data.images: passes and crops per image must be >= 1, got 0 and 8"):
        training_dataset(images=str(tmp_path), crop=64, passes=0, crops_per_image=8)
    for bad in ((0.0, 1.0), (0.8, 0.5), (0.5, 1.5)):
        with pytest.raises(UsageError, match=r"data.crop_scale: expected \[lo, hi\] with 0 < lo <= hi <= 1"):
            training_dataset(images=str(tmp_path), crop=64, crop_scale=bad)
    with pytest.raises(UsageError, match="data.crop_scale applies to data.images"):
        training_dataset(shards=str(tmp_path), crop_scale=(0.5, 1.0))


def _ruler_photo(height: int = 300, width: int = 400) -> bytes:
    """A PNG whose red channel is the column index / 2 and green the row index / 2: a crop's value spread
    tells how many source pixels it spans."""
    import io

    from PIL import Image

    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([cols // 2, rows // 2, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_crop_scale_shows_each_crop_a_seeded_wider_view_of_the_photo():
    from deblurdiff.pipelines.stages import decode_crops

    photo, crop = _ruler_photo(), 32
    plain = decode_crops(photo, "ruler.png", list(range(8)), crop, seed=1)
    same = decode_crops(photo, "ruler.png", list(range(8)), crop, seed=1, scale_range=(1.0, 1.0))
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(plain, same))  # [1, 1]: the plain crops
    half = decode_crops(photo, "ruler.png", list(range(8)), crop, seed=1, scale_range=(0.5, 0.5))
    drawn = decode_crops(photo, "ruler.png", list(range(8)), crop, seed=1, scale_range=(0.5, 1.0))
    again = decode_crops(photo, "ruler.png", list(range(8)), crop, seed=1, scale_range=(0.5, 1.0))

    def span(c):  # source columns a crop covers, read off its red ruler (2 columns per value)
        red = c.pixels[crop // 2, :, 0].astype(int)
        return 2 * (red[-1] - red[0])

    assert all(c.pixels.shape == (crop, crop, 3) and c.pixels.dtype == np.uint8 for c in half + drawn)
    assert all(span(c) in range(crop - 3, crop + 1) for c in plain)
    assert all(span(c) in range(2 * crop - 6, 2 * crop + 1) for c in half)  # scale 0.5: twice the view
    spans = [span(c) for c in drawn]
    assert all(crop - 4 <= s <= 2 * crop for s in spans) and len(set(spans)) > 3  # a scale per crop
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(drawn, again))  # seeded



@pytest.mark.integration
def test_a_sample_missing_an_image_is_skipped_not_fatal(shards, tmp_path):
    """A shard whose first sample lost its blur.png (a hand-edited or foreign tar): the training stream
    reads every other pair of it (the one shard reader, as eval does)."""
    import io
    import tarfile

    from deblurdiff.pipelines import training_dataset

    source = sorted(shards.glob("shard-*.tar"))[0]
    damaged = tmp_path / "shard-000000.tar"
    with tarfile.open(source) as src, tarfile.open(damaged, "w") as dst:
        members = [m for m in src.getmembers() if m.isfile()]
        first_key = members[0].name.split(".", 1)[0]
        for m in members:
            if m.name != f"{first_key}.blur.png":
                dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
    keys = {m.name.split(".", 1)[0] for m in members}
    pairs = _pairs(training_dataset(shards=str(damaged)))
    assert len(pairs) == len(keys) - 1 >= 1


@pytest.mark.integration
@pytest.mark.faults
def test_a_damaged_shard_and_an_undecodable_png_lose_only_their_own_pairs(shards, tmp_path):
    """One shard cut short in its last sample (a copy interrupted), one whose first sample's blur.png is
    garbage bytes: the training stream reads every intact pair and the job goes on."""
    import io
    import tarfile

    from deblurdiff.pipelines import training_dataset

    first, second = sorted(shards.glob("shard-*.tar"))[:2]
    with tarfile.open(first) as src:
        last = [m for m in src.getmembers() if m.isfile()][-1]  # the last sample's last member
        cut_at = last.offset_data + last.size // 2
        keys_first = {m.name.split(".", 1)[0] for m in src.getmembers() if m.isfile()}
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "shard-000000.tar").write_bytes(first.read_bytes()[:cut_at])
    with tarfile.open(second) as src, tarfile.open(damaged / "shard-000001.tar", "w") as dst:
        members = [m for m in src.getmembers() if m.isfile()]
        garbage_key = members[0].name.split(".", 1)[0]
        for m in members:
            data = b"not a png" * 50 if m.name == f"{garbage_key}.blur.png" else src.extractfile(m).read()
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    keys_second = {m.name.split(".", 1)[0] for m in members}
    pairs = _pairs(training_dataset(shards=str(damaged)))
    assert len(pairs) == (len(keys_first) - 1) + (len(keys_second) - 1) >= 2


def test_a_batch_whose_every_pair_is_undecodable_becomes_an_empty_batch_of_the_same_layout():
    from deblurdiff.pipelines.shard_format import BLUR, SHARP
    from deblurdiff.pipelines.stream import _DecodePairs

    batch = {"__key__": np.array(["a", "b"], dtype=object), SHARP: np.array([b"x" * 20, b"y"], dtype=object),
             BLUR: np.array([b"z", b"not a png"], dtype=object)}
    out = _DecodePairs(crop=CROP, seed=0)(batch)
    assert out["sharp"].shape == out["blurry"].shape == (0, 3, CROP, CROP)
    assert out["sharp"].dtype == out["blurry"].dtype == np.float32
