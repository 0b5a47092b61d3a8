"""Turn a finished tiny training run into the packaged ``tiny-small-handheld`` pipeline.

    python scripts/package_tiny_model.py RUN_DIR VALIDATION_PAIRS

RUN_DIR: the ``run.output_dir`` of the ``deblurdiff train`` command in ``provenance.json`` (its
``model/`` export is copied); VALIDATION_PAIRS: the validation shards of that run. Chooses the sampler
settings on the validation pairs exactly as ``deblurdiff demo`` does (``demo.SAMPLING_CANDIDATES``),
records them with the model, and writes ``src/deblurdiff/pretrained/tiny-small-handheld/`` (replacing
it) with ``provenance.json``: the commands that made it, the photos, seeds, code commit and the
validation scores. Held-out numbers are measured afterwards (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from deblurdiff.demo import (CROP, PRETRAINED, RECIPE, SAMPLING_CANDIDATES, TRAIN_CROPS_PER_IMAGE, TRAIN_PHOTOS,
                             VALIDATION_CROPS_PER_IMAGE, VALIDATION_PHOTOS)
from deblurdiff.evaluation import choose_sampling, score_sampling
from deblurdiff.model_dir import load_pipeline, record_sampling
from deblurdiff.pretrained import packaged_model

REPO = Path(__file__).resolve().parents[1]
NAME = PRETRAINED
SKIMAGE_DATA = 'cd "$(python -c \'import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), "data"))\')"'
# What produced the packaged weights, in order (run from a clone of this repository, REPO=its root).
COMMANDS = [
    SKIMAGE_DATA,
    f"deblurdiff synth --input {' '.join(TRAIN_PHOTOS)} --output $REPO/work/pairs/train --recipe {RECIPE} "
    f"--crop {CROP} --crops-per-image {TRAIN_CROPS_PER_IMAGE} --seed 0 --shard-size 64",
    f"deblurdiff synth --input {' '.join(VALIDATION_PHOTOS)} --output $REPO/work/pairs/validation --recipe {RECIPE} "
    f"--crop {CROP} --crops-per-image {VALIDATION_CROPS_PER_IMAGE} --seed 2 --shard-size 64",
    "cd $REPO/work",
    "deblurdiff train --config $REPO/configs/tiny.yaml --set data.shards=pairs/train "
    "--set data.validation_shards=pairs/validation --set train.max_steps=2500 --set train.validate_every=500 "
    "--set train.checkpoint_every=500 --set run.output_dir=run --set run.log_every=50",
    "python $REPO/scripts/package_tiny_model.py run pairs/validation",
]


def main(run_dir: str, validation: str) -> None:
    summary = json.loads(Path(run_dir, "summary.json").read_text())
    target = packaged_model(NAME)
    staging = target.with_name(NAME + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(Path(run_dir, "model"), staging)
    rows = score_sampling(load_pipeline(staging, device="cpu"), validation, list(SAMPLING_CANDIDATES))
    sampling = record_sampling(staging, choose_sampling(rows), validated_on={
        "data": "validation pairs (provenance.json)", "photos": list(VALIDATION_PHOTOS), "candidates": rows})
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    provenance = {
        "name": NAME, "preset": "tiny", "recipe": RECIPE, "crop": CROP, "seed": 0,
        "train_photos": list(TRAIN_PHOTOS), "validation_photos": list(VALIDATION_PHOTOS),
        "photos_from": "scikit-image's bundled skimage/data/ (in its wheel; nothing downloaded)",
        "commands": COMMANDS, "code_commit": commit,
        "final_step": summary.get("final_step"), "sampling": sampling, "sampling_validation": rows,
    }
    (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"packaged {NAME}: sampling {sampling} -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
