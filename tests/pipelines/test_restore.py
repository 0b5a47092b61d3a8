"""`deblurdiff deblur` over an archive (issue 24): Ray Data batch inference on the session's two-node cluster.

One archive of 200+ small images in nested folders, with a corrupt PNG, a non-image, a zero-byte file, a
PNG header claiming 60000 x 60000 pixels and a file name that is not UTF-8, is restored once on 2
replicas (the reference). Copies of parts of its tree (same relative paths, so the same seeds) are then
restored on 1 replica, in this process, with a model actor SIGKILLed and with the driver SIGKILLed;
every output must be byte-identical to the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _actors import alive_actor_pids, wait_for

# Fast settings for the tiny model: 2 DPM-Solver++ steps from pure noise.
SETTINGS = dict(sampler="dpmpp", steps=2, strength=1.0, seed=3)
CLI_SETTINGS = ["--sampler", "dpmpp", "--steps", "2", "--strength", "1", "--seed", "3"]
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 "café.png"
N_GOOD = 204


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _good_files(n: int) -> list[str]:
    """Relative paths of the good images: three levels of folders, two sizes, PNG and JPEG."""
    names = []
    for i in range(n - 1):
        folder = ["", "trip/", "trip/day2/", "scans/"][i % 4]
        names.append(f"{folder}img{i:03d}.{'jpg' if i % 5 == 0 else 'png'}")
    return [*names, f"trip/{NOT_UTF8}"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    from skimage import data

    root = tmp_path_factory.mktemp("archive") / "photos"
    cat = data.chelsea()
    for i, rel in enumerate(_good_files(N_GOOD)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = (32, 48) if i % 3 else (40, 32)  # two sizes
        y, x = (i * 7) % 200, (i * 11) % 300
        Image.fromarray(np.ascontiguousarray(cat[y:y + h, x:x + w])).save(path)
    (root / "trip" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "trip" / "day2" / "notes.txt").write_text("not an image")
    (root / "scans" / "empty.png").write_bytes(b"")
    (root / "scans" / "bomb.png").write_bytes(_png_header_only(60000, 60000))
    return root


BAD = {"trip/corrupt.png": "unreadable", "trip/day2/notes.txt": "not an image file",
       "scans/empty.png": "empty file", "scans/bomb.png": "too"}


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output image by relative path (the manifest and temporaries are not outputs)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != "restore-manifest.json"}


def _expected_outputs(rels) -> set[str]:
    from deblurdiff.pipelines.restore import output_name
    from deblurdiff.pipelines.sources import readable_name

    return {output_name(readable_name(rel), "png") for rel in rels}


def _copy_part(archive: Path, dest: Path, rels: list[str]) -> Path:
    """A copy of part of the archive, same relative paths (so the same seeds)."""
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def reference(ray_cluster, archive, tiny_model_dir, tmp_path_factory) -> Path:
    """The archive restored on 2 replicas of the two-node cluster."""
    from deblurdiff.pipelines.restore import plan_restore

    out = tmp_path_factory.mktemp("restored") / "out"
    job = plan_restore([str(archive)], str(out), model=str(tiny_model_dir), replicas=2, **SETTINGS)
    summary = job.run(local=False)
    assert summary.replicas == 2
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "restore-manifest.json").read_text())


# ------------------------------------------------------------------------ no cluster needed
def test_model_defaults_read_from_the_configs_match_the_loaded_pipeline(tiny_model_dir, tiny_pipe):
    from deblurdiff.pipelines.restore import model_defaults

    assert model_defaults(str(tiny_model_dir)) == (tiny_pipe.default_sampling(), tiny_pipe.pad_multiple)


def test_output_names_mirror_the_input_tree_and_never_leave_the_output():
    from deblurdiff.pipelines.restore import output_name

    assert output_name("trip/day2/a.JPG", "png") == "trip/day2/a.png"
    assert output_name("shard/000123.jpg", "jpeg") == "shard/000123.jpg"
    assert output_name("../../etc/x.png", "webp") == "etc/x.webp"


def test_unwritable_output_is_one_line_exit_2(cli, tiny_model_dir, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a-file").write_text("")
    r = cli("deblur", str(tmp_path / "a.png"), "--model", str(tiny_model_dir), "--output",
            str(tmp_path / "a-file" / "out"), "--steps", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--output" in r.stderr and "cannot write there" in r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------ on the cluster
@pytest.mark.integration
@pytest.mark.faults
def test_every_good_image_is_restored_exactly_once_and_bad_ones_are_listed(reference, archive):
    manifest = _manifest(reference)
    assert manifest["status"] == "complete"
    assert manifest["totals"] == {"inputs": N_GOOD + len(BAD), "restored": N_GOOD, "already_done": 0,
                                  "failed": len(BAD)}
    restored = [r for r in manifest["images"] if r["status"] == "restored"]
    assert len({r["input"] for r in restored}) == len(restored) == N_GOOD  # each input once
    assert {r["output"] for r in restored} == _expected_outputs(_good_files(N_GOOD))
    assert set(_outputs(reference)) == _expected_outputs(_good_files(N_GOOD))  # and nothing else (no temporaries)
    odd = next(r for r in restored if "caf" in r["input"])
    assert odd["output"] == "trip/caf\\xe9.png"  # the odd name, shown readably
    assert (reference / "trip" / "caf\\xe9.png").is_file()
    for r in restored[:5]:
        assert r["seconds"] > 0 and r["bytes"] == (reference / r["output"]).stat().st_size
        assert Image.open(reference / r["output"]).size == (r["width"], r["height"])
    failed = {r["input"]: r["reason"] for r in manifest["images"] if r["status"] == "failed"}
    assert set(failed) == {str(archive / rel) for rel in BAD}
    for rel, words in BAD.items():
        assert words in failed[str(archive / rel)], failed[str(archive / rel)]
    assert "decode bomb" in failed[str(archive / "scans/bomb.png")]
    assert manifest["summary"]["restored"] == N_GOOD and manifest["summary"]["images_per_s"] > 0


@pytest.mark.integration
def test_one_replica_and_the_in_process_path_give_the_same_bytes(reference, archive, tiny_model_dir, tmp_path):
    from deblurdiff.pipelines.restore import plan_restore

    part = _copy_part(archive, tmp_path / "photos", _good_files(N_GOOD)[-6:])  # the odd name too
    expected = {k: v for k, v in _outputs(reference).items() if k in _expected_outputs(_good_files(N_GOOD)[-6:])}
    assert len(expected) == 6

    one = tmp_path / "one"
    assert plan_restore([str(part)], str(one), model=str(tiny_model_dir), replicas=1, **SETTINGS) \
        .run(local=False).replicas == 1
    assert _outputs(one) == expected

    here = tmp_path / "here"  # and a file:// URI output
    summary = plan_restore([str(part)], f"file://{here}", model=str(tiny_model_dir), **SETTINGS).run(local=True)
    assert summary.replicas == 0 and summary.restored == 6
    assert _outputs(here) == expected

    # Restored in tiles: here several tiles run at once (one torch thread each), on the actor one at a time.
    tiled = {**SETTINGS, "tile": 16}
    plan_restore([str(part)], str(tmp_path / "tiled-actor"), model=str(tiny_model_dir), replicas=1, **tiled) \
        .run(local=False)
    plan_restore([str(part)], str(tmp_path / "tiled-here"), model=str(tiny_model_dir), **tiled).run(local=True)
    tiled_outputs = _outputs(tmp_path / "tiled-here")
    assert len(tiled_outputs) == 6 and tiled_outputs == _outputs(tmp_path / "tiled-actor")
    assert tiled_outputs != expected  # it did tile


@pytest.mark.integration
@pytest.mark.faults
def test_a_sigkilled_model_actor_does_not_stop_the_job(reference, archive, tiny_model_dir, tmp_path):
    from deblurdiff.pipelines.restore import plan_restore

    rels = _good_files(N_GOOD)[:48]
    part = _copy_part(archive, tmp_path / "photos", rels)
    out = tmp_path / "out"
    job = plan_restore([str(part)], str(out), model=str(tiny_model_dir), replicas=2, **SETTINGS)
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = job.run(local=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    driver = threading.Thread(target=run)
    driver.start()
    wait_for(lambda: len(_outputs(out)) if out.is_dir() else 0, 240, "a first output")
    os.kill(wait_for(lambda: alive_actor_pids("Restorer"), 60, "the model actors")[0], signal.SIGKILL)
    assert len(_outputs(out)) < len(rels), "every image was done before the kill: the test proves nothing"
    driver.join(600)
    assert "error" not in result, result.get("error")
    assert result["summary"].restored == len(rels) and result["summary"].failed == 0
    expected = _expected_outputs(rels)
    assert _outputs(out) == {k: v for k, v in _outputs(reference).items() if k in expected}


@pytest.mark.integration
@pytest.mark.faults
def test_a_sigkilled_driver_is_finished_by_rerunning_the_same_command(cli, reference, archive, tiny_model_dir,
                                                                      tmp_path):
    rels = _good_files(N_GOOD)[48:96]
    part = _copy_part(archive, tmp_path / "photos", rels)
    out = tmp_path / "out"
    args = ["deblur", str(part), "--model", str(tiny_model_dir), "--output", str(out), "--replicas", "2",
            *CLI_SETTINGS]
    log = tmp_path / "driver.log"  # a file, not a pipe: a full pipe would stall the driver
    with open(log, "w") as stderr:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "deblurdiff"), *args], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=dict(os.environ))
    try:
        wait_for(lambda: len(_outputs(out)) >= 3 if out.is_dir() else proc.poll() is not None, 300,
                  "a few outputs")
        assert proc.poll() is None, f"the run ended before the kill: {log.read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Tasks of the dead driver may still rename an output until Ray reaps them: count once nothing changes.
    done, quiet_since, deadline = None, time.monotonic(), time.monotonic() + 60
    while time.monotonic() - quiet_since < 3 and time.monotonic() < deadline:
        now = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.png")
               if not p.name.startswith(".")}
        if now != done:
            done, quiet_since = now, time.monotonic()
        time.sleep(0.5)
    assert 0 < len(done) < len(rels)
    assert _manifest(out)["status"] == "running"  # whole (temp + rename), not torn

    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = _manifest(out)
    assert manifest["status"] == "complete"
    assert manifest["totals"]["already_done"] == len(done)  # the done ones are not redone ...
    assert manifest["totals"]["already_done"] + manifest["totals"]["restored"] == len(rels)
    for rel, mtime in done.items():
        assert (out / rel).stat().st_mtime_ns == mtime, rel  # ... not even rewritten
    expected = _expected_outputs(rels)
    assert _outputs(out) == {k: v for k, v in _outputs(reference).items() if k in expected}
    assert f"{manifest['totals']['restored']} restored, {manifest['totals']['already_done']} skipped" in rerun.stdout
