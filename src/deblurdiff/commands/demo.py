"""``deblurdiff demo``: the quickstart, end to end on the embedded default (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the quickstart: synth -> train -> eval -> deblur -> serve on the tiny preset",
        description="On a local Ray instance with the tiny preset (CPU, nothing downloaded): synthesise "
                    "blurred pairs from scikit-image's bundled photos, train with Ray Train + DeepSpeed "
                    "(2 workers), evaluate on held-out pairs, deblur a real motion-blurred photo, serve "
                    "one request, and write report.json + before_after.png. About 10-15 min on 2 cores.")
    parser.add_argument("--output", default="demo-output", help="directory to write into (default demo-output)")
    parser.add_argument("--max-steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps for evaluation and deblurring")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff.demo import run_demo
    from deblurdiff.errors import UsageError

    for flag, value in (("--max-steps", args.max_steps), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    report = run_demo(args.output, max_steps=args.max_steps, steps=args.steps)
    return 0 if report["lkpn_learned"] else 1
