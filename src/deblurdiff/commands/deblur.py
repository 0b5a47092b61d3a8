"""``deblurdiff deblur INPUT... --model DIR --output DIR``: restore one photo or a whole archive.

Inputs are image files, folders (recursive), ``.txt`` lists, WebDataset shards or URIs; outputs mirror
the input tree under OUTPUT (same stem, PNG by default), written whole, and
``OUTPUT/restore-manifest.json`` lists every input: restored, already done, or failed with its reason.
A rerun skips what is done. The engine is ``deblurdiff.pipelines.restore`` (Ray Data batch inference on
an actor pool; a few images with no cluster named run in this process). Exit 0 when anything was
restored (or everything was already done), 2 on bad usage or when nothing could be read.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from deblurdiff.errors import UsageError
from deblurdiff.model_dir import MODEL_HELP

logger = logging.getLogger(__name__)

# Kept in step with deblurdiff.diffusion.SAMPLERS (imported lazily: --help must not import torch);
# tests/commands/test_deblur.py checks they match.
SAMPLER_CHOICES = ("ddpm", "dpmpp")
FORMAT_CHOICES = ("png", "jpeg", "webp")  # kept in step with deblurdiff.pipelines.restore.FORMATS
_SHOW_FAILED = 20  # failed inputs named on the console; the manifest lists all of them


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deblur", help="deblur images, from one photo to a whole archive (Ray Data batch inference)",
        description="Deblur image files, folders (recursive), .txt lists of paths, WebDataset .tar shards or "
                    "URIs (s3://, gs://, file://). Outputs mirror the input tree under --output; "
                    "OUTPUT/restore-manifest.json lists every input as restored, already done or failed (with "
                    "the reason). Rerunning the same command skips finished outputs. Each image's noise is "
                    "seeded from (--seed, its relative path): same bytes with any --replicas.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), .txt/.lst lists, WebDataset .tar shards, or URIs")
    p.add_argument("--model", required=True, metavar="DIR|NAME", help=MODEL_HELP)
    p.add_argument("--output", required=True, metavar="DIR|URI",
                   help="output folder (local or URI); outputs keep the inputs' relative paths")
    # Unset --steps/--sampler/--strength: the settings the model was validated with (recorded in its
    # directory: model_index.json "sampling"), else the released 50-step DDPM from noise.
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's validated steps; 50 for the released model)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="ddpm (released) or dpmpp (DPM-Solver++, fast) (default: the model's validated sampler)")
    p.add_argument("--strength", type=float, default=None,
                   help="where sampling starts, in [0, 1]: 1 from pure noise, lower from the noised blurry latent, "
                        "running only that fraction of the steps; 0: the LKPN's estimate decoded, no step "
                        "(default: the model's validated strength; 1 for the released model)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; each image's noise comes from (seed, its relative path) (default 0)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="latent tiling with N-pixel tiles (stride N/2) for large images")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="png", help="output format (default png)")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG/WebP quality 1-100 (default 95)")
    p.add_argument("--overwrite", action="store_true", help="restore again the inputs whose output already exists")
    p.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="model replicas (Ray actors) (default: one per GPU, else sized from the cluster's CPUs; "
                        "a few images with no --replicas and no cluster named run in this process)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to run on (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--release-compat", action="store_true",
                   help="post-process exactly as the released DeblurDiff: zero padding, colour fix before the "
                        "clamp, truncating quantisation (docs/released-model.md)")
    p.add_argument("--device", default=None, help="torch device of the in-process path (default: cuda if "
                   "available, else cpu); Ray replicas use a GPU when the cluster has one")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff import _ray
    from deblurdiff.pipelines.restore import LOCAL_MAX_IMAGES, MANIFEST, plan_restore

    # Arguments, model, inputs and output are checked (UsageError -> exit 2) before Ray starts.
    job = plan_restore(args.inputs, args.output, model=args.model, sampler=args.sampler, steps=args.steps,
                       strength=args.strength, seed=args.seed, tile=args.tile, fmt=args.format,
                       quality=args.quality, overwrite=args.overwrite, replicas=args.replicas,
                       release_compat=args.release_compat, device=args.device)
    # A few images with nothing asking for Ray (no --replicas, no cluster named) run in this process:
    # starting Ray would cost more than restoring them. The same stages, the same bytes.
    local = not job.tasks or (len(job.tasks) <= LOCAL_MAX_IMAGES and args.replicas is None
                              and not (args.address or os.environ.get("RAY_ADDRESS")))
    if not local:
        _ray.connect(args.address)
    summary = job.run(local=local)
    failed = job.failed + [r for r in job.records if r["status"] == "failed"]
    for record in failed[:_SHOW_FAILED]:
        print(f"deblurdiff deblur: failed {record['input']}: {record['reason']}", file=sys.stderr)
    if len(failed) > _SHOW_FAILED:
        print(f"deblurdiff deblur: ... and {len(failed) - _SHOW_FAILED} more failed inputs, listed in {MANIFEST}",
              file=sys.stderr)
    settings = job.settings
    print(f"{summary.line()}; {settings['sampler']}, {settings['steps']} steps, strength {settings['strength']:g}",
          flush=True)
    if summary.restored == 0 and summary.done == 0:
        raise UsageError(f"no readable input images among {len(args.inputs)} input(s) "
                         f"({summary.failed} failed, see above and {MANIFEST})")
    return 0

