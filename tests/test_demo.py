"""`deblurdiff demo`: argument checks, the photo corpus it relies on, and a shortened quickstart end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from deblurdiff.demo import (BEFORE_AFTER, BLURRED_PHOTO, CROP, FINETUNE_LR, HELD_OUT_CROPS_PER_IMAGE, HELD_OUT_PHOTOS,
                             PRETRAINED, RECIPE, STAGES, TRAIN_PHOTOS, VALIDATION_PHOTOS, _photo_paths, _training_config)
from deblurdiff.evaluation import TIE_DB


def test_photos_are_bundled_and_the_three_splits_are_disjoint():
    paths = _photo_paths(TRAIN_PHOTOS + VALIDATION_PHOTOS + HELD_OUT_PHOTOS + (BLURRED_PHOTO,))
    assert len(paths) == len(set(paths))
    assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS)
    assert not set(TRAIN_PHOTOS) & set(VALIDATION_PHOTOS) and not set(VALIDATION_PHOTOS) & set(HELD_OUT_PHOTOS)
    assert len(HELD_OUT_PHOTOS) >= 6 and len(HELD_OUT_PHOTOS) * HELD_OUT_CROPS_PER_IMAGE >= 48  # issue 23's minimum
    assert "motorcycle_right.png" not in TRAIN_PHOTOS + VALIDATION_PHOTOS  # the stereo twin of a held-out photo
    assert BEFORE_AFTER[0] in HELD_OUT_PHOTOS


def test_the_demo_blur_fits_the_crop_and_ships_with_the_package():
    from deblurdiff.blur_synthesis import load_recipe

    recipe = load_recipe(RECIPE)  # a built-in name, not a path outside the package
    assert recipe.name == RECIPE
    assert recipe.blur.trajectory.size[1] < CROP // 2  # shake paths well inside the crop


def test_packaged_tiny_config_is_the_checkout_one():
    from deblurdiff.training.config import packaged_config

    repo_configs = Path(__file__).resolve().parents[1] / "configs"
    assert packaged_config("tiny").read_text() == (repo_configs / "tiny.yaml").read_text()


def test_the_demo_fine_tunes_the_packaged_model_unless_told_to_start_from_scratch(tmp_path):
    from deblurdiff.pretrained import packaged_model

    photos, validation = tmp_path / "photos", tmp_path / "pairs" / "validation"
    fine_tune = _training_config(tmp_path, photos, validation, 7, 2, packaged_model(PRETRAINED))
    assert fine_tune.model.init_from == str(packaged_model(PRETRAINED)) and fine_tune.train.lr == FINETUNE_LR
    # fresh pairs from the photos every pass, blurred with the demo's recipe
    assert (fine_tune.data.shards, fine_tune.data.images, fine_tune.data.recipe) == (None, str(photos), RECIPE)
    scratch = _training_config(tmp_path, photos, validation, 7, 2, None)
    assert scratch.model.init_from is None and scratch.model.preset == "tiny" and scratch.train.lr > FINETUNE_LR
    assert scratch.train.max_steps == fine_tune.train.max_steps == 7


def test_bad_arguments_exit_2(cli, tmp_path):
    result = cli("demo", "--output", str(tmp_path), "--max-steps", "0")
    assert result.returncode == 2 and "--max-steps" in result.stderr
    (tmp_path / "report.json").write_text("{}")
    result = cli("demo", "--output", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output" in lines[0] and "earlier demo" in lines[0]
    assert json.loads((tmp_path / "report.json").read_text()) == {}  # nothing overwritten


@pytest.mark.integration
def test_shortened_quickstart_end_to_end(cli, tmp_path):
    """The whole `deblurdiff demo` with 3 fine-tuning steps: every stage runs, the report records what it
    did, and the packaged model it starts from restores. The +1 dB target is measured with the full
    demo in benchmarks/RESULTS.md."""
    out = tmp_path / "demo"
    started = time.perf_counter()
    result = cli("demo", "--output", str(out), "--max-steps", "3", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for stage in STAGES:
        assert f"[demo] {stage} ..." in console and f"[demo] {stage}: " in console
    assert "Traceback" not in console

    report = json.loads((out / "report.json").read_text())
    assert (report["recipe"], report["crop"]) == (RECIPE, CROP)
    assert report["held_out_pairs"] == len(HELD_OUT_PHOTOS) * HELD_OUT_CROPS_PER_IMAGE
    assert report["train"]["final_step"] == 3 and report["train"]["init_from"] == PRETRAINED
    assert (report["held_out_photos"], report["train_photos"], report["validation_photos"]) == \
        (list(HELD_OUT_PHOTOS), list(TRAIN_PHOTOS), list(VALIDATION_PHOTOS))
    assert set(report["per_photo"]) == {Path(p).stem for p in HELD_OUT_PHOTOS}
    assert sum(row["pairs"] for row in report["per_photo"].values()) == report["held_out_pairs"]
    # The with-the-answer bound is above the blurry input (it can always pass the input through).
    assert report["psnr_oracle_5x5"] > report["psnr_blurry"]
    assert report["model_kept"] in ("fine-tuned", "packaged")
    # The packaged model restores the held-out pairs as shipped, and 3 warm-up steps of fine-tuning keep it so.
    assert report["packaged_model"]["psnr_restored"] > report["psnr_blurry"]
    assert report["psnr_restored"] > report["psnr_blurry"] and report["ssim_restored"] > report["ssim_blurry"]
    for key in ("psnr_blurry", "psnr_restored", "ssim_blurry", "ssim_restored", "blurry_latent_mse",
                "lkpn_latent_mse", "train_objective_latent_mse", "restored_beats_blurry", "sampling_validation"):
        assert key in report, key
    assert report["timings_s"]["total"] < time.perf_counter() - started

    # The validated sampler settings are recorded with the model and are what serve ran.
    sampling = report["sampling"]
    model = Path(report["outputs"]["model"])
    assert json.loads((model / "model_index.json").read_text())["sampling"] == sampling
    chosen = next(row for row in report["sampling_validation"] if {k: row[k] for k in sampling} == sampling)
    assert chosen["psnr_restored"] >= max(row["psnr_restored"] for row in report["sampling_validation"]) - TIE_DB
    assert report["serve"]["status"] == 200 and report["serve"]["same_size_as_input"]
    assert report["serve"]["sampling"] == sampling

    # The pictures: blurry | restored | sharp of a held-out photo, shown 2x; the real blurred photo before |
    # after; the contact sheet of held-out pairs.
    clock = Image.open(_photo_paths((BLURRED_PHOTO,))[0])
    before_after = Image.open(out / "before_after.png")
    side = 2 * BEFORE_AFTER[3]
    assert before_after.width > 3 * side and side < before_after.height < side + 40
    assert Image.open(out / "real_blur_clock_motion.png").width > 2 * clock.width
    assert Image.open(out / "clock_motion_restored.png").size == clock.size
    sheet = json.loads((out / "eval" / "summary.json").read_text())["contact_sheet"]
    assert Image.open(sheet).width > 3 * 160  # blurry | restored | sharp
