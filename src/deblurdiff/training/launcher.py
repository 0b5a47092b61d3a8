"""The thin Ray launcher: size the workers, build the data stream, run the training loop, write the summary.

    from deblurdiff.training import TrainConfig, launch
    summary = launch(load_config("configs/tiny.yaml", TrainConfig), resume=False)

Ray Train V2 glue only; the algorithm is in ``loop.py``. Outputs under ``run.output_dir``::

    <run.name>/checkpoint_XXXXXXXX/   Ray Train checkpoints (storage_path = run.output_dir)
    model/                            the exported DeblurDiffPipeline (from_pretrained-able)
    wandb/                            the W&B run (offline unless wandb.mode=online)
    validation/step_XXXXXXXX.png      validation grids (blurry | decoded ẑ | restored | sharp)
    metrics.jsonl                     one line per logged step, as it happens (appended across --resume)
    summary.json                      final_step, restarts, checkpoints, last metrics, timings
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deblurdiff.errors import UsageError
from deblurdiff.training.checkpoints import choose_resume_point, existing_checkpoints
from deblurdiff.training.config import TrainConfig, check_config, micro_batch_size

logger = logging.getLogger(__name__)

__all__ = ["Resources", "RunEvents", "launch", "plan_resources"]

MAX_CPUS_PER_WORKER = 8.0  # beyond this, more intra-op threads stop paying off; give them to data


@dataclass(frozen=True)
class Resources:
    use_gpu: bool
    cpus_per_worker: float  # Ray logical CPUs reserved per training worker
    threads: int  # torch threads per CPU worker
    data_cpus: float  # CPUs left to Ray Data (reads, decode, on-the-fly synthesis)
    read_cpus: float  # per read/decode task
    synth_workers: int  # on-the-fly synthesis actors (data.images)
    synth_cpus: float  # per synthesis actor


def plan_resources(cfg: TrainConfig, nodes: list[dict]) -> Resources:
    """Size the workers from the alive nodes' resources (``ray.nodes()[i]["Resources"]``) so the data
    pipeline keeps CPUs: on a 2-CPU machine, 2 training workers get 0.5 CPU each and the data stages
    the other CPU (two 1-CPU workers would leave the readers nothing and the stream would stall).
    """
    s = cfg.scaling
    res = [n["Resources"] for n in nodes]
    total_cpus = sum(r.get("CPU", 0.0) for r in res)
    total_gpus = sum(r.get("GPU", 0.0) for r in res)
    use_gpu = total_gpus >= 1 if s.use_gpu == "auto" else s.use_gpu
    if use_gpu and total_gpus < s.workers:
        raise UsageError(f"scaling.workers={s.workers}: needs {s.workers} GPUs (one per worker) but the cluster has "
                         f"{total_gpus:g}; lower scaling.workers (--workers) or set scaling.use_gpu=false")
    data_cpus = min(s.data_cpus, max(total_cpus - 0.1 * s.workers, 0.0))
    if use_gpu:
        # Per GPU node: its CPUs shared by its GPUs, leaving a quarter of them for the data stages there.
        per_gpu = min(r.get("CPU", 0.0) / r["GPU"] for r in res if r.get("GPU", 0) >= 1)
        auto = min(MAX_CPUS_PER_WORKER, max(1.0, math.floor(per_gpu * 0.75)))
    else:
        largest_node = max(r.get("CPU", 0.0) for r in res)
        auto = min(MAX_CPUS_PER_WORKER, largest_node, (total_cpus - data_cpus) / s.workers)
        auto = math.floor(auto * 100) / 100  # Ray accepts fractional CPUs; keep it readable
    cpus = s.cpus_per_worker or auto
    if cpus < 0.05:
        raise UsageError(f"scaling.workers={s.workers}: the cluster has {total_cpus:g} CPUs, too few for "
                         f"{s.workers} workers beside {data_cpus:g} data CPUs; lower scaling.workers")
    if not use_gpu and cpus * s.workers + data_cpus > total_cpus + 1e-6:
        raise UsageError(f"scaling.cpus_per_worker={cpus:g}: {s.workers} workers plus scaling.data_cpus={data_cpus:g} "
                         f"need more than the cluster's {total_cpus:g} CPUs; lower it or leave it unset")
    synth_workers = max(1, int(data_cpus // 2))
    return Resources(
        use_gpu=bool(use_gpu), cpus_per_worker=cpus, threads=max(1, int(cpus)), data_cpus=data_cpus,
        read_cpus=max(0.05, min(0.5, data_cpus / 4)), synth_workers=synth_workers,
        synth_cpus=max(0.05, min(1.0, data_cpus / (2 * synth_workers))),
    )


def _check_resumable(checkpoint: Path, cfg: TrainConfig, model_dir: Path) -> None:
    """ZeRO shards the optimiser state per rank: a run resumes with the worker count it was saved with.
    A run at max_steps resumes only to redo an export that did not finish (no ``model/``)."""
    try:
        saved = json.loads((checkpoint / "train_state.json").read_text())
    except (OSError, ValueError):
        return  # nothing to compare against; DeepSpeed will say what it cannot load
    if saved.get("world_size") not in (None, cfg.scaling.workers):
        raise UsageError(f"--workers {cfg.scaling.workers}: {checkpoint.name} was saved by {saved['world_size']} workers "
                         f"(ZeRO shards the optimiser state per worker); resume with --workers {saved['world_size']}")
    if saved.get("step", 0) >= cfg.train.max_steps and _exported_step(model_dir.parent) == saved.get("step"):
        raise UsageError(f"train.max_steps={cfg.train.max_steps}: the run is already at step {saved['step']}; "
                         f"raise train.max_steps to continue it")


def _exported_step(out: Path) -> int | None:
    """The step of the last finished export (summary.json of a finished launch), else None."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary.get("final_step") if summary.get("status") == "finished" else None


