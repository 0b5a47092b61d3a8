"""The training loop's parts, one process, no Ray cluster: the run-events log and summary, the metric
logger, the loss window, the data position on resume, checkpoint write/read through a real (single-rank)
DeepSpeed engine, validation, and the export of the trained pipeline.

A change to one of these is checked here in seconds; ``test_train_e2e.py`` checks them together on the
cluster.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from types import SimpleNamespace

import pytest
import torch

from deblurdiff.config import load_config
from deblurdiff.models import COMPONENTS, LossTerms
from deblurdiff.training.config import TrainConfig
from deblurdiff.training.launcher import Resources, RunEvents, build_summary
from deblurdiff.training.loop import _micro_batches, build_pipeline, micro_step, prepare_model
from deblurdiff.training.metric_logger import LossWindow, MetricLogger
from deblurdiff.training.state import TrainState, read_checkpoint, write_checkpoint


def _cfg(tmp_path, *overrides: str) -> TrainConfig:
    return load_config(None, TrainConfig, [f"run.output_dir={tmp_path}", "data.shards=unused", "train.max_steps=10",
                                           "train.batch_size=2", "scaling.workers=1", "wandb.mode=disabled",
                                           *overrides])


class InProcess:
    """An object called the way an actor handle is (``handle.method.remote(...)``), run in this process:
    the real RunEvents class without a Ray cluster."""

    def __init__(self, target):
        self.target = target

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self.target, name))


# ------------------------------------------------------------------------------- run events + summary
def test_run_events_append_each_logged_step_to_metrics_jsonl_as_it_happens(tmp_path):
    path = tmp_path / "metrics.jsonl"
    events = RunEvents(path, launch_time=123.0)
    events.group_started(0, {"model": 1.0})
    events.record_step(1, {"train/loss": 0.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1]  # written at once
    events.record_checkpoint(1, "checkpoint_00000001")
    events.group_started(1, {})  # a worker-group restart
    events.record_step(2, {"train/loss": 0.4, "val/loss": 0.3})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["group"], r["launch"]) for r in rows] == [(1, 0, 123.0), (2, 1, 123.0)]
    assert rows[1]["val/loss"] == 0.3
    snap = events.snapshot()
    assert [g["start_step"] for g in snap["groups"]] == [0, 1]
    assert snap["checkpoints"] == [{"step": 1, "name": "checkpoint_00000001", "group": 0}]


def test_summary_of_a_failed_and_a_finished_run(tmp_path):
    cfg = _cfg(tmp_path)
    resources = Resources(False, 1.0, 1, 1.0, 0.25, 1, 0.5)
    events = RunEvents(tmp_path / "metrics.jsonl", launch_time=0.0)
    events.group_started(0, {"model": 2.0})
    events.record_step(3, {"train/loss": 0.5})
    events.group_started(2, {})
    failed = build_summary(cfg, events.snapshot(), started=0.0, data_ready=0.0, resources=resources, held_out=True,
                           error=RuntimeError("worker died\ntraceback..."))
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: worker died"
    assert failed["last_step"] == 3 and failed["restarts"] == 1 and failed["final_step"] is None

    result = SimpleNamespace(checkpoint=None, return_value={"final_step": 10, "last_metrics": {"train/loss": 0.1},
                                                            "model_dir": "/m"})
    done = build_summary(cfg, events.snapshot(), started=0.0, data_ready=0.0, resources=resources, held_out=True,
                         result=result)
    assert done["status"] == "finished" and "error" not in done
    assert done["final_step"] == 10 and done["last_metrics"] == {"train/loss": 0.1} and done["model_dir"] == "/m"
    assert done["timings_s"]["worker_phases"] == {"model": 2.0}
    json.dumps(done)  # summary.json must serialise


# ------------------------------------------------------------------------------- metric logger
def test_metric_logger_writes_once_on_rank_0_and_nothing_elsewhere(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    metrics = {"train/loss": 0.25, "train/diffusion_loss": 0.2, "train/latent_loss": 0.05}
    rows = {}
    for rank in (0, 1):
        events = RunEvents(tmp_path / f"metrics-{rank}.jsonl", launch_time=0.0)
        events.group_started(0, {})
        log = MetricLogger(cfg, rank, InProcess(events))
        with caplog.at_level(logging.INFO, logger="deblurdiff.training.metric_logger"):
            caplog.clear()
            log.log(4, metrics)
            log.log(4, {"val/loss": 0.3})
            console = [r.getMessage() for r in caplog.records]
        rows[rank] = events.snapshot()["steps"]
        assert log.latest == {**metrics, "val/loss": 0.3}  # every rank knows the latest (for its report)
        if rank == 0:
            assert console == ["step 4/10 loss 0.2500 (diffusion 0.2000, latent 0.0500) 0.00 samples/s"]
        else:
            assert console == []
        log.finish()
    assert [r["step"] for r in rows[0]] == [4, 4] and rows[1] == []


def test_loss_window_means_over_steps_and_times_only_the_timed_ones():
    window = LossWindow()
    terms = lambda x: LossTerms(loss=torch.tensor(x), diffusion_loss=torch.tensor(x / 2),  # noqa: E731
                                latent_loss=torch.tensor(x / 4), start_latent_loss=torch.tensor(x / 8))
    for values, seconds in (((1.0, 3.0), None), ((2.0, 2.0), 0.5), ((4.0, 6.0), 1.5)):  # grad_accum = 2
        for v in values:
            window.add_micro_step(terms(v), grad_accum=2)
        window.end_step(samples=8, seconds=seconds)
    m = window.metrics()
    assert m["train/loss"] == pytest.approx((2.0 + 2.0 + 5.0) / 3)
    assert m["train/diffusion_loss"] == pytest.approx(m["train/loss"] / 2)
    assert m["train/start_latent_loss"] == pytest.approx(m["train/loss"] / 8)
    assert "train/start_latent_loss" not in LossWindow(steps=1).metrics()  # not trained: not reported
    assert m["train/samples_per_s"] == pytest.approx(16 / 2.0) and m["train/s_per_step"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------- data position on resume
class ListShard:
    """A data shard of fixed batches, iterated the way Ray Data's ``iter_torch_batches`` is."""

    def __init__(self, n):
        self.n = n

    def iter_torch_batches(self, **_):
        return ({"i": i} for i in range(self.n))


