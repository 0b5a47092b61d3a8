"""Helpers for the training tests: the tiny run's arguments, running the real CLI from module-scoped
fixtures (also with a worker killed mid-run), and a reader for offline W&B run files."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_photos(directory: Path, names) -> Path:
    """scikit-image's bundled photos ``names`` (no download) as RGB PNGs in ``directory``."""
    import numpy as np
    import skimage.data

    from deblurdiff.imageio import encode_image

    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        (directory / f"{name}.png").write_bytes(encode_image(np.ascontiguousarray(img[..., :3]), "png"))
    return directory


def run_train(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """The real ``deblurdiff`` console script (as the ``cli`` fixture runs it; usable from module-scoped
    fixtures, which cannot take the function-scoped ``cli``). Joins the test cluster via RAY_ADDRESS."""
    exe = Path(sys.executable).parent / "deblurdiff"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def run_train_killing_a_worker(args: list[str], metrics_path, at_step: int, timeout: float = 900):
    """``run_train`` that SIGKILLs one Ray Train worker process once ``metrics.jsonl`` holds step
    ``at_step``, as a preempted node would. Returns (CompletedProcess, killed worker's PID).

    The worker is found through Ray's state API on the test cluster (``ray_cluster`` fixture's
    ``ray.init``); any rank will do, Ray Train restarts the whole worker group from the checkpoint.
    """
    from ray.util.state import list_actors

    exe = Path(sys.executable).parent / "deblurdiff"
    deadline, killed = time.monotonic() + timeout, None
    # Output to files, not pipes: nobody reads a pipe while we watch, and a full one would block the run.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(exe), *args], stdout=out, stderr=err, text=True, env=dict(os.environ))
        try:
            while killed is None and proc.poll() is None and time.monotonic() < deadline:
                if any(row["step"] >= at_step for row in _rows_if_any(metrics_path)):
                    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                    killed = max(int(a.pid) for a in workers)
                    os.kill(killed, signal.SIGKILL)
                time.sleep(0.2)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()), killed


def _rows_if_any(path) -> list[dict]:
    # The last line may still be being written: only complete lines count.
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def tiny_args(output_dir, train_shards, held_out, *extra: str) -> list[str]:
    """`deblurdiff train` arguments for a short tiny run on the test pairs (32x32 crops)."""
    sets = [
        f"run.output_dir={output_dir}", f"data.shards={train_shards}", f"data.validation_shards={held_out}",
        "data.crop=32", "data.validation_pairs=2", "data.shuffle_buffer=8", "train.batch_size=4",
        "train.warmup_steps=2", "train.validation_steps=2", "run.log_every=1", *extra,
    ]
    args = ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--workers", "2"]
    for s in sets:
        args += ["--set", s]
    return args


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def wandb_history(run_file) -> list[dict]:
    """History rows of an offline W&B run (``run-<id>.wandb``).

    The file is a LevelDB-style record log: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of records, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
    4 last) around one serialized ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    rows, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 2:
            pending = chunk
            continue
        if kind == 3:
            pending += chunk
            continue
        payload = pending + chunk if kind == 4 else chunk
        pending = b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
