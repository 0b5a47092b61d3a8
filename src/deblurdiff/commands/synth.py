"""``deblurdiff synth``: image corpus -> WebDataset shards of (sharp, blurry) pairs (DESIGN §2, §3).

Thin glue over ``deblurdiff.pipelines.run_synth``; Ray and torch are imported inside ``run``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="synthesise blurry/sharp training pairs into WebDataset shards (Ray Data)",
        description="Cut random crops from images (folders, files, WebDataset .tar shards, list files; "
                    "local or s3://, gs://, ...), blur them with a recipe and write OUTPUT/shard-%%06d.tar "
                    "+ OUTPUT/manifest.json. Same inputs and --seed give byte-identical shards whatever "
                    "--workers is. Unreadable or too-small images are skipped and listed in the manifest.",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="image folders (recursive), image files, WebDataset .tar shards, or .txt/.lst lists of paths")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory (local or URI)")
    p.add_argument("--recipe", default="realistic", metavar="NAME|FILE",
                   help="built-in recipe name or YAML file (default: realistic)")
    p.add_argument("--crop", type=int, default=512, metavar="N", help="crop size in pixels (default: 512)")
    p.add_argument("--crops-per-image", type=int, default=1, metavar="N", help="random crops per image (default: 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="global seed (default: 0)")
    p.add_argument("--shard-size", type=int, default=256, metavar="N",
                   help="samples per shard (default: 256); shards are the unit of parallelism")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="synthesis actors (default: one per CPU, or one per GPU)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run: build only the missing shards")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to run on (default: RAY_ADDRESS, else a local instance)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff import _ray
    from deblurdiff.pipelines.synth import plan_synth

    # The library checks arguments, inputs and output (UsageError -> exit 2) before Ray starts.
    job = plan_synth(args.input, args.output, recipe=args.recipe, crop=args.crop,
                     crops_per_image=args.crops_per_image, seed=args.seed, shard_size=args.shard_size,
                     workers=args.workers, resume=args.resume)
    _ray.connect(args.address)
    summary = job.run()
    print(summary.line(), flush=True)
    return 0
