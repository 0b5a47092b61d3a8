"""`deblurdiff demo`: argument checks, the photo corpus it relies on, and the full quickstart."""

from __future__ import annotations

import json

import pytest

from deblurdiff.demo import BLURRED_PHOTO, HELD_OUT_CROPS_PER_IMAGE, HELD_OUT_PHOTOS, TRAIN_PHOTOS, _photo_paths


def test_photos_are_bundled_and_held_out_ones_never_train():
    paths = _photo_paths(TRAIN_PHOTOS + HELD_OUT_PHOTOS + (BLURRED_PHOTO,))
    assert len(paths) == len(set(paths))
    assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS)
    assert len(HELD_OUT_PHOTOS) * HELD_OUT_CROPS_PER_IMAGE >= 8  # the minimum


def test_bad_arguments_exit_2(cli, tmp_path):
    result = cli("demo", "--output", str(tmp_path), "--max-steps", "0")
    assert result.returncode == 2 and "--max-steps" in result.stderr
    (tmp_path / "report.json").write_text("{}")
    result = cli("demo", "--output", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output" in lines[0] and "earlier demo" in lines[0]
    assert json.loads((tmp_path / "report.json").read_text()) == {}  # nothing overwritten
