"""Helpers for the training tests: the tiny run's arguments, running the real CLI from module-scoped
fixtures, and a reader for offline W&B run files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_train(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """The real ``deblurdiff`` console script (as the ``cli`` fixture runs it; usable from module-scoped
    fixtures, which cannot take the function-scoped ``cli``). Joins the test cluster via RAY_ADDRESS."""
    exe = Path(sys.executable).parent / "deblurdiff"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


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
