"""`deblurdiff train` end to end on the tiny preset: two CPU workers on the two-node test cluster,
Ray Train V2 + DeepSpeed ZeRO-2 over gloo, a worker process killed mid-run (SIGKILL from the test, as
a preempted node would), --resume, export, offline W&B.

The runs are shared by module fixtures (each costs a minute or two on 2 cores):

- ``crashed_run``: ControlNet + LKPN trained (the paper's split; the UNet frozen) for 12 steps,
  checkpoints every 4, a worker killed once step 6 is logged -> one worker-group restart from step 4;
- ``resumed_run``: the same output dir continued with --resume to 16 steps;
- ``overfit_run``: every tiny part trained on 4 pairs for 30 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import read_jsonl, run_train, run_train_killing_a_worker, tiny_args, wandb_history

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _check(proc):
    assert proc.returncode == 0, f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _run(args, timeout=900):
    return _check(run_train(args, timeout=timeout))


@pytest.fixture(scope="module")
def crashed_run(ray_cluster, pair_shards, tmp_path_factory):
    train, held_out = pair_shards
    out = tmp_path_factory.mktemp("crashed") / "run"
    proc, killed_pid = run_train_killing_a_worker(
        tiny_args(out, train, held_out, "train.max_steps=12", "train.checkpoint_every=4", "train.validate_every=12",
                  "model.trainable=[controlnet,lkpn]", "failure.max_failures=2"),
        out / "metrics.jsonl", at_step=6)
    assert killed_pid is not None, "the run ended before step 6 was logged: no worker was killed"
    return out, _check(proc)


@pytest.fixture(scope="module")
def resumed_run(crashed_run, pair_shards):
    out, _ = crashed_run
    train, held_out = pair_shards
    proc = _run([*tiny_args(out, train, held_out, "train.max_steps=16", "train.checkpoint_every=4",
                                     "train.validate_every=16", "model.trainable=[controlnet,lkpn]",
                                     "wandb.mode=disabled"), "--resume"])
    return out, proc


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ------------------------------------------------------------------------------- failure recovery
def test_killed_worker_restarts_from_the_checkpoint_and_reaches_max_steps(crashed_run):
    out, proc = crashed_run
    s = _summary(out)
    assert s["final_step"] == 12 and s["restarts"] == 1  # the fixture's kill really restarted the group
    # Checkpoints at 4, 8, 12: none repeated, none skipped.
    assert s["checkpoints"] == [4, 8, 12]
    assert "step 12/12" in proc.stdout and "1 restart(s)" in proc.stdout


def test_steps_continue_from_the_checkpoint_after_the_restart(crashed_run):
    out, _ = crashed_run
    rows = read_jsonl(out / "metrics.jsonl")
    first = [r["step"] for r in rows if r["group"] == 0]
    second = [r["step"] for r in rows if r["group"] == 1]
    assert first[:6] == [1, 2, 3, 4, 5, 6]  # killed once step 6 was logged (one more may get logged)
    # The restarted group resumes right after the latest checkpoint (4) and never skips a step.
    assert second == list(range(5, 13))
    # Validation (validate_every=12) lands on the last step's row, beside the training metrics.
    last = [r for r in rows if r["group"] == 1][-1]
    assert {"train/loss", "val/latent_mse", "val/blurry_latent_mse", "val/psnr_restored"} <= set(last)


def test_frozen_parts_are_bit_identical_and_trained_parts_moved(crashed_run):
    from deblurdiff import DeblurDiffPipeline

    out, _ = crashed_run
    s = _summary(out)
    assert s["trainable"] == ["controlnet", "lkpn"]
    assert s["frozen_digest_start"] == s["frozen_digest_end"]
    assert set(s["frozen_digest_start"]) == {"vae", "unet", "null_text"}
    trained = DeblurDiffPipeline.from_pretrained(str(out / "model"))
    fresh = DeblurDiffPipeline.from_preset("tiny", seed=0)
    for name in ("unet", "vae", "null_text"):
        a, b = getattr(trained, name).state_dict(), getattr(fresh, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"frozen {name} changed"
    for name in ("controlnet", "lkpn"):
        a, b = getattr(trained, name).state_dict(), getattr(fresh, name).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"trainable {name} did not change"


def test_export_loads_with_from_pretrained_and_deblurs(crashed_run):
    from deblurdiff import DeblurDiffPipeline

    out, _ = crashed_run
    pipe = DeblurDiffPipeline.from_pretrained(str(out / "model"))
    image = np.random.default_rng(0).random((37, 45, 3)).astype(np.float32)
    # 4 steps: at the recorded strength 0.3, img2img runs int(4 · 0.3) = 1 of them
    restored = pipe(image, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert restored.shape == (1, 37, 45, 3) and np.isfinite(restored).all()
    assert pipe.config.trainable_components == ["controlnet", "lkpn"]
    # configs/tiny.yaml trains t < 300 only (img2img from ẑ): the export's defaults are the settings its
    # final validation sampled with (train.validation_steps=2 grown to 4, so one step runs at 0.3),
    # never the paper's sampling from pure noise.
    assert pipe.default_sampling() == {"sampler": "dpmpp", "steps": 4, "strength": 0.3}


def test_offline_wandb_run_holds_the_logged_metrics_and_the_validation_grid(crashed_run):
    out, _ = crashed_run
    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, f"no offline W&B run under {out / 'wandb'}"
    rows = [row for run in runs for row in wandb_history(run)]
    logged = {row["train/step"] for row in rows if "train/loss" in row}
    assert set(range(7, 13)) <= logged  # every step after the restart (log_every=1)
    for key in ("train/diffusion_loss", "train/latent_loss", "train/lr", "train/samples_per_s"):
        assert any(key in row for row in rows), key
    grids = [row for row in rows if row.get("val/grid/_type") == "image-file"]
    assert grids and grids[-1]["train/step"] == 12
    assert grids[-1]["val/grid/width"] == 4 * 32  # blurry | decoded ẑ | restored | sharp
    assert any("val/latent_mse" in row and "val/blurry_latent_mse" in row for row in rows)
    assert (out / "validation" / "step_00000012.png").is_file()


# ------------------------------------------------------------------------------- --resume
def test_resume_continues_a_finished_run_to_a_larger_max_steps(resumed_run):
    out, proc = resumed_run
    s = _summary(out)
    assert s["resumed_from_step"] == 12 and s["final_step"] == 16 and s["restarts"] == 0
    assert s["checkpoints"] == [16]
    rows = read_jsonl(out / "metrics.jsonl")
    launches = sorted({r["launch"] for r in rows})
    assert len(launches) == 2
    assert [r["step"] for r in rows if r["launch"] == launches[1]] == [13, 14, 15, 16]


# ------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def overfit_run(ray_cluster, pair_shards, tmp_path_factory):
    """Every tiny part trained on the same 4 held-out pairs it is validated on, as stored (no augmentation:
    the validation pairs are not turned)."""
    _, held_out = pair_shards
    out = tmp_path_factory.mktemp("overfit") / "run"
    _run(tiny_args(out, held_out, held_out, "train.max_steps=30", "train.checkpoint_every=30",
                            "train.validate_every=30", "train.validate_at_start=true", "train.lr=2e-3",
                            "data.shuffle_buffer=0", "data.augment=none", "wandb.mode=disabled"))
    return out


def test_a_line_a_worker_prints_reaches_the_console_on_one_stream(resumed_run):
    # Ray Train V2's print patch sent every print() of a worker (DeepSpeed's "... built successfully") to
    # stdout and, through its logger, to stderr as well: the user read each such line twice. (On the test
    # cluster's two nodes on one machine, both log monitors tail the same files, so a line may also come
    # twice on one stream here; a real node has one monitor: compared across the streams.)
    _, proc = resumed_run

    def worker_lines(text):
        return {line for line in text.splitlines() if "RayTrainWorker pid=" in line and line.split(")", 1)[-1].strip()}

    printed = [line for line in worker_lines(proc.stdout) if "built successfully" in line]
    assert printed and not worker_lines(proc.stdout) & worker_lines(proc.stderr)


def test_loss_falls_when_overfitting_a_few_pairs(overfit_run):
    rows = read_jsonl(overfit_run / "metrics.jsonl")
    # The objective at fixed timesteps and noise on the (training = validation) pairs: before vs after.
    before, after = rows[0], rows[-1]
    assert before["step"] == 0 and after["step"] == 30
    assert after["val/loss"] < 0.8 * before["val/loss"], (before, after)
    # ẑ moves towards z_0: the LKPN term falls on the pairs it is trained on, below the blurry input's.
    assert after["val/latent_mse"] < 0.9 * before["val/latent_mse"]
    assert after["val/latent_mse"] < after["val/blurry_latent_mse"]
    # The per-step training loss (noisy: t is random) falls too, on average.
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 30 and np.mean(losses[-10:]) < np.mean(losses[:10]), losses