def _worker_env(use_gpu: bool) -> dict:
    """Env for the Ray Train workers: DeepSpeed's accelerator, and the user's W&B settings (API key,
    base URL, entity...) so `wandb.mode=online` works from workers on other nodes."""
    env = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    # Ray Train V2 re-routes a worker's print() to its logger (stderr) and, as Ray's own stdout wrapper is
    # not sys.__stdout__, also prints it: every line a library prints (DeepSpeed's "... built successfully")
    # reached the console twice. Plain print: once, on stdout.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for CUDA and fail on CPU workers
    return env


def _datasets(cfg: TrainConfig, r: Resources):
    from deblurdiff.pipelines import training_dataset

    def source(shards, images, **stream):
        return training_dataset(shards=shards, images=images, crop=cfg.data.crop, recipe=cfg.data.recipe,
                                seed=cfg.run.seed, num_cpus=r.read_cpus, synth_workers=r.synth_workers,
                                synth_cpus=r.synth_cpus, use_gpu=False, **stream)

    # data.images: enough fresh passes for the whole run (each rank drops its last partial micro-batch
    # per pass, and the ranks' shares may differ a little: 10 % more).
    train = source(cfg.data.shards, cfg.data.images, crops_per_image=cfg.data.crops_per_image,
                   crop_scale=cfg.data.crop_scale,
                   min_pairs=int(cfg.train.max_steps * cfg.train.batch_size * 1.1) + 1)
    if cfg.data.cache and cfg.data.images is not None:
        logger.info("data.cache: data.images draws fresh pairs every pass; nothing is cached")
    elif cfg.data.cache:
        train = train.materialize()  # held by this driver; worker restarts do not lose it
        pairs, needed = train.count(), cfg.scaling.workers * micro_batch_size(cfg)
        logger.info("data.cache: %d pairs in the object store", pairs)
        if pairs < needed:
            raise UsageError(f"data: {pairs} pairs are fewer than one micro-batch per worker ({needed} = "
                             f"scaling.workers x micro-batch); add data or lower train.batch_size")
    held_out = cfg.data.validation_shards is not None or cfg.data.validation_images is not None
    # Validation images: one crop of every photo per pass, so the first validation_pairs pairs cover all photos.
    val = source(cfg.data.validation_shards, cfg.data.validation_images, crops_per_image=1,
                 passes=cfg.data.validation_pairs) if held_out else train
    if held_out:  # its own DataContext (each source snapshots one), so training's stream keeps its speed
        # The first N pairs in the stream's own order (shards in file order; photos pass by pass), the same
        # pairs on every run: Ray Data otherwise hands out whichever blocks finish first.
        val.context.execution_options.preserve_order = True
    rows = _first_rows(val, cfg.data.validation_pairs)
    if not rows:
        raise UsageError("data.validation: no pairs could be read for validation")
    import numpy as np

    sharp = np.stack([row["sharp"] for row in rows]).astype(np.float32)  # (N, 3, H, W)
    blurry = np.stack([row["blurry"] for row in rows]).astype(np.float32)
    return train, (sharp, blurry), held_out


def _first_rows(ds, n: int) -> list[dict]:
    """The first ``n`` rows of ``ds``, read by a one-off Ray task whose worker process exits when it returns.

    The stream's actors are owned by that worker and die with it, so the CPUs they held are free for the
    trainer at once. Read here instead, the actors outlive the read (``Dataset.take`` and even a stream read
    to its end leave them to the executor's garbage collection, and the executor sits in a reference cycle).
    """
    import ray

    def read(stream):
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # as on the driver (``connect``): no plan dumps
        return list(stream.limit(n).iter_rows())

    return ray.get(ray.remote(num_cpus=0, max_calls=1)(read).remote(ds))


