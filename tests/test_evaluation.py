"""`deblurdiff eval`: metrics on paired data from folders or shards, skipped pairs reported."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data as photos

from deblurdiff.errors import UsageError
from deblurdiff.evaluation import evaluate, iter_pairs

STEPS = 2


def _photo(name: str, size=(56, 40)) -> Image.Image:
    return Image.fromarray(getattr(photos, name)()).resize(size, Image.BICUBIC)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    (root / "blur").mkdir()
    (root / "sharp").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        sharp = _photo(name)
        sharp.save(root / "sharp" / f"{name}.png")
        sharp.filter(ImageFilter.GaussianBlur(1.5)).save(root / "blur" / f"{name}.png")
    (root / "blur" / "broken.png").write_bytes(b"not a png at all")
    (root / "sharp" / "broken.png").write_bytes(_png(_photo("rocket")))
    _photo("rocket").save(root / "sharp" / "unpaired.png")
    return root


def test_folder_pairs_are_matched_by_stem_and_problems_reported(folder_pairs):
    items = list(iter_pairs(folder_pairs))
    good = sorted(i.key for i in items if hasattr(i, "sharp"))
    bad = {i.key: i.reason for i in items if hasattr(i, "reason")}
    assert good == ["astronaut", "chelsea", "coffee"]
    assert "not an image" in bad["broken"]
    assert "no blur image" in bad["unpaired"]


def test_shards_are_read(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        for name in ("astronaut", "coffee"):
            sharp = _photo(name)
            sink.write({"__key__": name, "sharp.png": _png(sharp),
                        "blur.png": _png(sharp.filter(ImageFilter.BoxBlur(2)))})
        sink.write({"__key__": "half", "sharp.png": _png(_photo("rocket"))})
    items = list(iter_pairs(tmp_path))
    assert sorted(i.key for i in items if hasattr(i, "sharp")) == ["shard-000000.tar/astronaut",
                                                                  "shard-000000.tar/coffee"]
    assert [i.reason for i in items if hasattr(i, "reason")] == ["no blur image for this key"]


@pytest.mark.faults
def test_a_damaged_shard_loses_only_what_follows_the_damage(tmp_path):
    """A shard cut short in its last sample (a copy interrupted) and a .tar that is no tar at all: every
    intact pair is read, and each damaged shard is reported once instead of ending the evaluation."""
    import tarfile

    import webdataset as wds

    whole = tmp_path / "whole.tar"
    with wds.TarWriter(str(whole)) as sink:
        for name in ("astronaut", "coffee", "chelsea"):
            sharp = _photo(name)
            blurred = sharp.filter(ImageFilter.BoxBlur(2))
            sink.write({"__key__": name, "sharp.png": _png(sharp), "blur.png": _png(blurred)})
    with tarfile.open(whole) as tar:
        last = tar.getmembers()[-1]  # chelsea's last image
    data = tmp_path / "data"
    data.mkdir()
    (data / "shard-000000.tar").write_bytes(whole.read_bytes()[: last.offset_data + last.size // 2])
    (data / "shard-000001.tar").write_bytes(b"\x17" * 3000)
    items = list(iter_pairs(data))
    assert [i.key for i in items if hasattr(i, "sharp")] == ["shard-000000.tar/astronaut", "shard-000000.tar/coffee"]
    skipped = {i.key: i.reason for i in items if hasattr(i, "reason")}
    assert set(skipped) == {"shard-000000.tar", "shard-000001.tar"}
    assert "after 2 sample(s): damaged tar" in skipped["shard-000000.tar"]


def test_evaluate_writes_summary_csv_and_sheet(tiny_pipe, folder_pairs, tmp_path):
    out = tmp_path / "eval" / "summary.json"
    summary = evaluate(tiny_pipe, folder_pairs, out, steps=STEPS, progress=False)
    on_disk = json.loads(out.read_text())
    assert on_disk == summary
    assert summary["pairs"] == 3
    assert {s["key"] for s in summary["skipped"]} == {"broken", "unpaired"}
    assert summary["lpips"].startswith("skipped")  # never downloaded
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["key"] for r in rows] == ["astronaut", "chelsea", "coffee"]
    # PSNR of the blurry input is exactly the textbook formula
    sharp = np.asarray(Image.open(folder_pairs / "sharp" / "astronaut.png"), dtype=np.float64) / 255
    blur = np.asarray(Image.open(folder_pairs / "blur" / "astronaut.png"), dtype=np.float64) / 255
    expected = 10 * math.log10(1 / np.mean((sharp - blur) ** 2))
    assert float(rows[0]["psnr_blurry"]) == pytest.approx(expected, abs=1e-3)
    assert summary["psnr_blurry"] == pytest.approx(np.mean([float(r["psnr_blurry"]) for r in rows]))
    # an untrained LKPN is the identity (zero-initialised output conv): ẑ == z_b
    assert summary["lkpn_latent_mse"] == pytest.approx(summary["blurry_latent_mse"], rel=1e-5)
    sheet = Image.open(summary["contact_sheet"])
    assert sheet.height == 16 + 3 * 160 + 2 * 4  # a caption row, then three rows of blurry / restored / sharp
    captions = np.asarray(sheet.convert("L"))[:16]
    assert captions.min() < 100 and (captions < 100).mean() < 0.2  # dark text on white, naming the columns
    assert not list(out.parent.glob(".*"))  # no temporary files left behind


def test_limit_and_no_usable_pairs(tiny_pipe, folder_pairs, tmp_path):
    summary = evaluate(tiny_pipe, folder_pairs, tmp_path / "s.json", steps=1, limit=1, progress=False)
    assert summary["pairs"] == 1
    empty = tmp_path / "empty"
    (empty / "blur").mkdir(parents=True)
    (empty / "sharp").mkdir()
    with pytest.raises(UsageError, match="no usable pairs"):
        evaluate(tiny_pipe, empty, tmp_path / "t.json", steps=1, progress=False)


def test_cli_bad_inputs_exit_2_with_one_line(cli, tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    cases = [
        (["--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--output", "o.json"], "--model"),
        (["--model", model, "--data", str(tmp_path / "missing"), "--output", "o.json"], "--data"),
        (["--model", model, "--data", str(tmp_path), "--output", "o.json"], "--data"),  # no shards/folders
        (["--model", model, "--data", str(tmp_path), "--output", "o.json", "--sampler", "euler"], "--sampler"),
    ]
    for args, named in cases:
        result = cli("eval", *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], result.stderr


def test_choose_sampling_takes_the_best_and_of_near_ties_the_fewest_denoising_steps():
    from deblurdiff.evaluation import TIE_DB, choose_sampling

    def row(steps, strength, psnr):
        return {"sampler": "dpmpp", "steps": steps, "strength": strength, "psnr_restored": psnr}

    rows = [row(10, 1.0, 30.002), row(10, 0.3, 30.0), row(20, 0.05, 30.001)]  # one ẑ, any strength
    assert choose_sampling(rows) == {"sampler": "dpmpp", "steps": 20, "strength": 0.05}  # 1 step, not 10
    rows = [row(10, 1.0, 31.0), row(20, 0.05, 31.0 - 2 * TIE_DB)]  # a real difference wins over cost
    assert choose_sampling(rows) == {"sampler": "dpmpp", "steps": 10, "strength": 1.0}
