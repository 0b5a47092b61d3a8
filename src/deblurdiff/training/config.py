"""The training config: flat YAML sections, typed, validated before any work starts.

    deblurdiff train --config configs/tiny.yaml --set train.max_steps=200 --workers 2

Every key below is documented where it is declared; ``configs/tiny.yaml`` and ``configs/sd21.yaml`` are
complete examples (shipped in the package as ``deblurdiff/configs/``: :func:`packaged_config`). Unknown keys and wrong types fail with the dotted key (``deblurdiff.config``);
combinations that cannot work (a batch that does not split over the workers, no data) fail in
:func:`check_config` with the key to change.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from deblurdiff.config import Section
from deblurdiff.errors import UsageError

__all__ = ["TrainConfig", "check_config", "micro_batch_size", "packaged_config"]


class RunSection(Section):
    # Ray Train's storage_path: checkpoints, the exported model, W&B files and summary.json go here.
    # On a multi-node cluster it must be storage every node can reach (NFS, or a mounted bucket).
    output_dir: str
    name: str = "train"  # Ray Train run name (a folder under output_dir); --resume finds the run by it
    seed: int = 0  # model init, timesteps, noise and data order all derive from it
    log_every: int = Field(10, ge=1)  # metrics to W&B, the console and metrics.jsonl every N steps


class DataSection(Section):
    # Exactly one of the two: pre-synthesised WebDataset shards (`deblurdiff synth`), or image
    # folders/files/URIs blurred on the fly with `recipe`.
    shards: str | list[str] | None = None
    images: str | list[str] | None = None
    recipe: str = "realistic"  # blur recipe for data.images (name or YAML path)
    # data.images: crops cut from each photo per pass over the photos; every pass draws new crop positions
    # and new blur (seeded by run.seed, pass, photo and crop index), so the stream never repeats a pair.
    crops_per_image: int = Field(8, ge=1)
    # data.images: each training crop sees its photo at a scale drawn from [lo, hi] (a crop/s px window
    # resized to `crop`, Lanczos), so photos stored larger or smaller than the corpus's look familiar.
    # [1, 1]: plain crops. Validation crops are always plain. Measured for the packaged model ([0.5, 1], 3000
    # steps): no gain, so it is trained with plain crops (RESULTS.md, "Real-photo model, third round").
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop: int = Field(64, ge=8)  # training crop size in pixels (512 for sd21)
    # Held-out pairs for the validation grid and metrics, as shards or images (at most one). Neither:
    # the first `validation_pairs` training samples (not held out; summary.json says so).
    validation_shards: str | list[str] | None = None
    validation_images: str | list[str] | None = None
    validation_pairs: int = Field(4, ge=1)
    shuffle_buffer: int = Field(256, ge=0)  # per-worker local shuffle buffer (0: off)
    # data.shards only (data.images draws fresh pairs every pass, so there is nothing to keep):
    # decode the pairs once and keep them in Ray's object store:
    # each pass then costs ~0.1 s instead of restarting the decode stage (seconds per pass on 2
    # CPUs). For small sets (the tiny preset); leave off for corpora larger than the object store.
    cache: bool = False
    # "dihedral": each training pair turned by a random multiple of 90° and mirrored at random (both
    # images alike; ``training/augment.py``), eight views of every crop. "none": the pairs as stored.
    augment: Literal["none", "dihedral"] = "none"


class ModelSection(Section):
    preset: Literal["tiny", "sd21"] = "tiny"
    # sd21: a local diffusers Stable Diffusion 2.1-base directory (or a hub id you have access to).
    base_model: str | None = None
    random_init: bool = False  # sd21 without weights (benchmarks/smoke runs only)
    # Components to optimise; None: the preset's choice (sd21: controlnet + lkpn as in the paper;
    # tiny: + unet, since no pretrained tiny UNet exists). Everything else stays frozen.
    trainable: list[Literal["unet", "controlnet", "lkpn"]] | None = Field(None, min_length=1)
    # Fine-tuning: start from a pipeline directory instead of a preset (`deblurdiff convert` output,
    # e.g. the released model, or a previous run's <output_dir>/model). Its config says what it trains
    # (the release: controlnet + lkpn); model.trainable overrides. Excludes preset/base_model/random_init.
    init_from: str | None = None


class TrainSection(Section):
    max_steps: int = Field(ge=1)  # optimiser steps
    batch_size: int = Field(ge=1)  # GLOBAL batch: samples per optimiser step over all workers
    grad_accum: int = Field(1, ge=1)  # micro-steps per optimiser step (micro batch = batch/(workers·accum))
    lr: float = Field(1e-4, gt=0)  # AdamW peak learning rate
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0 to lr
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor as a fraction of lr
    grad_clip: float | None = Field(1.0, gt=0)  # global grad-norm clip (None: off)
    latent_weight: float = Field(1.0, ge=0)  # λ in eps-MSE + λ·MSE(ẑ, z_0)
    # μ: + μ·MSE(LKPN(z_b, x_t := z_b), z_0), the sampler's start estimate at strength < 1 (paper: 0; tiny: 1)
    start_latent_weight: float = Field(0.0, ge=0)
    # Where training's x_t comes from: "sharp" (q(x_t | z_0), the paper) or "estimate" (noised from the
    # LKPN's ẑ of z_b, as the sampler starts at strength < 1; the diffusion loss is then MSE(x0, z_0)).
    noise_from: Literal["sharp", "estimate"] = "sharp"
    # What the fits backpropagate: "mse" (the paper) or "psnr" (mean 10·log10 per-sample MSE, NAFNet's
    # PSNR loss: clean crops count as much as noisy ones). Logged losses are MSEs either way.
    fidelity_loss: Literal["mse", "psnr"] = "mse"
    # t ~ U{0 .. max_timestep − 1}; None: the whole schedule. A model trained up to T' is sampled at
    # strength ≤ T' / num_train_timesteps (img2img from ẑ).
    max_timestep: int | None = Field(None, ge=1, le=1000)  # every preset uses a 1000-step schedule
    # "auto": bf16 on GPU, fp32 on CPU (CPU bf16 autocast is slow and gloo has no bf16 all-reduce).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # Activation checkpointing of the trainable UNets ("auto": on for GPU, off for CPU).
    gradient_checkpointing: Literal["auto"] | bool = "auto"
    checkpoint_every: int = Field(100, ge=1)  # Ray Train checkpoint (DeepSpeed state) every N steps
    keep_checkpoints: int | None = Field(3, ge=1)  # newest N kept (None: all)
    validate_every: int = Field(0, ge=0)  # validation metrics + image grid every N steps (0: at the end)
    validation_steps: int = Field(10, ge=1)  # sampler steps for the restored image in the grid
    validate_at_start: bool = False  # also validate the untrained model (a fresh run's step-0 baseline)


class ScalingSection(Section):
    workers: int = Field(2, ge=1)  # Ray Train workers (data-parallel ranks); also --workers
    use_gpu: Literal["auto"] | bool = "auto"  # auto: one GPU per worker when the cluster has GPUs
    # CPUs reserved per worker; None sizes it from the cluster so the data pipeline keeps CPUs.
    cpus_per_worker: float | None = Field(None, gt=0)
    # CPUs left free for Ray Data's read/synthesis tasks when sizing cpus_per_worker automatically.
    data_cpus: float = Field(1.0, ge=0)


class FailureSection(Section):
    # Worker-group restarts from the latest checkpoint before the run fails (-1: unlimited).
    max_failures: int = Field(3, ge=-1)


class DeepSpeedSection(Section):
    # 2: optimiser state + gradients sharded over the workers. (Stage 3 would shard the weights too;
    # the trainable parts, <0.5B parameters, fit on every GPU, so it is not offered.)
    zero_stage: Literal[0, 1, 2] = 2
    overlap_comm: Literal["auto"] | bool = "auto"  # auto: on GPU only
    reduce_bucket_size: int = Field(200_000_000, ge=1)


class WandbSection(Section):
    # offline: a local run under <output_dir>/wandb (sync later with `wandb sync`); online needs
    # `wandb login` or WANDB_API_KEY; disabled: no W&B at all. WANDB_MODE in the env wins.
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "deblurdiff"
    entity: str | None = None
    name: str | None = None  # W&B run name (default: run.name)
    tags: list[str] = []


def packaged_config(name: str) -> Path:
    """A training config shipped inside the package (``deblurdiff/configs/<name>.yaml``: ``tiny``,
    ``sd21``); in a checkout ``configs/`` at the repository root links to the same files."""
    path = Path(str(resources.files("deblurdiff").joinpath("configs", f"{name}.yaml")))
    if not path.is_file():
        raise UsageError(f"no packaged training config {name!r} (expected {path})")
    return path


class TrainConfig(Section):
    run: RunSection
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainSection
    scaling: ScalingSection = ScalingSection()
    failure: FailureSection = FailureSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    wandb: WandbSection = WandbSection()


def micro_batch_size(cfg: TrainConfig) -> int:
    """Samples per worker per micro-step: global batch / (workers · grad_accum)."""
    return cfg.train.batch_size // (cfg.scaling.workers * cfg.train.grad_accum)


def _saved_preset(directory: str) -> str | None:
    """The preset a pipeline directory was built from (its ``model_index.json``), None if it names none."""
    import json

    try:
        return json.loads(Path(directory, "model_index.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        return None


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Cross-key checks the types cannot express; each failure names the key to change."""
    if (cfg.data.shards is None) == (cfg.data.images is None):
        raise UsageError("data.shards / data.images: set exactly one (shards from `deblurdiff synth`, "
                         "or image folders to blur on the fly)")
    if cfg.data.validation_shards is not None and cfg.data.validation_images is not None:
        raise UsageError("data.validation_shards / data.validation_images: set at most one")
    split = cfg.scaling.workers * cfg.train.grad_accum
    if cfg.train.batch_size % split:
        raise UsageError(f"train.batch_size={cfg.train.batch_size}: must be a multiple of scaling.workers × "
                         f"train.grad_accum = {cfg.scaling.workers} × {cfg.train.grad_accum} = {split} "
                         f"(set train.batch_size={max(split, cfg.train.batch_size // split * split)} or change "
                         "scaling.workers / train.grad_accum)")
    if cfg.model.init_from is not None:
        from deblurdiff.model_dir import check_model_dir

        directory = check_model_dir(cfg.model.init_from, flag="model.init_from")
        # A preset that names the directory's own (configs/tiny.yaml + a tiny model) says nothing new.
        same_preset = cfg.model.preset == _saved_preset(directory)
        chosen = [k for k in ("preset", "base_model", "random_init") if k in cfg.model.model_fields_set
                  and not (k == "preset" and same_preset)]
        if chosen:
            raise UsageError(f"model.init_from: starts from that pipeline directory; remove model.{chosen[0]} "
                             "(the directory already holds every part)")
        return cfg
    if cfg.model.preset == "sd21" and cfg.model.base_model is None and not cfg.model.random_init:
        raise UsageError("model.base_model: preset sd21 needs a local Stable Diffusion 2.1-base diffusers "
                         "directory (or set model.random_init=true for an untrained smoke run)")
    if cfg.model.preset == "tiny" and cfg.model.base_model is not None:
        raise UsageError("model.base_model: preset tiny is built from scratch; remove model.base_model")
    return cfg