class RunEvents:
    """What happened during one launch, told by world rank 0: worker-group starts (restarts after
    failures), every logged step (appended to ``metrics.jsonl`` at once, so the file follows the run),
    every registered checkpoint.

    Runs as a Ray actor on the driver's node (``launch``), so it writes where the driver reads; a
    plain class, so it is tested without Ray.
    """

    def __init__(self, metrics_path: str | Path, launch_time: float):
        self.metrics_path, self.launch_time = Path(metrics_path), launch_time
        self.groups, self.steps, self.checkpoints = [], [], []

    def group_started(self, step: int, startup_s: dict) -> None:
        self.groups.append({"start_step": step, "time": time.time(), "startup_s": startup_s})

    def record_step(self, step: int, metrics: dict) -> None:
        """One JSON line per logged step (``group``: worker-group index, 0 unless a failure restarted
        it; ``launch``: this launch's start time, so --resume runs are told apart)."""
        row = {"step": step, "group": len(self.groups) - 1, "time": time.time(), **metrics}
        self.steps.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"launch": self.launch_time, **row}) + "\n")

    def record_checkpoint(self, step: int, name: str) -> None:
        self.checkpoints.append({"step": step, "name": name, "group": len(self.groups) - 1})

    def snapshot(self) -> dict:
        return {"groups": self.groups, "steps": self.steps, "checkpoints": self.checkpoints}


