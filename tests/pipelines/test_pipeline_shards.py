"""``run_synth`` on the real two-node Ray cluster: manifest, readable shards, determinism, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # whole stack: the two-node Ray cluster

from deblurdiff.errors import UsageError
from deblurdiff.imageio import read_rgb

CROP = 64
SETTINGS = dict(recipe="realistic", crop=CROP, crops_per_image=2, seed=11, shard_size=5)


@pytest.fixture(scope="module")
def runs(ray_cluster, messy_corpus, tmp_path_factory):
    """The same corpus synthesised with 2 workers and with 1 worker."""
    from deblurdiff.pipelines import run_synth

    base = tmp_path_factory.mktemp("synth")
    two = run_synth([str(messy_corpus.root)], str(base / "w2"), workers=2, **SETTINGS)
    one = run_synth([str(messy_corpus.root)], str(base / "w1"), workers=1, **SETTINGS)
    return {"w2": (base / "w2", two), "w1": (base / "w1", one)}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_manifest_lists_shards_counts_recipe_seed_and_every_skipped_input(runs, messy_corpus):
    from deblurdiff.blur_synthesis import load_recipe

    out, summary = runs["w2"]
    m = _manifest(out)
    n_sources = messy_corpus.n_sources
    good_samples = 2 * (len(messy_corpus.good) + len(messy_corpus.tar_samples))
    assert m["recipe"] == {"name": "realistic", "hash": load_recipe("realistic").hash}
    assert (m["seed"], m["crop"], m["crops_per_image"], m["shard_size"]) == (11, CROP, 2, 5)
    n_shards = -(-2 * n_sources // 5)
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(n_shards)]
    assert sorted(p.name for p in out.glob("shard-*")) == [s["name"] for s in m["shards"]]  # no temp files
    assert sum(s["samples"] for s in m["shards"]) == m["totals"]["samples"] == good_samples == summary.samples
    assert m["status"] == "complete"
    assert m["totals"] == {"sources": n_sources, "samples": good_samples, "shards": n_shards,
                           "planned_shards": n_shards, "skipped": len(messy_corpus.bad)}
    reasons = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert set(reasons) == set(messy_corpus.bad)
    for name, words in messy_corpus.bad.items():
        assert words in reasons[name], (name, reasons[name])
    for item in m["skipped"]:  # which shards lost the input's crops (none for listing-time skips)
        assert item["shards"] or item["path"].endswith(".txt")
    assert sorted(p.name for p in out.iterdir()) == sorted([s["name"] for s in m["shards"]] + ["manifest.json"])
    assert summary.skipped == len(messy_corpus.bad) and summary.shards_written == n_shards
    assert "pairs/s" in summary.line() and f"{good_samples} samples" in summary.line()


def test_shards_read_with_webdataset_and_ray_data(runs, messy_corpus):
    import ray.data
    import webdataset as wds

    out, summary = runs["w2"]
    m = _manifest(out)
    tars = [str(out / s["name"]) for s in m["shards"]]
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert len(samples) == summary.samples
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for s in samples:
        sharp, blur, kernel, meta = s["sharp.png"], s["blur.png"], s["kernel.npy"], s["meta.json"]
        assert sharp.shape == blur.shape == (CROP, CROP, 3) and sharp.dtype == np.uint8
        assert kernel.dtype == np.float32 and kernel.ndim == 3 and abs(float(kernel[0].sum()) - 1) < 1e-3
        assert meta["key"] == s["__key__"] and meta["seed"] == 11
        assert meta["recipe"]["name"] == "realistic" and meta["params"]["seed"] == meta["sample_seed"]
        assert meta["params"]["blur"]["psfs"], "every sampled parameter is recorded"
        box = meta["crop_box"]
        if ".tar:" not in meta["source"]:  # the sharp crop is exactly the source's pixels at crop_box
            full = read_rgb(meta["source"])
            assert full.shape[:2] == (meta["source_size"]["height"], meta["source_size"]["width"])
            np.testing.assert_array_equal(sharp, full[box["top"] : box["top"] + CROP, box["left"] : box["left"] + CROP])
    sources = {s["meta.json"]["source"] for s in samples}
    assert {Path(p).name for p in sources} >= {"rotated_exif.jpg", "gray16.png", "rocket_cmyk.jpeg"}
    assert any(p.endswith("photos-000000.tar:cat.jpg") for p in sources)

    ds = ray.data.read_webdataset(tars, decoder=None)
    rows = ds.take_all()
    assert len(rows) == summary.samples
    assert sorted(r["__key__"] for r in rows) == keys
    assert {"sharp.png", "blur.png", "kernel.npy", "meta.json"} <= set(rows[0])


def test_same_bytes_whatever_the_worker_count(runs):
    (two, _), (one, _) = runs["w2"], runs["w1"]
    names = sorted(p.name for p in two.glob("shard-*.tar"))
    assert names == sorted(p.name for p in one.glob("shard-*.tar")) and names
    for name in names:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


def test_work_ran_on_both_nodes(runs):
    import ray

    _, summary = runs["w2"]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(summary.nodes) == 2 and set(summary.nodes) == alive


def test_resume_rebuilds_only_missing_shards(runs, messy_corpus, tmp_path):
    from deblurdiff.pipelines import run_synth

    original, _ = runs["w1"]
    out = tmp_path / "resumed"
    shutil.copytree(original, out)
    (out / "shard-000002.tar").unlink()
    # As if the run died after shard 5 was renamed but before the manifest listed it: the shard is
    # complete (final name); its count and its skipped inputs (text_named.png, tiny.png) are
    # recovered from the shard itself.
    m = _manifest(out)
    m["status"] = "running"
    m["shards"] = [s for s in m["shards"] if s["name"] != "shard-000005.tar"]
    for item in m["skipped"]:
        item["shards"] = [s for s in item["shards"] if s != "shard-000005.tar"]
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "shard-000001.tar.tmp-0123").write_bytes(b"partial")  # a crash leftover
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}

    with pytest.raises(UsageError, match="--resume"):
        run_synth([str(messy_corpus.root)], str(out), workers=1, **SETTINGS)
    with pytest.raises(UsageError, match="--seed 11, now 12"):
        run_synth([str(messy_corpus.root)], str(out), workers=1, resume=True, **{**SETTINGS, "seed": 12})

    summary = run_synth([str(messy_corpus.root)], str(out), workers=2, resume=True, **SETTINGS)
    assert summary.shards_written == 1
    for name, before in mtimes.items():
        assert (out / name).stat().st_mtime_ns == before, f"{name} was touched"
    assert not list(out.glob("*.tmp-*"))
    for p in original.glob("shard-*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes()
    resumed, first = _manifest(out), _manifest(original)
    assert [(s["name"], s["samples"]) for s in resumed["shards"]] == [(s["name"], s["samples"]) for s in first["shards"]]
    assert resumed["skipped"] == first["skipped"] and resumed["totals"] == first["totals"]
    assert resumed["last_run"]["shards_written"] == 1 and resumed["status"] == "complete"


@pytest.mark.faults
def test_resume_builds_again_a_shard_damaged_since_it_was_written(runs, messy_corpus, tmp_path, caplog):
    """Shards cut short after the run (a copy interrupted, a full disk): one the manifest lists (its size is
    not the recorded one), one it does not list yet (its headers do not read). --resume builds both again,
    byte-identical, and keeps the others untouched."""
    from deblurdiff.pipelines import run_synth

    original, _ = runs["w1"]
    out = tmp_path / "resumed"
    shutil.copytree(original, out)
    for name in ("shard-000001.tar", "shard-000003.tar"):
        whole = (out / name).read_bytes()
        (out / name).write_bytes(whole[: len(whole) // 2])
    m = _manifest(out)
    assert all(s["bytes"] == (original / s["name"]).stat().st_size for s in m["shards"])
    m["shards"] = [s for s in m["shards"] if s["name"] != "shard-000003.tar"]
    (out / "manifest.json").write_text(json.dumps(m))

    with caplog.at_level("WARNING", logger="deblurdiff.pipelines.synth"):
        summary = run_synth([str(messy_corpus.root)], str(out), workers=1, resume=True, **SETTINGS)
    assert "shard-000001.tar is" in caplog.text and "shard-000003.tar is damaged" in caplog.text
    assert summary.shards_written == 2
    for p in original.glob("shard-*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes()
    listed = lambda m: [(s["name"], s["samples"], s["bytes"]) for s in m["shards"]]  # noqa: E731
    assert listed(_manifest(out)) == listed(_manifest(original))


@pytest.mark.parametrize("damage", ["{\"shards\": [{\"name\": 3}]", "[1, 2]", "{\"shards\": \"all\"}"])
def test_resume_over_a_torn_or_foreign_manifest_keeps_the_shards(runs, messy_corpus, tmp_path, caplog, damage):
    """A manifest.json that is cut short, or JSON that is not a synth manifest: --resume warns, keeps every
    complete shard and recovers their records from the shards themselves."""
    from deblurdiff.pipelines import run_synth

    original, _ = runs["w1"]
    out = tmp_path / "resumed"
    shutil.copytree(original, out)
    (out / "shard-000002.tar").unlink()
    (out / "manifest.json").write_text(damage)
    with caplog.at_level("WARNING", logger="deblurdiff.pipelines.synth"):
        summary = run_synth([str(messy_corpus.root)], str(out), workers=1, resume=True, **SETTINGS)
    assert "no usable manifest.json" in caplog.text
    assert summary.shards_written == 1
    for p in original.glob("shard-*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes()
    resumed, first = _manifest(out), _manifest(original)
    assert resumed["totals"] == first["totals"] and resumed["skipped"] == first["skipped"]


def test_any_fsspec_filesystem_for_inputs_and_output(ray_cluster, messy_corpus, tmp_path):
    """The pyarrow-wrapped fsspec path (what s3fs/gcsfs use), with URIs on both sides."""
    import fsspec

    from deblurdiff.pipelines import run_synth

    out = tmp_path / "via-fsspec"
    summary = run_synth([f"file://{messy_corpus.root / 'astronaut.png'}", f"file://{messy_corpus.root / 'shards'}"],
                        f"file://{out}", filesystem=fsspec.filesystem("file"), workers=1,
                        **{**SETTINGS, "shard_size": 10})
    assert summary.samples == 6 and summary.shards == 1
    m = _manifest(out)
    assert m["inputs"][0].startswith("file://") and m["shards"][0]["samples"] == 6
    assert not list(out.glob("*.tmp-*")) and (out / "shard-000000.tar").stat().st_size > 0
