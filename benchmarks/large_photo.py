"""What a real photo size costs: ``deblurdiff deblur`` on one photo at 512×384, 2048×1536 and 12 MP.

    .venv/bin/python benchmarks/large_photo.py [--model tiny-small-handheld] [--sizes 512x384 2048x1536 4000x3000]

Runs the real command (a fresh process per size, the model's recorded sampler settings) on a photo resized
with Lanczos (default: scikit-image's astronaut; ``--photo`` for another), and prints per size the
command's wall time, the same minus the command's fixed start-up (measured on a 64×64 image), the ratio
of that to the smallest size, and the peak RSS of the process tree (sampled every 0.1 s). Targets
(issue 23): 2048×1536 ≤ 20× 512×384; 12 MP ≤ 2 minutes and ≤ 3 GB on 2 idle cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def run_deblur(image: Path, model: str, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB of the command and its children)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen([str(VENV_BIN / "deblurdiff"), "deblur", str(image), "--model", model,
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, parent = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"deblur {image.name} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return wall, peak / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-small-handheld")
    parser.add_argument("--sizes", nargs="+", default=["512x384", "2048x1536", "4000x3000"])
    parser.add_argument("--photo", default=None, help="source photo (default: scikit-image's astronaut)")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    if args.photo:
        source = Image.open(args.photo).convert("RGB")
    else:
        from skimage import data

        source = Image.fromarray(data.astronaut())
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"model {args.model}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="dd-large-") as tmp:
        tmp = Path(tmp)
        Image.fromarray(np.asarray(source)[:64, :64]).save(tmp / "startup.png")
        startup, _ = run_deblur(tmp / "startup.png", args.model, tmp / "out")  # imports, model load, op load
        print(f"start-up (64x64 photo): {startup:.1f} s")
        print("| size | MP | wall s | minus start-up s | ratio | peak RSS GB |\n|---|---|---|---|---|---|")
        base = None
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            path = tmp / f"photo_{size}.png"
            source.resize((w, h), Image.LANCZOS).save(path)
            wall, rss = run_deblur(path, args.model, tmp / "out")
            net = max(wall - startup, 1e-3)
            base = base or net
            print(f"| {size} | {w * h / 1e6:.1f} | {wall:.1f} | {net:.1f} | {net / base:.1f} | {rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
