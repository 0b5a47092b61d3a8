"""The co-training loop: what every Ray Train worker runs (one data-parallel rank).

Shaped like a torchtune distributed recipe, read top to bottom:

    train_loop_per_worker(config)     the Ray Train entry point
      setup(config)       -> Worker   model, DeepSpeed engine, resume, metric logger, data
      train(worker)                   the loop, numbered steps; validation; checkpoints; export
        validate(worker)
        save_checkpoint(worker) / load_checkpoint(worker)

The algorithm is DESIGN §1, "Training":

    loss = MSE(eps_pred, eps) + λ · MSE(ẑ, z_0),   t ~ U{0..999},   empty-prompt context

(the loss itself is ``deblurdiff.models.training_step``: a v-prediction preset regresses v instead of eps).

The trainable parts (ControlNet + LKPN; the tiny preset also its UNet) are ONE ``nn.Module``
(``CoTrainingModule``) inside a DeepSpeed engine (ZeRO, bf16 autocast on GPU, clipping, accumulation); the
frozen VAE / UNet / empty-prompt embedding stay outside it, in eval mode, without gradients.

Everything comes from ``config`` (built by ``launcher.py``): the validated TrainConfig as a dict,
the resources the launcher chose, the held-out pairs and a handle to the run's event log.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deblurdiff.models.presets import COMPONENTS
from deblurdiff.training.augment import dihedral_pairs

logger = logging.getLogger(__name__)

__all__ = ["PreparedModel", "Worker", "build_pipeline", "micro_step", "prepare_model", "setup", "train",
           "train_loop_per_worker", "validate"]


def train_loop_per_worker(config: dict) -> dict | None:
    """Ray Train's per-worker function: set up, train, export. Returns the run's result on rank 0."""
    return train(setup(config))


# ----------------------------------------------------------------------------------------- setup
@dataclass
class Worker:
    """What ``setup`` builds for one rank; ``train`` and its helpers read and advance it."""

    cfg: object  # TrainConfig
    rank: int
    world_size: int
    device: torch.device
    bf16: bool
    model: "PreparedModel"
    engine: object  # deepspeed.DeepSpeedEngine over model.module
    lr_scheduler: object
    context: torch.Tensor  # (micro, L, D) empty-prompt context on the device
    generator: torch.Generator  # this rank's timesteps and noise (saved in checkpoints)
    state: object  # TrainState: step, data position
    metrics: object  # MetricLogger
    events: object  # RunEvents actor handle (launcher.py)
    validation_pairs: tuple[torch.Tensor, torch.Tensor]  # (sharp, blurry), each (N, 3, H, W) in [0, 1]
    batches: object = None  # endless micro-batches from this rank's data shard
    startup_s: dict = field(default_factory=dict)  # seconds per start-up phase (summary.json)


def setup(config: dict) -> Worker:
    """Everything one rank needs before its first step, in order: device, model, engine, resume,
    metric logger, data."""
    import ray.train
    import ray.train.torch

    from deblurdiff.training.config import TrainConfig, micro_batch_size
    from deblurdiff.training.engine import build_engine
    from deblurdiff.training.metric_logger import MetricLogger
    from deblurdiff.training.state import TrainState

    cfg = TrainConfig.model_validate(config["cfg"])
    clock = _Clock()
    # DeepSpeed's ZeRO all-gathers use a call torch has deprecated: one warning per step otherwise.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)

    # 1. Who and where am I. Ray Train has already created the process group (NCCL on GPU, gloo on
    #    CPU) and set RANK/LOCAL_RANK/WORLD_SIZE, which DeepSpeed reuses.
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = bool(config["use_gpu"]) and torch.cuda.is_available()
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and on_gpu)
    if not on_gpu:
        torch.set_num_threads(config["threads"])  # the CPUs Ray reserved for this worker, no more
    micro = micro_batch_size(cfg)

    # 2. The model: every rank builds the same weights (same seed); DeepSpeed also broadcasts rank 0's.
    grad_ckpt = on_gpu if cfg.train.gradient_checkpointing == "auto" else cfg.train.gradient_checkpointing
    model = prepare_model(cfg, device, bf16=bf16, gradient_checkpointing=grad_ckpt, keep_frozen_fp32=rank == 0)
    clock.mark("model")

    # 3. The DeepSpeed engine over the trainable parts (AdamW, warm-up + cosine LR, ZeRO, clipping).
    engine, _, lr_scheduler = build_engine(model.module, cfg, world, on_gpu, bf16)
    context = model.pipe.null_text_embedding(micro).to(device, torch.bfloat16 if bf16 else torch.float32)
    generator = torch.Generator().manual_seed(cfg.run.seed * 1000 + rank)  # t and eps for this rank
    clock.mark("deepspeed")

    w = Worker(cfg=cfg, rank=rank, world_size=world, device=device, bf16=bf16, model=model, engine=engine,
               lr_scheduler=lr_scheduler, context=context, generator=generator, state=TrainState(),
               metrics=None, events=config["events"],
               validation_pairs=tuple(torch.tensor(a) for a in config["validation"]))  # copies of the arrays

    # 4. Resume from the latest checkpoint Ray Train hands back, if any (or the intact one --resume chose).
    load_checkpoint(w, config.get("resume_from"))
    clock.mark("resume")

    # 5. The metric logger (W&B on rank 0) and the data: endless micro-batches from this rank's shard,
    #    starting where the checkpoint left off.
    w.metrics = MetricLogger(cfg, rank, w.events)
    clock.mark("wandb")
    w.batches = _micro_batches(ray.train.get_dataset_shard("train"), micro, cfg, w.state, rank)
    w.startup_s = clock.marks
    return w


@dataclass
class PreparedModel:
    pipe: object  # DeblurDiffPipeline on the device
    module: torch.nn.Module  # CoTrainingModule: the trainable parts, train mode (for the engine)
    frozen: dict[str, torch.nn.Module]  # component -> frozen module (eval, no grads)
    # component -> the frozen module's fp32 CPU state as built, for the export (empty unless asked)
    frozen_fp32: dict[str, dict[str, torch.Tensor]]


def build_pipeline(cfg, **kwargs):
    """The configured preset (or the ``model.init_from`` pipeline directory) with the configured
    trainable parts (fp32 on the CPU unless ``device`` / ``torch_dtype`` in ``kwargs`` say otherwise)."""
    from deblurdiff import DeblurDiffPipeline

    m = cfg.model
    if m.init_from is not None:
        from deblurdiff.model_dir import load_pipeline

        device = kwargs.pop("device", None) or "cpu"
        # from_pretrained loads fp32 (a float16 conversion too): the trainable parts get fp32 master weights.
        pipe = load_pipeline(m.init_from, flag="model.init_from", device=str(device))
        if kwargs.get("torch_dtype") is not None:
            pipe.to(dtype=kwargs["torch_dtype"])
        pipe.set_trainable(m.trainable or pipe.config.trainable_components)
        return pipe
    return DeblurDiffPipeline.from_preset(m.preset, base_model=m.base_model, random_init=m.random_init,
                                          seed=cfg.run.seed, trainable=m.trainable, **kwargs)


def prepare_model(cfg, device: torch.device, *, bf16: bool, gradient_checkpointing: bool, pipe=None,
                  keep_frozen_fp32: bool = False) -> PreparedModel:
    """The configured pipeline (or ``pipe``, already built) on ``device`` and its trainable parts as
    ONE module.

    Frozen parts (VAE, the empty-prompt embedding, and the UNet unless the preset trains it) are in
    eval mode without gradients, stored in bf16 when training in bf16 (they need no fp32 copy on the
    device). ``keep_frozen_fp32``: keep their weights as built (fp32, CPU) for the export, which then
    writes them bit for bit. The trainable parts stay fp32 (bf16 compute comes from autocast, see
    ``deepspeed_config``).
    """
    from deblurdiff.models import CoTrainingModule

    pipe = pipe if pipe is not None else build_pipeline(cfg)
    pipe.set_progress_bar_config(disable=True)
    trainable = pipe.trainable_modules()
    frozen = {name: getattr(pipe, name) for name in COMPONENTS if name not in trainable}
    # state_dict() holds the current tensors; .to() below gives the modules new ones, so these stay fp32.
    frozen_fp32 = {name: module.state_dict() for name, module in frozen.items()} if keep_frozen_fp32 else {}
    pipe.to(device)
    for module in frozen.values():
        module.eval().requires_grad_(False)
        if bf16:
            module.to(torch.bfloat16)
    if gradient_checkpointing:
        # The frozen UNet's activations are kept too (gradients flow through it to the ControlNet
        # residuals), so checkpoint every UNet in the graph, the LKPN's included.
        for name in ("unet", "controlnet", "lkpn"):
            for sub in getattr(pipe, name).modules():
                if getattr(sub, "_supports_gradient_checkpointing", False):
                    sub.enable_gradient_checkpointing()
    module = CoTrainingModule(pipe, latent_weight=cfg.train.latent_weight, start_weight=cfg.train.start_latent_weight,
                              noise_from=cfg.train.noise_from, fidelity=cfg.train.fidelity_loss).train()
    return PreparedModel(pipe, module, frozen, frozen_fp32)


# ----------------------------------------------------------------------------------------- train
def train(w: Worker) -> dict | None:
    """The loop: one iteration = one optimiser step = grad_accum micro-batches on every rank. Then the
    export. Returns the run's result on rank 0 (None elsewhere)."""
    from deblurdiff.training.engine import full_fp32_state_dict
    from deblurdiff.training.export import export_pipeline
    from deblurdiff.training.metric_logger import LossWindow
    from deblurdiff.training.state import digest_modules

    cfg, state = w.cfg, w.state
    frozen_digest_start = digest_modules(w.model.frozen)
    if w.rank == 0:
        w.events.group_started.remote(state.step, w.startup_s)
    if cfg.train.validate_at_start and state.step == 0:
        w.metrics.log(0, validate(w))  # the untrained baseline, logged at step 0

    window, first_step, validated_step = LossWindow(), True, None
    while state.step < cfg.train.max_steps:
        # 1. grad_accum micro-batches through the engine; the optimiser steps on the last one.
        started = time.perf_counter()
        for _ in range(cfg.train.grad_accum):
            terms = micro_step(w.engine, w.model.pipe, next(w.batches), w.generator, w.context, bf16=w.bf16,
                               max_timestep=cfg.train.max_timestep, augment=cfg.data.augment)
            window.add_micro_step(terms, cfg.train.grad_accum)
        state.step += 1
        state.samples_seen += cfg.train.batch_size
        # The first step of a worker group also pays for warm-up and the data stream's start: untimed.
        window.end_step(cfg.train.batch_size, None if first_step else time.perf_counter() - started)
        first_step = False
        step_metrics: dict = {}

        # 2. Training metrics every log_every steps (rank 0 writes them): this rank's window means,
        #    LR, grad norm, throughput.
        if state.step % cfg.run.log_every == 0 or state.step == cfg.train.max_steps:
            step_metrics.update(window.metrics())
            step_metrics.update({"train/lr": w.lr_scheduler.get_last_lr()[0],
                                 "train/grad_norm": float(w.engine.get_global_grad_norm() or 0.0),
                                 "train/epoch": state.epoch})
            window = LossWindow()

        # 3. Validate every validate_every steps and at the last one, on the held-out pairs (every
        #    rank runs it: no rank races ahead into the next collective).
        if (cfg.train.validate_every and state.step % cfg.train.validate_every == 0) \
                or state.step == cfg.train.max_steps:
            step_metrics.update(validate(w))
            validated_step = state.step
        w.metrics.log(state.step, step_metrics)  # one row per step: training and validation together

        # 4. Checkpoint every checkpoint_every steps and at the end, so `--resume` can go further.
        if state.step % cfg.train.checkpoint_every == 0 or state.step == cfg.train.max_steps:
            save_checkpoint(w)

    # 5. End: the final validation unless the loop just ran it (a group restarted after the last
    #    checkpoint runs no step), the consolidated fp32 weights (collective), the export on rank 0.
    if validated_step != state.step:
        w.metrics.log(state.step, validate(w))
    weights = full_fp32_state_dict(w.engine)
    frozen_digest_end = digest_modules(w.model.frozen)
    w.metrics.finish()
    if w.rank != 0:
        return None
    model_dir = export_pipeline(w.model.pipe, weights, w.model.frozen_fp32, Path(cfg.run.output_dir, "model"))
    if cfg.train.max_timestep is not None:
        # Never trained from pure noise: its defaults are the settings the final validation sampled with.
        from deblurdiff.model_dir import record_sampling

        record_sampling(model_dir, validation_sampling(cfg, w.model.pipe),
                        validated_on={"data": "the run's validation pairs (training's final validation)",
                                      "step": state.step})
    return {
        "final_step": state.step,
        "samples_seen": state.samples_seen,
        "last_metrics": dict(w.metrics.latest),
        "model_dir": str(model_dir),
        "trainable": sorted(w.model.pipe.trainable_modules()),
        "frozen_digest_start": frozen_digest_start,
        "frozen_digest_end": frozen_digest_end,
        "precision": "bf16" if w.bf16 else "fp32",
        "device": str(w.device),
        "world_size": w.world_size,
    }


