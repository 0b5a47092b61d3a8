"""`deblurdiff deblur` end to end through the real console script, on a saved tiny pipeline."""

import io

import numpy as np
import pytest
from PIL import Image

from deblurdiff.commands.deblur import FORMAT_CHOICES, SAMPLER_CHOICES


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir


def photo(h, w):
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[50:50 + h, 60:60 + w])


def test_sampler_choices_match_the_pipeline():
    from deblurdiff.diffusion import SAMPLERS

    assert SAMPLER_CHOICES == SAMPLERS


def test_format_choices_match_the_engine():
    from deblurdiff.pipelines.restore import FORMATS

    assert FORMAT_CHOICES == tuple(FORMATS)


def test_deblur_folder_and_file_skips_unreadable(cli, model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo(37, 45)).save(folder / "cat.png")
    buf = io.BytesIO()
    Image.fromarray(photo(30, 22)).save(buf, format="JPEG")
    (folder / "cat_small.jpg").write_bytes(buf.getvalue())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image, not listed")
    single = tmp_path / "single.png"
    Image.fromarray(photo(16, 20)).save(single)
    out = tmp_path / "out"

    r = cli("deblur", str(folder), str(single), "--model", str(model_dir), "--output", str(out),
            "--steps", "2", "--sampler", "dpmpp", "--seed", "1")
    assert r.returncode == 0, r.stderr
    # the folder's tree below it, the single file by its name; no temporary files
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "cat_small.png", "restore-manifest.json", "single.png"]
    assert Image.open(out / "cat.png").size == (45, 37)
    assert Image.open(out / "cat_small.png").size == (22, 30)
    assert "broken.png" in r.stderr and "failed" in r.stderr and "notes.txt" in r.stderr
    assert "3 restored, 0 skipped (already done), 2 failed" in r.stdout


def test_bad_model_dir_exits_2_with_one_line(cli, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(photo(8, 8)).save(image)
    r = cli("deblur", str(image), "--model", str(tmp_path), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "--model" in r.stderr and "not a DeblurDiff pipeline directory" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_nothing_readable_exits_2(cli, model_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    r = cli("deblur", str(bad), str(tmp_path / "missing.png"), "--model", str(model_dir),
            "--output", str(tmp_path / "out"), "--steps", "1")
    assert r.returncode == 2
    assert "bad.jpg" in r.stderr and "missing.png" in r.stderr and "no readable input images" in r.stderr
    assert "empty file" in r.stderr and "no such file" in r.stderr
    assert not any((tmp_path / "out").glob("*.png"))


def test_deblur_without_flags_uses_the_settings_recorded_with_the_model(cli, tmp_path):
    """`deblur photo --model DIR` with no sampler flags runs what the model was validated with."""
    import torch

    from deblurdiff import DeblurDiffPipeline
    from deblurdiff.model_dir import record_sampling
    from deblurdiff.pipelines.restore import image_seed

    model = tmp_path / "model"
    DeblurDiffPipeline.from_preset("tiny").save_pretrained(model)
    recorded = {"sampler": "dpmpp", "steps": 4, "strength": 0.5}
    record_sampling(model, recorded)
    pipe = DeblurDiffPipeline.from_pretrained(model)
    assert pipe.default_sampling() == recorded
    pipe.set_progress_bar_config(disable=True)
    rgb = photo(24, 32)
    Image.fromarray(rgb).save(tmp_path / "cat.png")

    def restore(**settings):
        # the CLI seeds each image from (--seed, its relative path) and restores on one torch thread
        seed = image_seed(0, "cat.png")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            image = pipe(rgb, generator=torch.Generator().manual_seed(seed), output_type="np", **settings).images[0]
        finally:
            torch.set_num_threads(threads)
        return (image * 255).round().astype(np.uint8)

    r = cli("deblur", str(tmp_path / "cat.png"), "--model", str(model), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "dpmpp, 4 steps, strength 0.5" in r.stdout
    written = np.asarray(Image.open(tmp_path / "out" / "cat.png"))
    expected = restore(sampler="dpmpp", num_inference_steps=4, strength=0.5)
    assert np.array_equal(written, expected)  # the recorded settings, the same bytes
    released = restore(sampler="ddpm", num_inference_steps=4, strength=1.0)
    assert np.abs(written.astype(int) - released).max() > 1  # and not the released sampler's

    # a flag overrides the recorded value, the rest stay recorded
    r = cli("deblur", str(tmp_path / "cat.png"), "--model", str(model), "--output", str(tmp_path / "out2"),
            "--strength", "1")
    assert r.returncode == 0 and "dpmpp, 4 steps, strength 1" in r.stdout, r.stderr


def test_strength_that_leaves_no_step_exits_2(cli, model_dir, tmp_path):
    Image.fromarray(photo(8, 8)).save(tmp_path / "a.png")
    r = cli("deblur", str(tmp_path / "a.png"), "--model", str(model_dir), "--output", str(tmp_path / "o"),
            "--steps", "4", "--strength", "0.1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "strength" in r.stderr


def test_the_packaged_model_deblurs_by_name_with_no_other_flags(cli, tmp_path):
    """`deblurdiff deblur photo.png --model tiny-small-handheld`: the shipped model, its recorded settings."""
    Image.fromarray(photo(40, 48)).save(tmp_path / "cat.png")
    # run where no folder of that name exists: the name means the packaged model
    r = cli("deblur", "cat.png", "--model", "tiny-small-handheld", "--output", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out" / "cat.png").size == (48, 40)
    assert "dpmpp" in r.stderr + r.stdout  # the settings it reports are the packaged model's


def test_a_rerun_skips_done_outputs_refuses_other_settings_and_overwrite_redoes(cli, model_dir, tmp_path):
    import json

    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    Image.fromarray(photo(24, 32)).save(folder / "a.png")
    Image.fromarray(photo(16, 16)).save(tmp_path / "in" / "b.jpg", quality=95)
    args = ["deblur", str(tmp_path / "in"), "--model", str(model_dir), "--output", str(tmp_path / "out"),
            "--steps", "1", "--sampler", "dpmpp", "--format", "webp"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.webp")) == \
        ["b.webp", "sub/a.webp"]  # the input tree, the format's suffix
    written = (tmp_path / "out" / "sub" / "a.webp").read_bytes()

    again = cli(*args)
    assert again.returncode == 0 and "0 restored, 2 skipped (already done), 0 failed" in again.stdout, again.stderr
    manifest = json.loads((tmp_path / "out" / "restore-manifest.json").read_text())
    assert manifest["totals"] == {"inputs": 2, "restored": 0, "already_done": 2, "failed": 0}

    other = cli(*args[:-2], "--format", "png")  # other settings into the same folder
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "--overwrite" in other.stderr and "format" in other.stderr

    redo = cli(*args, "--overwrite", "--seed", "7")
    assert redo.returncode == 0 and "2 restored, 0 skipped" in redo.stdout, redo.stderr
    assert (tmp_path / "out" / "sub" / "a.webp").read_bytes() != written  # another seed, really redone