def test_micro_batches_resume_after_what_was_trained_on(tmp_path):
    cfg = _cfg(tmp_path, "data.shuffle_buffer=0")
    state = TrainState()
    stream = _micro_batches(ListShard(5), 1, cfg, state, rank=0)
    seen = [next(stream)["i"] for _ in range(7)]
    assert seen == [0, 1, 2, 3, 4, 0, 1] and (state.epoch, state.batches_in_epoch) == (1, 2)
    resumed = TrainState.from_dict(json.loads(json.dumps(state.to_dict())))  # as a checkpoint holds it
    again = _micro_batches(ListShard(5), 1, cfg, resumed, rank=0)
    assert [next(again)["i"] for _ in range(4)] == [2, 3, 4, 0] and resumed.epoch == 2


def test_micro_batches_name_the_fix_when_a_shard_is_too_small(tmp_path):
    from deblurdiff.errors import UsageError

    # bad input (exit 2 through the launcher), naming the data key, the rank and the setting to change
    why = r"^data.shards \S+: rank 0's share .* fewer than one micro-batch .*train.batch_size"
    with pytest.raises(UsageError, match=why):
        next(_micro_batches(ListShard(0), 2, _cfg(tmp_path), TrainState(), rank=0))


# ------------------------------------------------------------------------------- checkpoints (one rank)
@pytest.fixture(scope="module")
def single_rank_process_group():
    """torch.distributed with one gloo rank, as Ray Train sets it up for each worker."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                            "DS_ACCELERATOR")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _engine(cfg):
    from deblurdiff.training.engine import build_engine

    model = prepare_model(cfg, torch.device("cpu"), bf16=False, gradient_checkpointing=False)
    engine, _, scheduler = build_engine(model.module, cfg, world_size=1, on_gpu=False, bf16=False)
    return model, engine, scheduler


def test_checkpoint_round_trip_continues_exactly_where_it_stopped(tmp_path, single_rank_process_group):
    cfg = _cfg(tmp_path, "train.warmup_steps=2", "model.trainable=[controlnet,lkpn]")
    g = torch.Generator().manual_seed(1)
    batch = {"sharp": torch.rand(2, 3, 16, 16, generator=g), "blurry": torch.rand(2, 3, 16, 16, generator=g)}

    model, engine, scheduler = _engine(cfg)
    context = model.pipe.null_text_embedding(2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        micro_step(engine, model.pipe, batch, generator, context, bf16=False)
    state = TrainState(step=2, epoch=1, batches_in_epoch=3, samples_seen=4)
    write_checkpoint(tmp_path / "ckpt", engine, state, 0, 1, generator)
    assert json.loads((tmp_path / "ckpt" / "train_state.json").read_text())["world_size"] == 1
    expected = micro_step(engine, model.pipe, batch, generator, context, bf16=False).loss.item()
    expected_lr = scheduler.get_last_lr()[0]
    expected_weights = {k: v.clone() for k, v in engine.module.state_dict().items()}

    # A fresh worker: same build, then the checkpoint restores weights, optimiser, LR, RNG and position.
    model2, engine2, scheduler2 = _engine(cfg)
    generator2 = torch.Generator().manual_seed(0)
    restored = read_checkpoint(tmp_path / "ckpt", engine2, 0, generator2, seed=cfg.run.seed)
    assert restored == state
    again = micro_step(engine2, model2.pipe, batch, generator2, model2.pipe.null_text_embedding(2), bf16=False)
    assert again.loss.item() == expected  # same weights, same t and noise from the restored generator
    assert scheduler2.get_last_lr()[0] == expected_lr
    for k, v in engine2.module.state_dict().items():
        torch.testing.assert_close(v, expected_weights[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------- validation + export
def test_validation_metrics_and_grid_are_deterministic(tiny_pipe):
    from deblurdiff.training.validation import validate_pairs

    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(2, 3, 32, 32, generator=g)
    blurry = (sharp + 0.1 * torch.rand(2, 3, 32, 32, generator=g)).clamp(0, 1)
    metrics, grid = validate_pairs(tiny_pipe, sharp, blurry, steps=2, seed=0)
    again, _ = validate_pairs(tiny_pipe, sharp, blurry, steps=2, seed=0)
    assert metrics == again
    assert {"val/loss", "val/diffusion_loss", "val/latent_mse", "val/blurry_latent_mse", "val/psnr_blurry",
            "val/psnr_restored"} <= set(metrics)
    assert grid.shape == (2 * 32, 4 * 32, 3) and grid.dtype.name == "uint8"  # blurry | ẑ | restored | sharp


def test_export_writes_the_trained_pipeline_with_frozen_parts_bit_for_bit(tmp_path):
    from deblurdiff import DeblurDiffPipeline
    from deblurdiff.training.export import export_pipeline

    cfg = _cfg(tmp_path, "model.trainable=[controlnet,lkpn]")
    # bf16 on the CPU: the frozen parts are cast for training, and must still be exported as built.
    model = prepare_model(cfg, torch.device("cpu"), bf16=True, gradient_checkpointing=False, keep_frozen_fp32=True)
    assert model.pipe.unet.dtype == torch.bfloat16 and set(model.frozen_fp32) == {"vae", "unet", "null_text"}
    trained = {k: v + 0.01 for k, v in model.module.state_dict().items()}  # stands in for the ZeRO gather
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier export")
    export_pipeline(model.pipe, trained, model.frozen_fp32, out)

    assert not (out / "stale.txt").exists() and not list(tmp_path.glob(".model.*"))  # replaced whole
    loaded = DeblurDiffPipeline.from_pretrained(out)
    fresh = build_pipeline(cfg)
    assert list(loaded.config.trainable_components) == ["controlnet", "lkpn"]
    for name in COMPONENTS:
        got, ref = getattr(loaded, name).state_dict(), getattr(fresh, name).state_dict()
        assert got.keys() == ref.keys()
        if name in ("controlnet", "lkpn"):
            for k, v in got.items():
                torch.testing.assert_close(v, trained[f"{name}.{k}"], rtol=0, atol=0)
        else:
            assert all(v.dtype == torch.float32 and torch.equal(v, ref[k]) for k, v in got.items()), name