def micro_step(engine, pipe, batch: dict, generator: torch.Generator, context: torch.Tensor, *, bf16: bool,
               max_timestep: int | None = None, augment: str = "none"):
    """One micro-batch through the DeepSpeed engine; returns the loss terms (``LossTerms``).

    batch: {"sharp", "blurry"} float (B, 3, H, W) in [0, 1]. The optimiser and LR schedule step
    inside ``engine.step()`` only at the gradient-accumulation boundary. ``augment``: data.augment.
    """
    device = context.device
    max_timestep = max_timestep or pipe.scheduler.config.num_train_timesteps
    sharp, blurry = batch["sharp"], batch["blurry"]
    if augment == "dihedral":
        sharp, blurry = dihedral_pairs(sharp, blurry, generator)
    # a. latents, without gradients (the VAE is frozen): z_0 from sharp, z_b from blurry
    with torch.no_grad():
        z_0 = pipe.encode(sharp.to(device, non_blocking=True))
        z_b = pipe.encode(blurry.to(device, non_blocking=True), blurry=True)
    # b. t ~ U{0..T−1} (T: train.max_timestep or the schedule's 1000) and eps ~ N(0, I), from this rank's
    #    generator (saved in checkpoints)
    t = torch.randint(0, max_timestep, (z_0.shape[0],), generator=generator)
    eps = torch.randn(z_0.shape, generator=generator)
    # c. forward: x_t = q(z_0, t, eps); LKPN + EAC -> ẑ; ControlNet(x_t, [z_b, ẑ]); UNet -> eps_pred
    #    (bf16: autocast over fp32 trainable weights; the engine's torch_autocast says the same)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        terms = engine(z_0, z_b, eps.to(device), t.to(device), context)
    # d. backward + step: DeepSpeed reduces (ZeRO-2: reduce-scatters) the gradients over the ranks,
    #    clips, and steps AdamW + the LR schedule at the accumulation boundary.
    engine.backward(terms.loss)
    engine.step()
    return terms


