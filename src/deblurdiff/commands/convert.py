"""``deblurdiff convert --checkpoint FILE --output DIR``: the released DeblurDiff model to a pipeline directory.

The checkpoint is the authors' ``model.pth`` (github.com/kkkls/DeblurDiff; download it by hand) or any
file in its format; ``--config`` takes a model config in the release's YAML format (default: the
released architecture). The output works with ``deblur``, ``eval``, ``serve`` and as a training
starting point (``model.init_from``). Exit 2, one line, for a bad file or config.
"""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ("float32", "float16", "bfloat16")  # kept in step with deblurdiff.convert.DTYPES


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="import the released DeblurDiff checkpoint",
                              description="Convert the released DeblurDiff checkpoint (a ControlLDM state dict, "
                                          "e.g. model.pth from github.com/kkkls/DeblurDiff) into a pipeline directory.")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="the release's model.pth (or a file in its format)")
    p.add_argument("--output", required=True, metavar="DIR", help="new pipeline directory (must not exist, or be empty)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="model config in the release's YAML format (default: the released architecture)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                   help="weights' dtype in the output (default float32, as the release computes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff.convert import DTYPES, write_pipeline_directory

    out = write_pipeline_directory(args.checkpoint, args.output, config=args.config, dtype=DTYPES[args.dtype])
    print(f"converted {args.checkpoint} into {out}")
    return 0
