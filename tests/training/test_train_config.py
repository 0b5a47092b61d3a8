"""Training config, resource sizing, LR schedule and DeepSpeed config: no Ray needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deblurdiff.config import load_config
from deblurdiff.errors import UsageError
from deblurdiff.training.config import TrainConfig, check_config, micro_batch_size
from deblurdiff.training.engine import deepspeed_config, lr_multiplier
from deblurdiff.training.launcher import plan_resources

REPO = Path(__file__).resolve().parents[2]


def load(name="tiny.yaml", *overrides):
    return check_config(load_config(REPO / "configs" / name, TrainConfig, list(overrides)))


@pytest.mark.parametrize("name", ["tiny.yaml", "sd21.yaml"])
def test_shipped_configs_load_and_state_their_launch_command(name):
    extra = ["model.base_model=/models/sd21"] if name == "sd21.yaml" else []
    cfg = load(name, *extra)
    header = (REPO / "configs" / name).read_text().split("\n\n")[0]
    assert f"deblurdiff train --config configs/{name}" in header
    assert cfg.deepspeed.zero_stage == 2


def test_sd21_config_is_the_papers_setting():
    cfg = load("sd21.yaml", "model.base_model=/models/sd21")
    assert (cfg.model.preset, cfg.data.crop, cfg.train.batch_size, cfg.train.lr, cfg.train.max_steps) == \
        ("sd21", 512, 64, 1e-4, 200_000)
    assert cfg.train.precision == "bf16" and cfg.train.latent_weight == 1.0


def test_tiny_config_is_cpu_two_workers():
    cfg = load()
    assert cfg.model.preset == "tiny" and cfg.scaling.workers == 2 and cfg.train.precision in ("auto", "fp32")


@pytest.mark.parametrize("override, key", [
    ("train.max_step=3", r"train\.max_step: unknown key"),
    ("train.lr=fast", r"train\.lr: "),
    ("deepspeed.zero_stage=5", r"deepspeed\.zero_stage"),
    ("wandb.mode=cloud", r"wandb\.mode"),
    ("train.noise_from=blurry", r"train\.noise_from"),
    ("train.max_timestep=1001", r"train\.max_timestep"),
    ("train.fidelity_loss=l1", r"train\.fidelity_loss"),
    ("data.augment=flip", r"data\.augment"),
])
def test_bad_keys_and_values_name_the_dotted_key(override, key):
    with pytest.raises(UsageError, match=key):
        load("tiny.yaml", override)


@pytest.mark.parametrize("overrides, key", [
    (["train.batch_size=7"], r"train\.batch_size=7: must be a multiple of scaling\.workers"),
    (["data.images=photos/"], r"data\.shards / data\.images: set exactly one"),
    (["data.shards=null"], r"data\.shards / data\.images: set exactly one"),
    (["model.preset=sd21"], r"model\.base_model"),
    (["data.validation_images=a/", "data.validation_shards=b/"], r"data\.validation_shards / data\.validation_images"),
])
def test_inconsistent_settings_name_the_key_to_change(overrides, key):
    with pytest.raises(UsageError, match=key):
        load("tiny.yaml", *overrides)


def test_micro_batch_is_global_batch_over_workers_and_accumulation():
    cfg = load("tiny.yaml", "train.batch_size=16", "train.grad_accum=2", "scaling.workers=2")
    assert micro_batch_size(cfg) == 4
    ds = deepspeed_config(cfg, world_size=2, on_gpu=False, bf16=False)
    assert ds["train_batch_size"] == 16 == ds["train_micro_batch_size_per_gpu"] * 2 * ds["gradient_accumulation_steps"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["torch_autocast"]["enabled"] is False
    assert ds["zero_optimization"]["overlap_comm"] is False  # auto: GPU only


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine_to_the_floor():
    cfg = load("tiny.yaml", "train.max_steps=110", "train.warmup_steps=10", "train.min_lr_ratio=0.1")
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg) == pytest.approx(1.0)
    assert lr_multiplier(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(110, cfg) == pytest.approx(0.1)
    values = [lr_multiplier(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    constant = load("tiny.yaml", "train.lr_schedule=constant", "train.warmup_steps=0")
    assert {lr_multiplier(s, constant) for s in (0, 50, 500)} == {1.0}


def node(cpus, gpus=0):
    return {"Resources": {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}}


def test_two_workers_on_two_cpus_leave_a_cpu_to_the_data_pipeline():
    r = plan_resources(load(), [node(2)])
    assert not r.use_gpu
    assert r.cpus_per_worker == pytest.approx(0.5) and r.threads == 1
    assert 2 * r.cpus_per_worker + r.data_cpus <= 2


def test_two_nodes_workers_fit_on_a_node_each():
    r = plan_resources(load(), [node(2), node(2)])
    assert r.cpus_per_worker <= 2 and 2 * r.cpus_per_worker + r.data_cpus <= 4


def test_gpu_cluster_gets_one_gpu_per_worker_and_cpus_per_gpu():
    cfg = load("sd21.yaml", "model.base_model=/models/sd21", "scaling.workers=8")
    r = plan_resources(cfg, [node(96, 8), node(8)])
    assert r.use_gpu and r.cpus_per_worker == 8 and r.threads == 8


def test_too_many_gpu_workers_is_a_usage_error_naming_scaling_workers():
    cfg = load("sd21.yaml", "model.base_model=/models/sd21", "scaling.workers=16")
    with pytest.raises(UsageError, match=r"scaling\.workers=16: needs 16 GPUs"):
        plan_resources(cfg, [node(96, 8)])


def test_explicit_cpus_that_do_not_fit_name_the_key():
    with pytest.raises(UsageError, match=r"scaling\.cpus_per_worker"):
        plan_resources(load("tiny.yaml", "scaling.cpus_per_worker=2"), [node(2)])


# ------------------------------------------------------------------- the CLI (no cluster needed)
def test_cli_config_error_exits_2_with_the_dotted_key(cli, tmp_path):
    proc = cli("train", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", "train.max_step=3", timeout=120)
    assert proc.returncode == 2
    assert "train.max_step" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_bad_workers_and_missing_config_exit_2(cli, tmp_path):
    proc = cli("train", "--config", str(REPO / "configs" / "tiny.yaml"), "--workers", "0", timeout=120)
    assert proc.returncode == 2 and "scaling.workers" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("train", "--config", str(tmp_path / "nope.yaml"), timeout=120)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


def test_cli_resume_without_a_run_exits_2(cli, tmp_path):
    proc = cli("train", "--config", str(REPO / "configs" / "tiny.yaml"), "--resume",
               "--set", f"run.output_dir={tmp_path / 'empty'}", timeout=120)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "no checkpoint" in proc.stderr


def test_cli_refuses_to_overwrite_a_run_without_resume(cli, tmp_path):
    (tmp_path / "train" / "checkpoint_00000010").mkdir(parents=True)
    proc = cli("train", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"run.output_dir={tmp_path}",
               timeout=120)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "run.output_dir" in proc.stderr


def test_cli_resume_with_another_worker_count_or_no_steps_left_exits_2(cli, tmp_path):
    ckpt = tmp_path / "train" / "checkpoint_00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "train_state.json").write_text('{"step": 10, "world_size": 2}')
    (ckpt / "deepspeed").mkdir()  # a whole checkpoint as far as the intact check reads (a real torch zip)
    torch.save({}, ckpt / "deepspeed" / "mp_rank_00_model_states.pt")
    # A finished launch (its export done at step 10): resuming at max_steps=10 has nothing left to do.
    (tmp_path / "summary.json").write_text('{"status": "finished", "final_step": 10}')
    base = ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--resume", "--set", f"run.output_dir={tmp_path}"]
    proc = cli(*base, "--workers", "1", timeout=120)
    assert proc.returncode == 2 and "--workers 1" in proc.stderr and "--workers 2" in proc.stderr
    proc = cli(*base, "--set", "train.max_steps=10", timeout=120)
    assert proc.returncode == 2 and "train.max_steps=10" in proc.stderr


def test_finetune_config_starts_from_a_pipeline_directory(tmp_path):
    """configs/finetune-released.yaml: its launch command in the header; model.init_from checked at start-up."""
    header = (REPO / "configs" / "finetune-released.yaml").read_text().split("\n\n")[0]
    assert "deblurdiff convert --checkpoint" in header
    assert "deblurdiff train --config configs/finetune-released.yaml" in header
    with pytest.raises(UsageError, match=r"model\.init_from .*no such directory"):
        load("finetune-released.yaml", f"model.init_from={tmp_path / 'absent'}")
    model_dir = tmp_path / "released"
    model_dir.mkdir()
    (model_dir / "model_index.json").write_text("{}")
    cfg = load("finetune-released.yaml", f"model.init_from={model_dir}")
    assert cfg.model.init_from == str(model_dir) and cfg.train.validate_at_start
    with pytest.raises(UsageError, match=r"remove model\.preset"):
        load("finetune-released.yaml", f"model.init_from={model_dir}", "model.preset=sd21")
    # configs/tiny.yaml (model.preset: tiny) fine-tunes a tiny model directory as it is
    (model_dir / "model_index.json").write_text('{"preset": "tiny"}')
    assert load("tiny.yaml", f"model.init_from={model_dir}").model.init_from == str(model_dir)
    with pytest.raises(UsageError, match=r"remove model\.preset"):
        load("tiny.yaml", f"model.init_from={model_dir}", "model.preset=sd21")


def test_a_failed_fit_reports_the_first_workers_own_error_and_a_workers_usage_error_as_is(tmp_path):
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from deblurdiff.training.launcher import TrainingFailed, _stopped

    cfg = load("tiny.yaml")
    crash = WorkerGroupError("rank 0 and 1 failed", {1: RuntimeError("second"), 0: ValueError("disk full\nmore")})
    stopped = _stopped(crash, 3, cfg, tmp_path)
    assert isinstance(stopped, TrainingFailed)
    line = str(stopped)
    assert "after step 3" in line and "(ValueError: disk full)" in line and "run it again" in line

    # Bad data found by a worker, as Ray delivers it (a RayTaskError standing in for the UsageError).
    bad = UsageError("data.shards pairs/: rank 1's share holds fewer than one micro-batch")
    wrapped = RayTaskError("train_fn", "Traceback ...", bad).as_instanceof_cause()
    stopped = _stopped(WorkerGroupError("failed", {0: RuntimeError("collateral"), 1: wrapped}), None, cfg, tmp_path)
    assert type(stopped) is UsageError and str(stopped) == str(bad)