# ----------------------------------------------------------------------------------------- validation
def validation_sampling(cfg, pipe) -> dict:
    """The sampler settings training's validation restores with: DPM-Solver++, train.validation_steps,
    from the highest strength the run trains for (max_timestep / T; 1.0: pure noise), with enough steps
    that at least one denoising step runs there (img2img runs int(steps · strength))."""
    from deblurdiff.diffusion import denoising_steps

    total = pipe.scheduler.config.num_train_timesteps
    strength = min(cfg.train.max_timestep or total, total) / total
    steps = cfg.train.validation_steps
    while denoising_steps(steps, strength) < 1:
        steps += 1
    return {"sampler": "dpmpp", "steps": steps, "strength": strength}


def validate(w: Worker) -> dict[str, float]:
    """Held-out metrics (``training.validation``); rank 0 also logs the image grid and saves it as
    ``<output_dir>/validation/step_XXXXXXXX.png``."""
    from deblurdiff.training.validation import validate_pairs

    cfg = w.cfg
    sharp, blurry = w.validation_pairs
    w.model.module.eval()
    sampling = validation_sampling(cfg, w.model.pipe)
    metrics, grid = validate_pairs(w.model.pipe, sharp, blurry, steps=sampling["steps"], seed=cfg.run.seed,
                                   bf16=w.bf16, latent_weight=cfg.train.latent_weight, strength=sampling["strength"])
    w.model.module.train()
    if w.rank == 0:
        w.metrics.log_image("val/grid", grid, w.state.step, caption="blurry | decoded ẑ | restored | sharp")
        _save_png(Path(cfg.run.output_dir, "validation", f"step_{w.state.step:08d}.png"), grid)
    return metrics


