"""The training loop's one metric logger, and the window that averages the loss terms between logs.

Every metric goes through ``MetricLogger.log(step, metrics)``, which fans out (world rank 0 only:
every rank computes the same numbers, one copy is enough):

- W&B (``tracking.Tracker``: offline by default, ``wandb.mode``),
- the console: one line per logged training step, through ``logging`` (see ``log``),
- ``metrics.jsonl``: a row per logged step, appended by the launcher's ``RunEvents`` actor.

``MetricLogger.report(...)`` is the Ray Train sink: every rank calls ``ray.train.report`` with its
checkpoint and the latest metrics (``report`` is collective in Ray Train V2, so it runs with each
checkpoint rather than on every log step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

__all__ = ["LossWindow", "MetricLogger"]

logger = logging.getLogger(__name__)


@dataclass
class LossWindow:
    """Loss terms summed over the optimiser steps since the last log, plus the throughput.

    The sums stay tensors on the training device: no host sync per micro-step, only at ``metrics()``.
    """

    steps: int = 0  # optimiser steps in the window
    loss: torch.Tensor | float = 0.0
    diffusion_loss: torch.Tensor | float = 0.0
    latent_loss: torch.Tensor | float = 0.0
    start_latent_loss: torch.Tensor | float | None = None  # only when the start estimate is trained
    timed_steps: int = 0  # steps with a timing (a worker group's first step is left out: warm-up)
    timed_seconds: float = 0.0
    timed_samples: int = 0

    def add_micro_step(self, terms, grad_accum: int) -> None:
        """One micro-batch's ``LossTerms``; ``grad_accum`` of them make one optimiser step."""
        self.loss = self.loss + terms.loss.detach().float() / grad_accum
        self.diffusion_loss = self.diffusion_loss + terms.diffusion_loss.detach().float() / grad_accum
        self.latent_loss = self.latent_loss + terms.latent_loss.detach().float() / grad_accum
        if terms.start_latent_loss is not None:
            previous = 0.0 if self.start_latent_loss is None else self.start_latent_loss
            self.start_latent_loss = previous + terms.start_latent_loss.detach().float() / grad_accum

    def end_step(self, samples: int, seconds: float | None) -> None:
        """An optimiser step of ``samples`` (global batch) finished; ``seconds`` None: not timed."""
        self.steps += 1
        if seconds is not None:
            self.timed_steps += 1
            self.timed_seconds += seconds
            self.timed_samples += samples

    def metrics(self) -> dict[str, float]:
        """This rank's means over the window (``train/...``) and the throughput of its timed steps."""
        out = {
            "train/loss": float(self.loss) / self.steps,
            "train/diffusion_loss": float(self.diffusion_loss) / self.steps,
            "train/latent_loss": float(self.latent_loss) / self.steps,
        }
        if self.start_latent_loss is not None:
            out["train/start_latent_loss"] = float(self.start_latent_loss) / self.steps
        if self.timed_steps:
            out["train/samples_per_s"] = self.timed_samples / self.timed_seconds
            out["train/s_per_step"] = self.timed_seconds / self.timed_steps
        return out


class MetricLogger:
    """``log(step, metrics)``, ``log_image(...)``, ``report(step, checkpoint, name)``, ``finish()``.

    ``rank``: this worker's world rank (``ray.train.get_context().get_world_rank()``); only rank 0
    writes to W&B, the console and ``metrics.jsonl``. ``events``: the run's ``RunEvents`` actor handle
    (launcher.py). ``latest`` keeps the newest value of every metric (the checkpoint's report, the
    run's summary).
    """

    def __init__(self, cfg, rank: int, events, tracker=None):
        from deblurdiff.training.tracking import Tracker

        self.rank = rank
        self.max_steps = cfg.train.max_steps
        self.events = events
        # W&B on rank 0 only: Ray Train V2 runs this on every worker (setup_wandb's rank_zero_only does
        # not apply there).
        self.tracker = tracker if tracker is not None else Tracker(cfg, active=rank == 0,
                                                                   config_dict=cfg.model_dump())
        self.latest: dict[str, float] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)
        if self.rank != 0 or not metrics:
            return
        self.tracker.log(metrics, step)
        self.events.record_step.remote(step, metrics)
        if "train/loss" in metrics:
            # logging, not print: inside a Ray Train worker print is re-routed to the root logger AND,
            # once W&B wraps sys.stdout, also printed, so every line reached the console twice.
            start = metrics.get("train/start_latent_loss")
            logger.info("step %d/%d loss %.4f (diffusion %.4f, latent %.4f%s) %.2f samples/s", step, self.max_steps,
                        metrics["train/loss"], metrics["train/diffusion_loss"], metrics["train/latent_loss"],
                        "" if start is None else f", start {start:.4f}", metrics.get("train/samples_per_s", 0.0))

    def log_image(self, key: str, image, step: int, caption: str = "") -> None:
        """image: (H, W, 3) uint8."""
        if self.rank == 0:
            self.tracker.log_image(key, image, step, caption=caption)

    def report(self, step: int, checkpoint, checkpoint_dir_name: str) -> None:
        """Ray Train's sink, COLLECTIVE: every rank reports its part of the checkpoint with the metrics."""
        import ray.train

        ray.train.report({"step": step, **self.latest}, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name)

    def finish(self) -> None:
        self.tracker.finish()
