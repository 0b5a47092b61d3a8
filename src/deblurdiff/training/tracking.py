"""Weights & Biases glue, world rank 0 only.

Ray Train V2 runs the training function on every worker and ``setup_wandb(rank_zero_only=True)``
has no effect there, so the metric logger creates this on rank 0 and a no-op one elsewhere.

- Mode from ``wandb.mode``: "offline" (default; a local run under ``<output_dir>/wandb``, upload
  later with ``wandb sync``), "online" (needs ``wandb login`` or ``WANDB_API_KEY`` forwarded to the
  workers by the launcher), "disabled".
- One W&B run per training run: the id is derived from the output dir and run name and resumed
  (``resume="allow"``) after a worker-group restart or ``--resume``.
- Every metric is logged against ``train/step`` (W&B's own ``_step`` must only grow, but after a
  restart from a checkpoint the optimiser step goes back a little).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["Tracker", "wandb_run_id"]


def wandb_run_id(output_dir: str, run_name: str) -> str:
    return "dd-" + hashlib.sha1(f"{Path(output_dir).resolve()}|{run_name}".encode()).hexdigest()[:12]


class Tracker:
    """``log(metrics, step)``, ``log_image(key, array, step, caption)``, ``finish()``; no-op when inactive."""

    def __init__(self, cfg, active: bool, config_dict: dict | None = None):
        self.run = None
        if not active or cfg.wandb.mode == "disabled":
            return
        import wandb

        out = Path(cfg.run.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.wandb.name or cfg.run.name,
            tags=cfg.wandb.tags, mode=cfg.wandb.mode, dir=str(out),
            id=wandb_run_id(cfg.run.output_dir, cfg.run.name), resume="allow", config=config_dict,
        )
        self.run.define_metric("train/step")
        self.run.define_metric("*", step_metric="train/step")

    @property
    def run_dir(self) -> str | None:
        return getattr(self.run, "dir", None) and str(Path(self.run.dir).parent)

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({"train/step": step, **metrics})

    def log_image(self, key: str, image, step: int, caption: str = "") -> None:
        """image: (H, W, 3) uint8."""
        if self.run is not None:
            import wandb

            self.run.log({"train/step": step, key: wandb.Image(image, caption=caption)})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