# ----------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(w: Worker) -> None:
    """Each rank writes its DeepSpeed state (ZeRO shards) + RNG into a temp dir and reports it; Ray
    Train merges the ranks' directories into one checkpoint under <output_dir>/<run.name>/."""
    import ray.train
    from ray.train import Checkpoint

    from deblurdiff.training.state import write_checkpoint

    name = f"checkpoint_{w.state.step:08d}"
    with tempfile.TemporaryDirectory(prefix=f"dd-ckpt-r{w.rank}-") as tmp:
        write_checkpoint(tmp, w.engine, w.state, w.rank, w.world_size, w.generator)  # collective
        # report() is a barrier over the ranks; every rank reports (Train V2), each with its files.
        w.metrics.report(w.state.step, Checkpoint.from_directory(tmp), name)
    if w.rank == 0:
        # The controller registers a checkpoint asynchronously; wait until it has, so a crash right
        # after this point restarts from THIS checkpoint (no step is trained twice past it).
        ray.train.get_all_reported_checkpoints(consistency_mode=_committed())
        w.events.record_checkpoint.remote(w.state.step, name)


def load_checkpoint(w: Worker, resume_from: str | None = None) -> None:
    """Resume: Ray Train hands back the latest registered checkpoint after a worker-group restart
    (FailureConfig) or for `--resume` (same storage_path + name); without one, a fresh start. When
    `--resume` had to set damaged checkpoints aside (training/checkpoints.py), Ray's list starts
    empty and ``resume_from`` names the intact checkpoint to load instead."""
    import ray.train

    from deblurdiff.training.state import read_checkpoint

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray.train.Checkpoint.from_directory(resume_from)
    if checkpoint is None:
        return
    with checkpoint.as_directory() as ckpt_dir:
        w.state = read_checkpoint(ckpt_dir, w.engine, w.rank, w.generator, w.cfg.run.seed)  # collective
    logger.info("rank %d resumed at step %d (epoch %d, batch %d)", w.rank, w.state.step, w.state.epoch,
                w.state.batches_in_epoch)