def _start_run_events(metrics_path: Path, launch_time: float):
    """The RunEvents actor, pinned to this (the driver's) node: ``metrics.jsonl`` lands where
    ``summary.json`` does, even when output_dir is not shared storage."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(RunEvents).options(scheduling_strategy=here).remote(metrics_path, launch_time)


def build_summary(cfg: TrainConfig, record: dict, *, started: float, data_ready: float, resources: Resources,
                  held_out: bool, result=None, error: BaseException | None = None) -> dict:
    """summary.json: how far the run got (``record``: ``RunEvents.snapshot()``), and either its result
    (``result``: Ray Train's) or why it stopped (``error``)."""
    groups = record["groups"]
    final = (result.return_value or {}) if result is not None else {}
    logged = [row["step"] for row in record["steps"]]
    summary = {
        "status": "failed" if error is not None else "finished",
        **({"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
           if error is not None else {}),
        "final_step": final.get("final_step"),
        "last_step": final.get("final_step") or max(logged, default=None),  # the last step logged
        "max_steps": cfg.train.max_steps,
        "restarts": max(0, len(groups) - 1),
        "resumed_from_step": groups[0]["start_step"] if groups else None,
        "checkpoints": [c["step"] for c in record["checkpoints"]],
        "latest_checkpoint": result.checkpoint.path if result is not None and result.checkpoint else None,
        "last_metrics": final.get("last_metrics", {}),
        "model_dir": final.get("model_dir"),
        "validation_held_out": held_out,
        "trainable": final.get("trainable"),
        "frozen_digest_start": final.get("frozen_digest_start"),
        "frozen_digest_end": final.get("frozen_digest_end"),
        "workers": cfg.scaling.workers,
        "resources": asdict(resources),
        "precision": final.get("precision"),
        "wall_s": round(time.time() - started, 2),
        # Where the wall time went: data (listing, cache, held-out pairs), worker start-up (Ray Train
        # workers, model build, DeepSpeed init) until rank 0 began, then the steps and the export.
        "timings_s": {
            "data": round(data_ready - started, 2),
            "workers_start": round(groups[0]["time"] - data_ready, 2) if groups else None,
            "worker_phases": groups[0]["startup_s"] if groups else None,
            "train_and_export": round(time.time() - groups[0]["time"], 2) if groups else None,
        },
    }
    return summary


def launch(cfg: TrainConfig, *, resume: bool = False, address: str | None = None) -> dict:
    """Train with Ray Train + DeepSpeed as configured; returns the summary (also in summary.json)."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from deblurdiff._ray import connect
    from deblurdiff.training.loop import train_loop_per_worker
    from deblurdiff.files import atomic_write_text

    started = time.time()
    # 1. Check the config and the output dir before any cluster work.
    check_config(cfg)
    out = Path(cfg.run.output_dir).expanduser().resolve()
    cfg.run.output_dir = str(out)  # workers on other nodes need the absolute path
    run_dir = out / cfg.run.name
    previous = existing_checkpoints(run_dir)
    if previous and not resume:
        raise UsageError(f"run.output_dir {out}: already holds run '{cfg.run.name}' with {len(previous)} "
                         f"checkpoint(s); pass --resume to continue it, or set run.output_dir / run.name")
    resume_from = None
    if resume:  # the newest intact checkpoint (damaged newer ones are set aside, with a warning)
        point = choose_resume_point(run_dir, cfg.run.name, out)
        _check_resumable(point.path, cfg, out / "model")
        resume_from = str(point.path) if point.damaged else None
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".model.tmp-*"):  # an export killed half-way (never under the final name)
        shutil.rmtree(stale, ignore_errors=True)

    # 2. Ray: size the workers so the data stages keep CPUs; build the data stream + held-out pairs.
    # A local instance gets the dashboard: Ray Train V2's PlacementGroupCleaner polls the state API it
    # serves, and without it prints "Failed to query Ray Train Controller actor state" every second.
    connect(address, dashboard=True)
    r = plan_resources(cfg, [n for n in ray.nodes() if n.get("Alive")])
    logger.info("resources: %s", r)
    # The training stream runs for the whole job: its progress bars would bury the step log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    train_ds, validation, held_out = _datasets(cfg, r)
    events = _start_run_events(out / "metrics.jsonl", started)
    data_ready = time.time()

    # 3. The trainer: TorchTrainer runs the training loop on every worker; storage_path = run.output_dir, so
    #    the same output_dir + run.name finds the run again (restarts and --resume).
    worker_resources = {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "events": events, "validation": validation,
                           "use_gpu": r.use_gpu, "threads": r.threads, "resume_from": resume_from},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.workers, use_gpu=r.use_gpu,
                                     resources_per_worker=worker_resources),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=str(out),
            failure_config=FailureConfig(max_failures=cfg.failure.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            worker_runtime_env={"env_vars": _worker_env(r.use_gpu)},
        ),
        datasets={"train": train_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    # 4. Fit, then summary.json either way: how far it got, and the result or why it stopped (the CLI
    #    then exits 1 with the error).
    result, error = None, None
    try:
        result = trainer.fit()
    except Exception as exc:
        error = exc
    finally:  # summary.json either way (a Ctrl-C too)
        summary = build_summary(cfg, ray.get(events.snapshot.remote()), started=started, data_ready=data_ready,
                                resources=r, held_out=held_out, result=result, error=error)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    if error is not None:
        raise _stopped(error, summary["last_step"], cfg, run_dir) from error
    m = summary["last_metrics"]
    print(f"deblurdiff train: step {summary['final_step']}/{cfg.train.max_steps} in {summary['wall_s']:.0f} s, "
          f"{summary['restarts']} restart(s), {len(summary['checkpoints'])} checkpoint(s); "
          f"loss {m.get('train/loss', float('nan')):.4f}, val latent MSE {m.get('val/latent_mse', float('nan')):.4f} "
          f"(blurry {m.get('val/blurry_latent_mse', float('nan')):.4f}); model -> {summary['model_dir']}", flush=True)
    return summary


class TrainingFailed(RuntimeError):
    """The run stopped (a worker died, an error in the loop); the message says where and what next."""


def _stopped(error: Exception, last_step: int | None, cfg: TrainConfig, run_dir: Path) -> Exception:
    """What the CLI reports for a failed fit: a worker's UsageError as it is (bad data: every attempt fails
    the same way, exit 2), else TrainingFailed saying where it stopped and what next (exit 1)."""
    bad_input = _usage_error(error)
    return UsageError(str(bad_input)) if bad_input is not None else \
        TrainingFailed(_failure_line(error, last_step, cfg, run_dir))


def _worker_errors(exc: Exception) -> list[Exception]:
    """The workers' own exceptions behind a Ray Train failure (a ``WorkerGroupError``), by rank, else ``[exc]``.
    A RayTaskError stands in for the worker's exception (its text is Ray's traceback header): its ``cause``."""
    failures = getattr(exc, "worker_failures", None) or {}
    errors = [failures[rank] for rank in sorted(failures)] or [exc]
    return [getattr(error, "cause", None) or error for error in errors]


def _usage_error(exc: Exception) -> UsageError | None:
    """A worker's UsageError (bad data: no retry or resume can fix it), or None."""
    return next((error for error in _worker_errors(exc) if isinstance(error, UsageError)), None)


def _failure_line(exc: Exception, last_step: int | None, cfg: TrainConfig, run_dir: Path) -> str:
    # A worker group's message starts with a header line ("Training failed due to worker errors:"); the
    # first worker's own error says what happened.
    exc = _worker_errors(exc)[0]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kept = existing_checkpoints(run_dir)
    if last_step is None:
        where = "before its first step"
    elif last_step >= cfg.train.max_steps:
        where = f"after its last step ({last_step}), before the export to model/ finished"
    else:
        where = f"after step {last_step}"
    hint = (f"the newest checkpoint is {kept[-1]}: continue with the same command and --resume" if kept
            else "no checkpoint was written: run it again")
    return f"training stopped {where} of max_steps {cfg.train.max_steps} ({type(exc).__name__}: {first}); {hint}"
