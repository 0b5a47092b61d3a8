"""`deblurdiff convert` on a full-size checkpoint: seconds and peak RSS against the file size.

Builds a random checkpoint with every key and shape of the full-size release
(tests/fixtures/official-format/manifest.json, 2238 tensors, 1.81 B parameters) in float16 (~3.6 GB),
converts it in a child process (the real CLI) and reports the child's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: resident anonymous + file-mapped pages). Target
(issue 13): peak RSS ≤ 1.5× the checkpoint's file size. Deletes everything it wrote.

    python benchmarks/convert.py [--dtype float32|float16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "tests" / "fixtures" / "official-format" / "manifest.json"


def build_checkpoint(path: Path, dtype: torch.dtype) -> int:
    """Random weights (N(0, 0.02)) for every manifest key, saved with torch.save as the release is."""
    keys = json.loads(MANIFEST.read_text())["keys"]
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=gen) * 0.02).to(dtype) for k, shape in keys.items()}
    torch.save(state, path)
    return sum(v.numel() for v in state.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="the converted pipeline's dtype (default float32, the CLI's default)")
    parser.add_argument("--workdir", default=None, help="where to write the ~3.6 GB checkpoint (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deblurdiff-convert-bench-", dir=args.workdir))
    try:
        ckpt = work / "model.pth"
        t0 = time.perf_counter()
        params = build_checkpoint(ckpt, torch.float16)
        build_s = time.perf_counter() - t0
        size = ckpt.stat().st_size
        exe = Path(sys.executable).parent / "deblurdiff"
        t0 = time.perf_counter()
        proc = subprocess.run([str(exe), "convert", "--checkpoint", str(ckpt), "--output", str(work / "out"),
                               "--dtype", args.dtype], capture_output=True, text=True, env=dict(os.environ))
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"convert failed ({proc.returncode}): {proc.stderr[-2000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        out_bytes = sum(p.stat().st_size for p in (work / "out").rglob("*") if p.is_file())
        load = os.getloadavg()[0]
        print(f"checkpoint: {params / 1e9:.3f} B parameters, float16, {size / 2**30:.2f} GiB "
              f"(built in {build_s:.0f} s); load average {load:.1f}")
        print()
        print("| output dtype | convert s | peak RSS GiB | peak / file size | output GiB | target ≤ 1.5× |")
        print("|---|---|---|---|---|---|")
        ratio = peak / size
        print(f"| {args.dtype} | {seconds:.1f} | {peak / 2**30:.2f} | {ratio:.2f}× | {out_bytes / 2**30:.2f} | "
              f"{'PASS' if ratio <= 1.5 else 'MISS'} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
