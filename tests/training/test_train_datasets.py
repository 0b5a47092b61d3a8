"""What `deblurdiff train` feeds its workers and validates on (``launcher._datasets``), on the test cluster:
the same validation pairs on every run, and data.crop_scale reaching the on-the-fly training crops."""

from __future__ import annotations

import gc
import hashlib
import json
import time

import numpy as np
import pytest

from _train_helpers import REPO, write_photos

pytestmark = [pytest.mark.integration]

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _config(photos, *overrides):
    from deblurdiff.config import load_config
    from deblurdiff.training.config import TrainConfig, check_config

    sets = [f"data.images={photos}", "data.shards=null", f"data.validation_images={photos}", "data.crop=32",
            "data.validation_pairs=7", "data.recipe=clean-motion", "data.crops_per_image=2", "train.max_steps=1",
            "run.output_dir=unused", *overrides]
    return check_config(load_config(REPO / "configs" / "tiny.yaml", TrainConfig, sets))


def _digests(images: np.ndarray) -> list[str]:
    """(N, 3, H, W) float in [0, 1] -> one digest per image, in order."""
    return [hashlib.sha1(np.round(x * 255).astype(np.uint8).tobytes()).hexdigest() for x in images]


def _cpus_freed_back_to(cpus: float, timeout: float = 60) -> bool:
    """Whether the cluster's free CPUs come back to ``cpus`` within ``timeout`` s (actors exit asynchronously)."""
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < cpus:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("datasets") / "photos", PHOTOS)


def test_validation_pairs_are_the_same_first_pairs_every_run_and_crop_scale_reaches_only_training(
        ray_cluster, photos):
    import ray

    from deblurdiff.pipelines.sources import list_sources, read_source
    from deblurdiff.pipelines.stages import decode_crops
    from deblurdiff.pipelines.stream import pass_rows
    from deblurdiff.training.launcher import _datasets, plan_resources

    plain_cfg, scaled_cfg = _config(photos), _config(photos, "data.crop_scale=[0.5,0.5]")
    resources = plan_resources(plain_cfg, [n for n in ray.nodes() if n["Alive"]])
    free_cpus = ray.available_resources().get("CPU", 0.0)
    gc.disable()  # the validation streams' actors must go without a garbage-collection cycle
    try:
        runs = [_datasets(cfg, resources) for cfg in (plain_cfg, scaled_cfg)]  # the same validation settings
        # Their CPUs are free for the trainer with the datasets still referenced (training streams not run yet).
        assert _cpus_freed_back_to(free_cpus), ray.available_resources()
    finally:
        gc.enable()

    # Validation: one plain crop of every photo per pass, passes in order: 5 photos of pass 0, then 2 of pass 1.
    corpus = list_sources([str(photos)])
    expected = []
    for row in pass_rows(corpus.sources, plain_cfg.run.seed, passes=2):
        source = next(s for s in corpus.sources if s.to_dict() == json.loads(row["source"]))
        crop = decode_crops(read_source(source, corpus.filesystems), source.key, [row["pass"]], 32,
                            plain_cfg.run.seed)[0]
        expected.append(hashlib.sha1(np.ascontiguousarray(crop.pixels.transpose(2, 0, 1)).tobytes()).hexdigest())
    for train, (sharp, blurry), held_out in runs:
        assert held_out and sharp.shape == blurry.shape == (7, 3, 32, 32)
        assert _digests(sharp) == expected[:7]
        np.testing.assert_array_equal(blurry, runs[0][1][1])
        assert not train.context.execution_options.preserve_order  # only the validation stream is ordered
    assert not ray.data.DataContext.get_current().execution_options.preserve_order

    # Training: the same photos, seeds and crop indices; at scale 0.5 each crop is a 64 px window seen at 32 px.
    def sharp_digests(ds):
        return {d for batch in ds.limit(10).iter_batches(batch_size=10) for d in _digests(batch["sharp"])}

    plain, scaled = sharp_digests(runs[0][0]), sharp_digests(runs[1][0])
    assert len(plain) == len(scaled) == 10 and not plain & scaled
    del runs  # the training streams' actors too, so the tests after this one find the cluster's CPUs free
    gc.collect()
    assert _cpus_freed_back_to(free_cpus), ray.available_resources()
