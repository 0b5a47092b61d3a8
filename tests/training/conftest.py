"""Fixtures for the training tests: real photo pairs as WebDataset shards (helpers: _train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# scikit-image's bundled photos (no download): training and held-out validation sources.
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HELD_OUT_PHOTOS = ("immunohistochemistry",)


def _write_photos(directory: Path, names) -> Path:
    import skimage.data

    from deblurdiff.imageio import encode_image

    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        (directory / f"{name}.png").write_bytes(encode_image(np.ascontiguousarray(img[..., :3]), "png"))
    return directory


@pytest.fixture(scope="session")
def pair_shards(ray_cluster, tmp_path_factory):
    """(train_shards_dir, held_out_shards_dir): `synth` output from real photos, 48x48 crops.

    16 training pairs (4 photos x 4 crops) and 4 held-out pairs from another photo."""
    from deblurdiff.pipelines import run_synth

    root = tmp_path_factory.mktemp("pairs")
    train = root / "train"
    held_out = root / "held_out"
    run_synth([str(_write_photos(root / "photos", TRAIN_PHOTOS))], str(train), crop=48, crops_per_image=4,
              shard_size=8, seed=0, workers=1)
    run_synth([str(_write_photos(root / "val_photos", HELD_OUT_PHOTOS))], str(held_out), crop=48,
              crops_per_image=4, shard_size=8, seed=1, workers=1)
    return train, held_out
