"""`deblurdiff train` under faults injected from outside (issue 15), on the tiny preset:

1. a finished 4-step run (checkpoints at 2 and 4); its newest checkpoint is truncated as by a full
   disk; `--resume` to 6 steps falls back to step 2, warning about the bad one;
2. in that same launch the rank-0 worker is SIGKILLed while it writes the export (max_failures=0):
   the failure is one clear line, and no half-written model directory sits under model/;
3. `--resume` again exports; 4. with every checkpoint truncated `--resume` exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _train_helpers import read_jsonl, run_train, tiny_args

pytestmark = [pytest.mark.faults, pytest.mark.integration]

COMMON = ("train.checkpoint_every=2", "train.validate_every=0", "wandb.mode=disabled", "failure.max_failures=0")


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)  # what a full disk leaves of a file being written


def _model_states(checkpoint: Path) -> Path:
    [path] = checkpoint.rglob("*model_states.pt")
    return path


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def run(ray_cluster, pair_shards, tmp_path_factory):
    train, held_out = pair_shards
    out = tmp_path_factory.mktemp("faults") / "run"
    proc = run_train(tiny_args(out, train, held_out, "train.max_steps=4", *COMMON))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, train, held_out


def test_truncated_checkpoint_falls_back_and_a_killed_export_resumes(run):
    out, train, held_out = run
    ckpts = out / "train"
    assert sorted(p.name for p in ckpts.glob("checkpoint_0*")) == ["checkpoint_00000002", "checkpoint_00000004"]
    first_export = (out / "model" / "model_index.json").stat().st_mtime_ns
    _truncate(_model_states(ckpts / "checkpoint_00000004"))

    # --resume to 6 steps; rank 0 is killed while writing the export (a temp dir beside model/).
    args = [*tiny_args(out, train, held_out, "train.max_steps=6", *COMMON), "--resume"]
    log = out.parent / "resume.log"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "deblurdiff"), *args], stdout=sink,
                                stderr=subprocess.STDOUT, env=dict(os.environ))
    killed = None
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        temps = list(out.glob(".model.tmp-*"))
        if temps:
            killed = int(temps[0].name.split(".tmp-", 1)[1].split("-")[0])  # .model.tmp-<pid>-<id>: the exporter
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=600)
    stderr = log.read_text()
    assert killed is not None, f"no export seen (rc {proc.returncode}):\n{stderr[-3000:]}"

    # The fallback: warned naming the bad checkpoint, which is kept aside; steps 3-6 trained again.
    assert "checkpoint_00000004 is damaged" in stderr and "resuming from checkpoint_00000002" in stderr, stderr[-3000:]
    assert (ckpts / "damaged" / "checkpoint_00000004").is_dir()
    rows = read_jsonl(out / "metrics.jsonl")
    last_launch = max(r["launch"] for r in rows)
    assert [r["step"] for r in rows if r["launch"] == last_launch] == [3, 4, 5, 6]
    # The killed export: exit 1 and one clear line saying where it stopped and what to do.
    assert proc.returncode == 1, stderr[-3000:]
    failure = [line for line in stderr.splitlines() if line.startswith("deblurdiff train: failed")]
    assert len(failure) == 1 and "before the export to model/ finished" in failure[0] and "--resume" in failure[0]
    assert _summary(out)["status"] == "failed"
    # model/ is still the previous export, whole; the half-written one is not under the final name.
    assert (out / "model" / "model_index.json").stat().st_mtime_ns == first_export

    # --resume once more: nothing left to train, the export is redone and complete.
    again = run_train(args)
    assert again.returncode == 0, again.stderr[-4000:]
    s = _summary(out)
    assert s["status"] == "finished" and s["final_step"] == 6 and s["resumed_from_step"] == 6
    assert (out / "model" / "model_index.json").stat().st_mtime_ns != first_export
    assert not list(out.glob(".model.tmp-*"))
    from deblurdiff import DeblurDiffPipeline

    DeblurDiffPipeline.from_pretrained(out / "model")  # loads


def test_no_intact_checkpoint_exits_2_with_one_line(run):
    out, train, held_out = run
    for checkpoint in (out / "train").glob("checkpoint_0*"):
        _truncate(_model_states(checkpoint))
    proc = run_train([*tiny_args(out, train, held_out, "train.max_steps=8", *COMMON), "--resume"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if "WARNING" not in line]
    assert len(lines) == 1 and "no intact checkpoint" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_training_shards_that_are_all_damaged_exit_2_with_one_line_naming_data_shards(pair_shards, tmp_path):
    """Streamed (data.cache=false) training shards that hold no readable pair: the workers find out, not the
    driver. Bad input, not a fault: exit 2 and the data line, not exit 1 and "run it again"."""
    _, held_out = pair_shards
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "shard-000000.tar").write_bytes(bytes(range(1, 256)) * 40)  # not a tar: no header reads
    proc = run_train(tiny_args(tmp_path / "run", damaged, held_out, "train.max_steps=2", "data.cache=false",
                               "wandb.mode=disabled", "failure.max_failures=0"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"deblurdiff train: error: data.shards {damaged}:"), last
    assert "fewer than one micro-batch" in last and "lower train.batch_size" in last
