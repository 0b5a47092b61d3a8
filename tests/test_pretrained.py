"""The packaged ``tiny-small-handheld`` pipeline: found by name, safetensors only, its provenance and licences
beside it, trained on none of scikit-image's photos, and it restores blurred crops of photos it never saw
better than the blurry input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deblurdiff.demo import HELD_OUT_PHOTOS, PRETRAINED, RECIPE, _photo_paths
from deblurdiff.errors import UsageError
from deblurdiff.evaluation import TIE_DB
from deblurdiff.model_dir import check_model_dir, load_pipeline
from deblurdiff.pretrained import PACKAGED_MODELS, packaged_model

NAME = PRETRAINED
REPO = Path(__file__).resolve().parents[1]
# Measured on these 48 crops (2026-12-07): 30.40 -> 31.53 dB. Half of that gain, so the check fails when the
# shipped weights, the recorded settings or the sampler stop restoring, not on rounding.
MARGIN_DB = 0.55


def test_the_name_stands_for_the_packaged_directory_unless_a_path_of_that_name_exists(tmp_path, monkeypatch):
    assert NAME in PACKAGED_MODELS
    assert Path(check_model_dir(NAME)) == packaged_model(NAME)
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()  # the user's own folder of that name wins, and is checked as a model directory
    with pytest.raises(UsageError, match="not a DeblurDiff pipeline directory"):
        check_model_dir(NAME)
    with pytest.raises(UsageError, match=r"--model tiny-big: no such directory \(nor a packaged model: "):
        check_model_dir("tiny-big")


def test_weights_are_safetensors_and_the_provenance_says_how_to_rebuild_them():
    import hashlib

    import skimage

    root = packaged_model(NAME)
    weights = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                     and p.suffix not in (".json", ".md"))
    assert weights and all(w.endswith(".safetensors") for w in weights), weights  # nothing that unpickles
    provenance = json.loads((root / "provenance.json").read_text())
    assert provenance["recipe"] == RECIPE and provenance["seed"] == 0
    # The corpus it names is the one committed, and its photos are the ones the model learnt from.
    manifest_path = REPO / provenance["corpus_manifest"]
    assert hashlib.sha256(manifest_path.read_bytes()).hexdigest() == provenance["corpus_manifest_sha256"]
    manifest = json.loads(manifest_path.read_text())
    for split in ("train", "validation"):
        assert provenance[f"{split}_photos"] == [p["name"] for p in manifest["photos"] if p["split"] == split]
    # None of scikit-image's photos (the demo's held-out ones among them) in its training or validation data.
    bundled = {p.stem for p in (Path(skimage.__file__).parent / "data").iterdir()}
    used = provenance["train_photos"] + provenance["validation_photos"]
    assert not {Path(name).stem for name in used} & bundled
    commands = " ".join(provenance["commands"])
    for needed in ("scripts/build_photo_corpus.py", "deblurdiff train --config $REPO/configs/tiny.yaml",
                   "data.images=photos/train", "data.recipe=small-handheld"):
        assert needed in commands, needed
    assert load_pipeline(NAME, device="cpu").default_sampling() == provenance["sampling"]
    # Its default never scores below ẑ decoded alone on the validation photos (beyond a tie).
    rows = provenance["sampling_validation"]
    chosen = next(r for r in rows if {k: r[k] for k in provenance["sampling"]} == provenance["sampling"])
    z_hat = next(r for r in rows if r["strength"] == 0)
    assert chosen["psnr_restored"] >= z_hat["psnr_restored"] - TIE_DB


def test_the_notice_names_every_photograph_with_its_author_and_licence():
    manifest = json.loads((REPO / "corpus" / "debian-photos.json").read_text())
    notice = (packaged_model(NAME) / "NOTICE.md").read_text()
    for photo in manifest["photos"]:
        line = next(line for line in notice.splitlines() if line.startswith(f"| {photo['name']} |"))
        assert photo["licence"] in line and photo["author"] in line


def _held_out_crops(per_photo: int = 8, crop: int = 64) -> torch.Tensor:
    """(N, 3, crop, crop) in [0, 1]: a fixed grid of crops of the demo's held-out photos."""
    from deblurdiff.imageio import read_rgb

    crops = []
    for path in _photo_paths(HELD_OUT_PHOTOS):
        image = read_rgb(path)
        h, w = image.shape[:2]
        for i in range(per_photo):
            y = (h - crop) * ((i * 7) % per_photo) // max(per_photo - 1, 1)
            x = (w - crop) * i // max(per_photo - 1, 1)
            crops.append(image[y:y + crop, x:x + crop])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def test_it_restores_photos_it_never_saw_with_its_recorded_settings():
    from deblurdiff.blur_synthesis import synthesize
    from deblurdiff.evaluation import psnr

    sharp = _held_out_crops()
    blurry = synthesize(sharp, recipe=RECIPE, seeds=list(range(100, 100 + len(sharp)))).blurry
    pipe = load_pipeline(NAME, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    restored = pipe(blurry, generator=torch.Generator().manual_seed(0), output_type="pt").images
    before, after = psnr(blurry, sharp), psnr(restored.clamp(0, 1), sharp)
    assert after > before + MARGIN_DB, (before, after)
