"""Co-training LKPN + the conditioning branch with Ray Train + DeepSpeed (`deblurdiff train`).

    from deblurdiff.config import load_config
    from deblurdiff.training import TrainConfig, launch

    cfg = load_config("configs/tiny.yaml", TrainConfig, overrides=["train.max_steps=100"])
    summary = launch(cfg)                  # -> <run.output_dir>/model, summary.json, metrics.jsonl

Modules: ``config`` (the typed YAML schema), ``loop`` (the per-worker loop: setup, train, validate,
checkpoints), ``launcher`` (TorchTrainer, resources, run events, summary), ``engine`` (DeepSpeed config,
LR schedule, fp32 gathering), ``state`` (checkpoint contents), ``validation`` (held-out metrics + image
grid), ``metric_logger`` (the one logger: W&B, console, metrics.jsonl, Ray's report), ``tracking`` (W&B
on rank 0), ``export`` (the trained pipeline directory).
"""

from deblurdiff.training.config import TrainConfig, check_config

__all__ = ["TrainConfig", "check_config", "launch"]


def __getattr__(name: str):
    # Lazy: the launcher imports Ray; the CLI and config checks must not pay for it.
    if name == "launch":
        from deblurdiff.training.launcher import launch

        return launch
    raise AttributeError(f"module 'deblurdiff.training' has no attribute {name!r}")
