"""``deblurdiff demo``: the quickstart, end to end on the embedded default (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the quickstart: synth -> train -> eval -> deblur -> serve on the tiny preset",
        description="On a local Ray instance with the tiny preset (CPU, nothing downloaded): synthesise "
                    "blurred pairs from scikit-image's bundled photos, fine-tune the packaged tiny model "
                    "with Ray Train + DeepSpeed (2 workers), evaluate on held-out pairs, deblur a real "
                    "motion-blurred photo, serve one request, and write report.json + before_after.png. "
                    "About 6-10 min on 2 cores.")
    parser.add_argument("--output", default="demo-output", help="directory to write into (default demo-output)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="training steps (default: deblurdiff.demo.DEFAULT_MAX_STEPS fine-tuning the packaged "
                             "tiny-small-handheld model, FROM_SCRATCH_MAX_STEPS with --from-scratch)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the tiny preset from random weights instead of fine-tuning the packaged model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff.demo import run_demo
    from deblurdiff.errors import UsageError

    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps {args.max_steps}: must be at least 1")
    # A finished demo exits 0 whatever it measured: the summary and report.json state the verdict.
    run_demo(args.output, max_steps=args.max_steps, from_scratch=args.from_scratch)
    return 0
