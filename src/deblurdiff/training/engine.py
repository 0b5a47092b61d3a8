"""DeepSpeed glue for the training loop: the engine config, the LR schedule, and gathering full fp32 weights.

Kept apart from the loop so the loop reads as the training algorithm; everything here is plain
functions of the config.
"""

from __future__ import annotations

import math

import torch

from deblurdiff.training.config import TrainConfig, micro_batch_size

__all__ = ["build_engine", "deepspeed_config", "full_fp32_state_dict", "lr_multiplier"]


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """LR factor after ``step`` optimiser steps: linear warm-up, then cosine (or constant) decay.

    The factor multiplies train.lr; cosine goes from 1 at the end of warm-up down to
    train.min_lr_ratio at train.max_steps.
    """
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(cfg: TrainConfig, world_size: int, on_gpu: bool, bf16: bool) -> dict:
    """The DeepSpeed JSON config for this run (batch split, ZeRO, precision, clipping)."""
    overlap = on_gpu if cfg.deepspeed.overlap_comm == "auto" else cfg.deepspeed.overlap_comm
    return {
        # DeepSpeed checks train_batch_size == micro · accum · world_size.
        "train_batch_size": cfg.train.batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size(cfg),
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.train.grad_clip or 0.0,
        "zero_optimization": {
            "stage": cfg.deepspeed.zero_stage,
            "overlap_comm": overlap,
            "contiguous_gradients": True,
            "reduce_bucket_size": cfg.deepspeed.reduce_bucket_size,
            "allgather_bucket_size": cfg.deepspeed.reduce_bucket_size,
        },
        # bf16 as torch autocast: the trainable weights stay fp32 and the forward runs under
        # torch.autocast(bf16). (DeepSpeed's "bf16" mode instead casts the weights to bf16 and turns
        # autocast off inside the engine, so the fp32 latents and timestep embeddings met bf16
        # weights: "mat1 and mat2 must have the same dtype" on the H100.)
        "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
        # Our optimiser is torch's AdamW (fused on CUDA); DeepSpeed's ZeRO wraps it.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,  # we log ourselves
        "wall_clock_breakdown": False,
    }


def build_engine(module: torch.nn.Module, cfg: TrainConfig, world_size: int, on_gpu: bool, bf16: bool):
    """``deepspeed.initialize`` over the trainable module with AdamW and the warm-up + cosine LR.

    Returns (engine, optimizer, lr_scheduler). The process group already exists (Ray Train created
    it: NCCL on GPU, gloo on CPU), so DeepSpeed reuses it.
    """
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas,
                                  weight_decay=cfg.train.weight_decay, fused=on_gpu or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size, on_gpu, bf16),
    )
    return engine, optimizer, scheduler


def full_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """The trainable module's full state in fp32 on CPU, gathered from the ZeRO shards.

    COLLECTIVE: every rank must call it (each parameter's fp32 master copy is assembled with an
    all-reduce over the data-parallel group). The fp32 masters are the weights to export (the
    module's own weights are fp32 too under torch_autocast).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, value in engine.module.state_dict(keep_vars=True).items():
        full = safe_get_full_fp32_param(value) if isinstance(value, torch.nn.Parameter) else None
        state[name] = (full if full is not None else value.detach()).float().cpu().clone()
    return state
