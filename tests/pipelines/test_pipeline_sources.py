"""Listing, planning and the per-sample stages, without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


from deblurdiff.errors import UsageError
from deblurdiff.imageio import ImageDecodeError, read_rgb
from deblurdiff.pipelines.plan import crop_box, plan_shards, sample_key, sample_seed
from deblurdiff.pipelines.sources import list_sources, read_source
from deblurdiff.pipelines.stages import decode_crops, encode_sample, synthesize_crops

CROP = 64  # the messy corpus' photos are 100-192 px


def test_lists_every_image_recursively_case_insensitive_and_tar_members(messy_corpus):
    corpus = list_sources([str(messy_corpus.root)])
    keys = [s.key for s in corpus.sources]
    assert keys == sorted(keys)
    name = messy_corpus.root.name
    for rel in messy_corpus.good:  # .JPG, nested/deeper/*.webp, .tiff, ...
        assert f"{name}/{rel}" in keys
    for key in messy_corpus.tar_samples:  # WebDataset samples: one source each, image member chosen
        source = next(s for s in corpus.sources if s.key == f"{name}/shards/photos-000000.tar/{key}")
        assert source.member == f"{key}.jpg"
        assert read_source(source, corpus.filesystems)[:2] == b"\xff\xd8"  # the JPEG bytes, by range read
    # broken files with image names are sources (decoding decides); the .txt is skipped at listing
    assert f"{name}/empty.png" in keys and f"{name}/text_named.png" in keys
    assert [(Path(s.path).name, s.reason) for s in corpus.skipped] == [("notes.txt", "not an image file (extension '.txt')")]
    assert len(corpus.sources) == messy_corpus.n_sources


def test_keys_do_not_depend_on_where_the_corpus_lives(messy_corpus, tmp_path):
    import shutil

    moved = tmp_path / messy_corpus.root.name
    shutil.copytree(messy_corpus.root, moved)
    a = [s.key for s in list_sources([str(messy_corpus.root)]).sources]
    b = [s.key for s in list_sources([f"file://{moved}"]).sources]  # a URI works too
    assert a == b


def test_list_files_and_explicit_files(messy_corpus, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# two photos\n{messy_corpus.root / 'astronaut.png'}\n\n{messy_corpus.root / 'rocket.bmp'}\n")
    corpus = list_sources([str(listing), str(messy_corpus.root / "coffee.JPG")])
    assert sorted(s.key for s in corpus.sources) == ["astronaut.png", "coffee.JPG", "rocket.bmp"]


def test_missing_input_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match=r"--input .*nope: no such file or directory"):
        list_sources([str(tmp_path / "nope")])


def test_not_a_tar_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "fake.tar").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "ok.png").write_bytes(b"")
    corpus = list_sources([str(tmp_path)])
    assert [s.key for s in corpus.sources] == [f"{tmp_path.name}/ok.png"]
    assert corpus.skipped[0].path.endswith("fake.tar") and "tar" in corpus.skipped[0].reason


def test_plan_fills_shards_source_major(messy_corpus):
    corpus = list_sources([str(messy_corpus.root)])
    plans = plan_shards(corpus, crops_per_image=3, shard_size=4)
    total = len(corpus.sources) * 3
    assert [p.stop - p.start for p in plans] == [4] * (total // 4) + ([total % 4] if total % 4 else [])
    flat = [(s.key, i) for p in plans for s, idx in p.by_source(3) for i in idx]
    assert [i for _, i in flat] == list(range(total))
    assert [k for k, i in flat] == [s.key for s in corpus.sources for _ in range(3)]


def test_seeds_are_stable_across_processes():
    here = [sample_seed(7, "corpus/a.png", 2, "blur"), sample_seed(7, "corpus/a.png", 2, "crop")]
    code = ("from deblurdiff.pipelines.plan import sample_seed; "
            "print(sample_seed(7, 'corpus/a.png', 2, 'blur'), sample_seed(7, 'corpus/a.png', 2, 'crop'))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.split()
    assert [int(x) for x in there] == here
    assert len(set(here)) == 2 and all(0 <= s < 2**63 for s in here)
    assert sample_seed(8, "corpus/a.png", 2, "blur") != here[0]


def test_decode_crops_handles_every_format_and_rejects_bad_files(messy_corpus):
    for rel, (h, w) in messy_corpus.good.items():
        data = (messy_corpus.root / rel).read_bytes()
        crops = decode_crops(data, rel, [0, 1], CROP, seed=0)
        for crop in crops:
            assert crop.pixels.shape == (CROP, CROP, 3) and crop.pixels.dtype == np.uint8
            assert crop.source_size == (h, w), rel  # EXIF orientation applied before cropping
            assert 0 <= crop.top <= h - CROP and 0 <= crop.left <= w - CROP
            full = read_rgb(messy_corpus.root / rel)
            np.testing.assert_array_equal(crop.pixels, full[crop.top : crop.top + CROP, crop.left : crop.left + CROP])
    # 16-bit: scaled to 8 bits (x*257 -> x), not clipped at 255
    gray16 = decode_crops((messy_corpus.root / "gray16.png").read_bytes(), "k", [0], CROP, 0)[0]
    camera = decode_crops((messy_corpus.root / "camera_gray.tiff").read_bytes(), "k", [0], CROP, 0)[0]
    np.testing.assert_array_equal(gray16.pixels, camera.pixels)
    for rel, words in messy_corpus.bad.items():
        if rel.endswith(".txt"):
            continue
        with pytest.raises(ImageDecodeError, match=words):
            decode_crops((messy_corpus.root / rel).read_bytes(), rel, [0], CROP, 0)


def test_crop_boxes_and_samples_are_deterministic(messy_corpus):
    data = (messy_corpus.root / "astronaut.png").read_bytes()
    a = decode_crops(data, "corpus/astronaut.png", [0, 1, 2], CROP, seed=3)
    b = decode_crops(data, "corpus/astronaut.png", [2], CROP, seed=3)
    assert (a[2].top, a[2].left) == (b[0].top, b[0].left)  # a crop does not depend on its siblings
    assert len({(c.top, c.left) for c in a}) == 3
    assert crop_box(4, "corpus/astronaut.png", 0, 192, 192, CROP) != (a[0].top, a[0].left)

    sharp = np.stack([c.pixels for c in a])
    seeds = [sample_seed(3, "corpus/astronaut.png", i, "blur") for i in range(3)]
    blurry, kernels, params = synthesize_crops(sharp, seeds, "clean-motion")
    again, _, _ = synthesize_crops(sharp[1:2], seeds[1:2], "clean-motion")  # alone, other batch
    np.testing.assert_array_equal(blurry[1], again[0])
    assert blurry.dtype == np.uint8 and blurry.shape == sharp.shape
    assert not np.array_equal(blurry, sharp)
    members = encode_sample(sharp[0], blurry[0], kernels[0], {"b": 1, "a": params[0]["seed"]})
    assert sorted(members) == ["blur.png", "kernel.npy", "meta.json", "sharp.png"]
    assert members == encode_sample(sharp[0], blurry[0], kernels[0], {"a": params[0]["seed"], "b": 1})
    assert json.loads(members["meta.json"]) == {"a": seeds[0], "b": 1}


def test_sample_keys_are_webdataset_safe(messy_corpus):
    corpus = list_sources([str(messy_corpus.root)])
    keys = [sample_key(i, s) for i, s in enumerate(corpus.sources)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all("." not in k and "/" not in k for k in keys)


@pytest.mark.gpu
def test_shard_builder_on_cuda_matches_cpu(messy_corpus, tmp_path):
    """The GPU actor path (device="cuda"): same samples as on CPU up to rounding of the blur."""
    import tarfile

    import pyarrow.fs as pafs

    from deblurdiff.blur_synthesis import load_recipe
    from deblurdiff.pipelines.sink import OutputDir
    from deblurdiff.pipelines.synth import ShardBuilder

    corpus = list_sources([str(messy_corpus.root / "astronaut.png"), str(messy_corpus.root / "rocket.bmp")])
    plan = plan_shards(corpus, crops_per_image=2, shard_size=4)[0]
    blurs = {}
    for device in ("cpu", "cuda"):
        out = OutputDir(pafs.LocalFileSystem(), str(tmp_path / device), str(tmp_path / device))
        out.prepare()
        builder = ShardBuilder(recipe=load_recipe("clean-motion"), crop=CROP, crops_per_image=2, seed=0, output=out,
                               filesystems=corpus.filesystems, batch_size=4, device=device, threads=1)
        assert builder.build(plan).samples == 4
        with tarfile.open(tmp_path / device / plan.name) as tar:
            blurs[device] = {m.name: read_png(tar.extractfile(m).read()) for m in tar if m.name.endswith(".png")}
    assert blurs["cpu"].keys() == blurs["cuda"].keys()
    for name, cpu in blurs["cpu"].items():
        diff = np.abs(cpu.astype(int) - blurs["cuda"][name].astype(int))
        assert diff.max() <= 1, name  # 8-bit rounding of float differences only


def read_png(data: bytes) -> np.ndarray:
    from deblurdiff.imageio import decode_rgb

    return decode_rgb(data)
