"""Fixtures for the training tests: real photo pairs as WebDataset shards (helpers: _train_helpers.py)."""

from __future__ import annotations

import pytest

from _train_helpers import write_photos

# scikit-image's bundled photos (no download): training and held-out validation sources.
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HELD_OUT_PHOTOS = ("immunohistochemistry",)


@pytest.fixture(scope="session")
def pair_shards(ray_cluster, tmp_path_factory):
    """(train_shards_dir, held_out_shards_dir): `synth` output from real photos, 48x48 crops.

    16 training pairs (4 photos x 4 crops) and 4 held-out pairs from another photo."""
    from deblurdiff.pipelines import run_synth

    root = tmp_path_factory.mktemp("pairs")
    train = root / "train"
    held_out = root / "held_out"
    run_synth([str(write_photos(root / "photos", TRAIN_PHOTOS))], str(train), crop=48, crops_per_image=4,
              shard_size=8, seed=0, workers=1)
    run_synth([str(write_photos(root / "val_photos", HELD_OUT_PHOTOS))], str(held_out), crop=48,
              crops_per_image=4, shard_size=8, seed=1, workers=1)
    return train, held_out
