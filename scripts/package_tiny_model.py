"""Turn a finished tiny training run into the packaged ``tiny-small-handheld`` pipeline.

    python scripts/package_tiny_model.py RUN_DIR CORPUS_DIR [TRAINED_AT_COMMIT]

RUN_DIR: the ``run.output_dir`` of the ``deblurdiff train`` command in ``COMMANDS`` (its ``model/``
export is copied); CORPUS_DIR: the photo corpus ``scripts/build_photo_corpus.py`` built (its
``validation/`` photos and ``NOTICE.md``). Chooses the sampler settings on validation pairs synthesised
from the corpus's validation photos, with the candidates ``deblurdiff demo`` tries
(``demo.SAMPLING_CANDIDATES``), records them with the model, and writes
``src/deblurdiff/pretrained/tiny-small-handheld/`` (replacing it) with ``provenance.json`` (the commands
that made it, the corpus manifest and its sha256, seeds, the code commit, the validation curve of the run
and the sampler scores) and ``NOTICE.md`` (the photographs' authors and licences). Held-out numbers are
measured afterwards, on photos the corpus does not hold (``deblurdiff demo``; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from deblurdiff._ray import connect
from deblurdiff.demo import CROP, PRETRAINED, RECIPE, SAMPLING_CANDIDATES
from deblurdiff.evaluation import choose_sampling, score_sampling
from deblurdiff.model_dir import load_pipeline, record_sampling
from deblurdiff.pipelines.synth import run_synth
from deblurdiff.pretrained import packaged_model

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "corpus" / "debian-photos.json"
NAME = PRETRAINED
VALIDATION_CROPS_PER_IMAGE = 8
# What produced the packaged weights, in order (in an empty folder, REPO = a clone of this repository).
COMMANDS = [
    "python $REPO/scripts/build_photo_corpus.py --output photos",
    "deblurdiff train --config $REPO/configs/tiny.yaml --set data.shards=null --set data.images=photos/train "
    "--set data.validation_images=photos/validation --set data.recipe=small-handheld --set data.crops_per_image=8 "
    "--set data.cache=false --set data.validation_pairs=16 --set train.max_steps=3000 --set train.validate_every=500 "
    "--set train.checkpoint_every=500 --set train.keep_checkpoints=8 --set run.output_dir=run --set run.log_every=50",
    "python $REPO/scripts/package_tiny_model.py run photos",
]


def validation_curve(run_dir: Path) -> list[dict]:
    """The run's held-out validation metrics at every step it validated (metrics.jsonl)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("val/")}}
            for r in rows if any(k.startswith("val/") for k in r)]


def main(run_dir: str, corpus: str, trained_at: str | None = None) -> None:
    run, corpus = Path(run_dir), Path(corpus)
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads(MANIFEST.read_text())
    target = packaged_model(NAME)
    staging = target.with_name(NAME + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run / "model", staging)
    connect("local")  # run_synth is Ray Data
    with tempfile.TemporaryDirectory(prefix="dd-package-") as tmp:
        # Validation pairs from the corpus's validation photos, as the demo makes its own (seed 2).
        run_synth([str(corpus / "validation")], tmp, recipe=RECIPE, crop=CROP,
                  crops_per_image=VALIDATION_CROPS_PER_IMAGE, seed=2, shard_size=64)
        rows = score_sampling(load_pipeline(staging, device="cpu"), tmp, list(SAMPLING_CANDIDATES))
    photos = {split: [p["name"] for p in manifest["photos"] if p["split"] == split] for split in ("train", "validation")}
    sampling = record_sampling(staging, choose_sampling(rows), validated_on={
        "data": f"{VALIDATION_CROPS_PER_IMAGE} pairs per validation photo of the corpus (seed 2)",
        "photos": photos["validation"], "candidates": rows})
    commit = trained_at or subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                          text=True).stdout.strip()
    provenance = {
        "name": NAME, "preset": "tiny", "recipe": RECIPE, "crop": CROP, "seed": 0,
        "corpus_manifest": "corpus/debian-photos.json",
        "corpus_manifest_sha256": hashlib.sha256(MANIFEST.read_bytes()).hexdigest(),
        "train_photos": photos["train"], "validation_photos": photos["validation"],
        "photos_from": "Debian packages " + ", ".join(f"{n} {p['version']}" for n, p in manifest["packages"].items())
                       + " (NOTICE.md: authors and licences)",
        "commands": COMMANDS, "code_commit": commit,
        "final_step": summary.get("final_step"), "validation_curve": validation_curve(run),
        "sampling": sampling, "sampling_validation": rows,
    }
    (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.copy(corpus / "NOTICE.md", staging / "NOTICE.md")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"packaged {NAME}: sampling {sampling} -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
