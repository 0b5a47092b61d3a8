"""The co-training recipe: what every Ray Train worker runs (one data-parallel rank).

Read top to bottom; the numbered steps are the algorithm (DESIGN §1, "Training"):

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
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["micro_step", "prepare_model", "train_loop_per_worker"]

COMPONENTS = ("vae", "unet", "controlnet", "lkpn", "null_text")


def train_loop_per_worker(config: dict) -> dict | None:
    import ray.train
    import ray.train.torch

    from deblurdiff.training.config import TrainConfig, micro_batch_size
    from deblurdiff.training.engine import build_engine, full_fp32_state_dict
    from deblurdiff.training.export import export_pipeline
    from deblurdiff.training.state import DEEPSPEED_TAG, TrainState, digest_modules, load_rng
    from deblurdiff.training.tracking import Tracker
    from deblurdiff.training.validation import validate

    cfg = TrainConfig.model_validate(config["cfg"])
    clock = _Clock()  # start-up phases, reported in summary.json
    # DeepSpeed's ZeRO all-gathers use a call torch has deprecated: one warning per step otherwise.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    events = config["events"]  # RunEvents actor (launcher.py): restarts, per-step records, checkpoints

    # 0. Who and where am I. Ray Train has already created the process group (NCCL on GPU, gloo on
    #    CPU) and set RANK/LOCAL_RANK/WORLD_SIZE, which DeepSpeed reuses.
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = bool(config["use_gpu"]) and torch.cuda.is_available()
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and on_gpu)
    if not on_gpu:
        torch.set_num_threads(config["threads"])  # the CPUs Ray reserved for this worker, no more
    micro = micro_batch_size(cfg)

    # 1. The model: every rank builds the same weights (same seed); DeepSpeed also broadcasts rank 0's.
    #    Frozen parts: eval, no grads, bf16 on GPU. Trainable parts: one nn.Module for the engine.
    grad_ckpt = on_gpu if cfg.train.gradient_checkpointing == "auto" else cfg.train.gradient_checkpointing
    pipe, model, frozen = prepare_model(cfg, device, bf16=bf16, gradient_checkpointing=grad_ckpt)
    trainable = pipe.trainable_modules()
    frozen_digest_start = digest_modules(frozen)
    clock.mark("model")

    # 2. The DeepSpeed engine over the trainable parts (AdamW, warm-up + cosine LR, ZeRO, clipping).
    engine, _, lr_scheduler = build_engine(model, cfg, world, on_gpu, bf16)
    context = pipe.null_text_embedding(micro).to(device, torch.bfloat16 if bf16 else torch.float32)
    generator = torch.Generator().manual_seed(cfg.run.seed * 1000 + rank)  # t and eps for this rank
    clock.mark("deepspeed")

    # 3. Resume: Ray Train hands back the latest registered checkpoint after a worker-group restart
    #    (FailureConfig) or for `--resume` (same storage_path + name); when --resume had to set damaged
    #    checkpoints aside, Ray's list starts empty and the launcher names the intact one to load.
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            _, client_state = engine.load_checkpoint(ckpt_dir, tag=DEEPSPEED_TAG)
            state = TrainState.from_dict(client_state["train_state"])
            if not load_rng(ckpt_dir, rank, generator):
                generator.manual_seed(cfg.run.seed * 1000 + rank + 7919 * state.step)
        logger.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, state.step, state.epoch,
                    state.batches_in_epoch)
    clock.mark("resume")

    tracker = Tracker(cfg, active=rank == 0, config_dict=cfg.model_dump())
    clock.mark("wandb")
    if rank == 0:
        events.group_started.remote(state.step, clock.marks)
    val_sharp, val_blurry = (torch.tensor(a) for a in config["validation"])  # (N, 3, H, W), copied
    batches = _micro_batches(ray.train.get_dataset_shard("train"), micro, cfg, state, rank)

    val_metrics: dict = {}

    def run_validation():
        model.eval()
        metrics, grid = validate(pipe, val_sharp, val_blurry, steps=cfg.train.validation_steps,
                                 seed=cfg.run.seed, bf16=bf16, latent_weight=cfg.train.latent_weight)
        model.train()
        if rank == 0:
            events.record_metrics.remote(state.step, metrics)
            tracker.log(metrics, state.step)
            tracker.log_image("val/grid", grid, state.step,
                              caption="blurry | decoded ẑ | restored | sharp")
            _save_png(Path(cfg.run.output_dir, "validation", f"step_{state.step:08d}.png"), grid)
        return metrics

    if cfg.train.validate_at_start and state.step == 0:
        val_metrics = run_validation()  # the untrained baseline, logged at step 0

    # 4. The loop: one iteration = one optimiser step = grad_accum micro-batches on every rank.
    window = _new_window()
    first_step = True
    last_metrics: dict = {}
    while state.step < cfg.train.max_steps:
        started = time.perf_counter()
        for _ in range(cfg.train.grad_accum):
            terms = micro_step(engine, pipe, next(batches), generator, context, bf16=bf16)
            for key in ("loss", "diffusion_loss", "latent_loss"):  # summed on device: no sync per step
                window[key] = window[key] + getattr(terms, key).detach().float() / cfg.train.grad_accum
        state.step += 1
        state.samples_seen += cfg.train.batch_size
        window["n"] += 1
        if not first_step:  # the first step of a worker group also pays for warm-up and data start
            window["time"] += time.perf_counter() - started
            window["samples"] += cfg.train.batch_size
            window["timed"] += 1
        first_step = False

        # 5. Log (rank 0): loss terms (this rank's mean over the window), LR, grad norm, throughput.
        if state.step % cfg.run.log_every == 0 or state.step == cfg.train.max_steps:
            last_metrics = {
                "train/loss": float(window["loss"]) / window["n"],
                "train/diffusion_loss": float(window["diffusion_loss"]) / window["n"],
                "train/latent_loss": float(window["latent_loss"]) / window["n"],
                "train/lr": lr_scheduler.get_last_lr()[0],
                "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                **({"train/samples_per_s": window["samples"] / window["time"],
                    "train/s_per_step": window["time"] / window["timed"]} if window["timed"] else {}),
                "train/epoch": state.epoch,
            }
            window = _new_window()
            if rank == 0:
                tracker.log(last_metrics, state.step)
                events.record_step.remote(state.step, last_metrics)
                print(f"step {state.step}/{cfg.train.max_steps} loss {last_metrics['train/loss']:.4f} "
                      f"(diffusion {last_metrics['train/diffusion_loss']:.4f}, latent {last_metrics['train/latent_loss']:.4f}) "
                      f"{last_metrics.get('train/samples_per_s', 0.0):.2f} samples/s", flush=True)
        elif rank == 0:
            events.record_step.remote(state.step, None)  # every step is recorded: tests check none repeats

        # 6. Validate every N steps on the held-out pairs (all ranks run it: no rank races ahead).
        if cfg.train.validate_every and state.step % cfg.train.validate_every == 0:
            val_metrics = run_validation()

        # 7. Checkpoint every N steps (and at the end, so `--resume` can go further).
        if state.step % cfg.train.checkpoint_every == 0 or state.step == cfg.train.max_steps:
            _checkpoint(engine, state, rank, world, generator, {**last_metrics, **val_metrics}, events, cfg)

        # Fault injection for the recovery test (testing.crash_after_step): exit hard, once per run.
        _maybe_crash(cfg, rank, state.step)

    # 8. End: final validation, consolidated fp32 weights (collective), export on rank 0.
    if not cfg.train.validate_every or state.step % cfg.train.validate_every:
        val_metrics = run_validation()
    weights = full_fp32_state_dict(engine)
    frozen_digest_end = digest_modules(frozen)
    tracker.finish()
    if rank != 0:
        return None
    model_dir = export_pipeline(cfg, weights, Path(cfg.run.output_dir, "model"))
    return {
        "final_step": state.step,
        "samples_seen": state.samples_seen,
        "last_metrics": {**last_metrics, **val_metrics},
        "model_dir": str(model_dir),
        "trainable": sorted(trainable),
        "frozen_digest_start": frozen_digest_start,
        "frozen_digest_end": frozen_digest_end,
        "precision": "bf16" if bf16 else "fp32",
        "device": str(device),
        "world_size": world,
    }


def prepare_model(cfg, device: torch.device, *, bf16: bool, gradient_checkpointing: bool, pipe=None):
    """The configured pipeline (or ``pipe``, already built) on ``device`` and its trainable parts as
    ONE module.

    Returns (pipe, CoTrainingModule in train mode, {name: frozen module}). Frozen parts (VAE, the
    empty-prompt embedding, and the UNet unless the preset trains it) are in eval mode without
    gradients, stored in bf16 when training in bf16 (they need no fp32 copy). The trainable parts stay
    fp32 (bf16 compute comes from autocast, see ``deepspeed_config``).
    """
    from deblurdiff.models import CoTrainingModule
    from deblurdiff.training.export import build_pipeline

    # Built on the CPU by default: the export rebuilds the frozen parts there, bit for bit.
    pipe = pipe if pipe is not None else build_pipeline(cfg)
    pipe.set_progress_bar_config(disable=True)
    trainable = pipe.trainable_modules()
    frozen = {name: getattr(pipe, name) for name in COMPONENTS if name not in trainable}
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
    model = CoTrainingModule(pipe, latent_weight=cfg.train.latent_weight).train()
    return pipe, model, frozen


def micro_step(engine, pipe, batch: dict, generator: torch.Generator, context: torch.Tensor, *, bf16: bool):
    """One micro-batch through the DeepSpeed engine; returns the loss terms (``LossTerms``).

    batch: {"sharp", "blurry"} float (B, 3, H, W) in [0, 1]. The optimiser and LR schedule step
    inside ``engine.step()`` only at the gradient-accumulation boundary.
    """
    device = context.device
    # a. latents, without gradients (the VAE is frozen): z_0 from sharp, z_b from blurry
    with torch.no_grad():
        z_0 = pipe.encode(batch["sharp"].to(device, non_blocking=True))
        z_b = pipe.encode(batch["blurry"].to(device, non_blocking=True), blurry=True)
    # b. t ~ U{0..999} and eps ~ N(0, I), from this rank's generator (saved in checkpoints)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (z_0.shape[0],), generator=generator)
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


class _Clock:
    def __init__(self):
        self.last, self.marks = time.perf_counter(), {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round(now - self.last, 2)
        self.last = now


def _new_window() -> dict:
    return {"time": 0.0, "samples": 0, "n": 0, "timed": 0, "loss": 0.0, "diffusion_loss": 0.0, "latent_loss": 0.0}


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
        if got == 0:
            raise RuntimeError(f"data: this worker's share of the data holds fewer than one micro-batch ({micro} "
                               "samples); add data or lower train.batch_size")
        state.epoch += 1
        state.batches_in_epoch = 0
        skip = 0


def _checkpoint(engine, state, rank, world, generator, metrics, events, cfg) -> None:
    """Each rank saves its DeepSpeed state (ZeRO shards) + RNG into a temp dir and reports it; Ray
    Train merges the ranks' directories into one checkpoint under <output_dir>/<run.name>/."""
    import ray.train
    from ray.train import Checkpoint

    from deblurdiff.training.state import DEEPSPEED_TAG, save_rng

    name = f"checkpoint_{state.step:08d}"
    with tempfile.TemporaryDirectory(prefix=f"dd-ckpt-r{rank}-") as tmp:
        # Collective: every rank writes its optimiser shard; rank 0 also the module weights.
        engine.save_checkpoint(tmp, tag=DEEPSPEED_TAG, client_state={"train_state": state.to_dict()})
        save_rng(tmp, rank, generator)
        if rank == 0:
            state.write_json(tmp, world_size=world)
        # report() is a barrier over the ranks; every rank reports (Train V2), each with its files.
        ray.train.report({"step": state.step, **metrics}, checkpoint=Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name)
    if rank == 0:
        # The controller registers a checkpoint asynchronously; wait until it has, so a crash right
        # after this point restarts from THIS checkpoint (no step is trained twice past it).
        ray.train.get_all_reported_checkpoints(consistency_mode=_committed())
        events.record_checkpoint.remote(state.step, name)


def _committed():
    from ray.train.v2.api.report_config import CheckpointConsistencyMode

    return CheckpointConsistencyMode.COMMITTED


def _maybe_crash(cfg, rank: int, step: int) -> None:
    t = cfg.testing
    if t.crash_after_step is None or rank != t.crash_rank or step != t.crash_after_step:
        return
    marker = Path(cfg.run.output_dir, ".crash-injected")
    if marker.exists():
        return
    marker.write_text(f"rank {rank} exited after step {step}\n")
    logger.warning("testing.crash_after_step: rank %d exits hard after step %d", rank, step)
    os._exit(1)


def _save_png(path: Path, image) -> None:
    from deblurdiff.imageio import encode_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_image(image, "png"))
    os.replace(tmp, path)
