"""The synth RayJob's entrypoint, submitted with `ray job submit` to a real two-node local cluster.

The command line is the manifest's own, with object storage swapped for local folders and the sizes
shrunk for 2 CPU cores: what KubeRay's submitter does in the cluster, done here with the same CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from _infra import ray_manifests, split_command

VENV_BIN = Path(sys.executable).parent
# Small enough for 2 shared cores; one synthesis actor (each actor imports torch + kornia: seconds).
LOCAL = {"--crop": "64", "--crops-per-image": "1", "--shard-size": "1", "--workers": "1"}


def synth_entrypoint() -> list[str]:
    (doc,) = [d for _, d in ray_manifests("RayJob") if d["metadata"]["name"] == "deblurdiff-synth"]
    return split_command(doc["spec"]["entrypoint"])


def localise(argv: list[str], photos: Path, output: Path) -> list[str]:
    """Replace --input/--output (object storage) with local paths and shrink the sizes."""
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        if word in ("--input", "--output"):
            out += [word, str(photos if word == "--input" else output)]
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1  # drop every original value (--input takes several)
            continue
        if word in LOCAL:
            out += [word, LOCAL[word]]
            i += 2
            continue
        out.append(word)
        i += 1
    return out + [item for flag, value in LOCAL.items() if flag not in argv for item in (flag, value)]


def write_photos(folder: Path) -> int:
    import skimage.data
    from PIL import Image

    folder.mkdir()
    photos = {"astronaut.png": skimage.data.astronaut(), "coffee.jpg": skimage.data.coffee()}
    for name, pixels in photos.items():
        Image.fromarray(pixels).save(folder / name)
    return len(photos)


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    ray = VENV_BIN / "ray"
    return subprocess.run([str(ray if ray.exists() else "ray"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_localise_swaps_storage_and_keeps_the_rest(tmp_path):
    argv = localise(["deblurdiff", "synth", "--input", "s3://b/x/", "s3://b/y/", "--output", "s3://b/o",
                     "--crop", "512", "--seed", "7", "--resume"], tmp_path / "in", tmp_path / "out")
    assert argv == ["deblurdiff", "synth", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                    "--crop", "64", "--seed", "7", "--resume", "--crops-per-image", "1", "--shard-size", "1",
                    "--workers", "1"]


@pytest.mark.integration
def test_ray_job_submit_of_the_synth_entrypoint_succeeds(ray_cluster, tmp_path):
    photos, output = tmp_path / "photos", tmp_path / "pairs"
    images = write_photos(photos)
    argv = localise(synth_entrypoint(), photos, output)
    submission_id = f"infra-synth-{uuid.uuid4().hex[:8]}"
    # In the image `deblurdiff` is on every node's PATH; the local nodes were started from a process
    # that may not have the venv's bin on PATH, so the job says where it is (runtime_env, as a RayJob's
    # runtimeEnvYAML would).
    runtime_env = {"env_vars": {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}}
    submit = ray_cli("job", "submit", "--address", ray_cluster.dashboard_url, "--submission-id", submission_id,
                     "--runtime-env-json", json.dumps(runtime_env), "--", *argv, timeout=600)
    logs = f"{submit.stdout[-4000:]}\n{submit.stderr[-4000:]}"
    assert submit.returncode == 0, logs
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(ray_cluster.dashboard_url).get_job_status(submission_id) == JobStatus.SUCCEEDED

    manifest = json.loads((output / "manifest.json").read_text())
    samples = images * int(LOCAL["--crops-per-image"])
    shards = sorted(output.glob("shard-*.tar"))
    assert len(shards) == samples // int(LOCAL["--shard-size"])
    assert manifest["totals"]["samples"] == samples and manifest["totals"]["skipped"] == 0
    assert not list(output.glob("*.tmp*")), "no partial files under the output"
