"""What a real photo size costs: ``deblurdiff deblur`` on one photo at 512×384, 2048×1536 and 12 MP.

    .venv/bin/python benchmarks/large_photo.py [--model tiny-small-handheld] [--sizes 512x384 2048x1536 4000x3000]

Runs the real command (a fresh process per size, the model's recorded sampler settings) on a photo resized
with Lanczos (default: scikit-image's astronaut; ``--photo`` for another), and prints per size the
command's wall time, the photo's own seconds as the restore manifest records them (decode, restore, encode
and write: the command's start-up and model load excluded), the ratio of those to the smallest size's, and
the peak RSS of the process tree (sampled every 0.1 s); times are the fastest of ``--repeats`` runs, RSS the
largest. Targets (issue 23): 2048×1536 ≤ 20× 512×384; 12 MP ≤ 2 minutes and ≤ 3 GB on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def run_deblur(image: Path, model: str, out: Path) -> tuple[float, float, float]:
    """(wall seconds, the photo's own seconds from the restore manifest — decode, restore, encode and write,
    without the process's start-up —, peak RSS in GB of the command and its children)."""
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
    photo_s = json.loads((out / "restore-manifest.json").read_text())["images"][0]["seconds"]
    return wall, photo_s, peak / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-small-handheld")
    parser.add_argument("--sizes", nargs="+", default=["512x384", "2048x1536", "4000x3000"])
    parser.add_argument("--photo", default=None, help="source photo (default: scikit-image's astronaut)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per size (the fastest is kept)")
    args = parser.parse_args()

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
        print(f"each size: the fastest of {args.repeats} runs (a fresh output folder each: deblur skips "
              "images whose output exists)")
        print("| size | MP | wall s | photo s (manifest) | ratio (photo s) | peak RSS GB |\n|---|---|---|---|---|---|")
        base = None
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            path = tmp / f"photo_{size}.png"
            source.resize((w, h), Image.LANCZOS).save(path)
            runs = [run_deblur(path, args.model, tmp / f"out-{size}-{i}") for i in range(args.repeats)]
            wall, photo_s, rss = min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs)
            base = base or photo_s
            print(f"| {size} | {w * h / 1e6:.1f} | {wall:.1f} | {photo_s:.2f} | {photo_s / base:.1f} | {rss:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