def _committed():
    from ray.train.v2.api.report_config import CheckpointConsistencyMode

    return CheckpointConsistencyMode.COMMITTED


# ----------------------------------------------------------------------------------------- helpers
class _Clock:
    """Seconds per named phase since the previous mark (start-up phases, reported in summary.json)."""

    def __init__(self):
        self.last, self.marks = time.perf_counter(), {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round(now - self.last, 2)
        self.last = now


def _micro_batches(shard, micro: int, cfg, state, rank: int):
    """Endless micro-batches from this rank's data shard, pass after pass.

    Data position: ``state`` counts passes (``epoch``) and micro-batches consumed in the current
    one; after a resume the first pass skips what was already trained on. Each pass reshuffles
    locally with a seed from (run.seed, epoch, rank).
    """
    skip = state.batches_in_epoch
    while True:
        got = 0
        for batch in shard.iter_torch_batches(
            batch_size=micro, drop_last=True, dtypes=torch.float32,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=(cfg.run.seed * 100_003 + state.epoch * 101 + rank) if cfg.data.shuffle_buffer else None,
        ):
            got += 1
            if skip:
                skip -= 1
                continue
            state.batches_in_epoch += 1
            yield batch
        if got == 0:  # bad input, not a fault: the launcher turns it into the CLI's one line and exit 2
            from deblurdiff.errors import UsageError

            key, value = (("data.images", cfg.data.images) if cfg.data.images is not None
                          else ("data.shards", cfg.data.shards))
            raise UsageError(f"{key} {value}: rank {rank}'s share holds fewer than one micro-batch ({micro} pairs) of "
                             "readable pairs (damaged shards and undecodable pairs are skipped, with a warning each); "
                             "add data or lower train.batch_size")
        state.epoch += 1
        state.batches_in_epoch = 0
        skip = 0


def _save_png(path: Path, image) -> None:
    from deblurdiff.files import atomic_write_bytes
    from deblurdiff.imageio import encode_image

    atomic_write_bytes(path, encode_image(image, "png"))
