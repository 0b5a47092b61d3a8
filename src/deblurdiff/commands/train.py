"""``deblurdiff train``: co-train LKPN + the conditioning branch with Ray Train + DeepSpeed.

    deblurdiff train --config configs/tiny.yaml [--set train.max_steps=200 ...] [--workers 2] [--resume]

Config keys: ``deblurdiff.training.config``; the loop: ``deblurdiff.training.loop``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train LKPN + ControlNet with Ray Train + DeepSpeed",
        description="Co-train the LKPN and the latent ControlNet (the tiny preset also its UNet) on Ray Train "
                    "with a DeepSpeed engine. Checkpoints, the exported pipeline (<output_dir>/model), W&B files "
                    "and summary.json go to run.output_dir.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (see configs/tiny.yaml, configs/sd21.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray Train workers (data-parallel ranks); same as --set scaling.workers=N")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run.output_dir from its latest checkpoint (e.g. with a larger "
                        "train.max_steps)")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster (default: RAY_ADDRESS, else a new local instance)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff.config import load_config
    from deblurdiff.training.config import TrainConfig, check_config

    overrides = list(args.overrides)
    if args.workers is not None:  # checked once, by the config schema (its error names scaling.workers)
        overrides.append(f"scaling.workers={args.workers}")
    cfg = check_config(load_config(args.config, TrainConfig, overrides))

    import ray

    from deblurdiff.training.launcher import launch

    started_ray = not ray.is_initialized()
    try:
        launch(cfg, resume=args.resume, address=args.address)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    return 0
