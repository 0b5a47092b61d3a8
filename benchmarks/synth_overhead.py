"""What a whole ``deblurdiff synth`` command spends outside the actors' steady work, and what two cores
give two synthesis processes without Ray (issue 25).

    .venv/bin/python benchmarks/synth_overhead.py [--sources 100] [--crop 512] [--runs 2] [--ceiling-s 15]

1. **Phases of one command.** Runs ``deblurdiff synth`` (the issue's job: ``--sources`` JPEGs of 768×576 ×
   4 crops, ``realistic``, ``--shard-size 50``, ``--workers 1``, a fresh local Ray) in a child process that
   stamps the time when ``connect`` (``ray.init``) starts and ends, when the last shard record comes back,
   and how long Ray's shutdown takes to stop each of its processes; the manifest gives the shards'
   building span. The stamps are wrappers around the named functions, set up before the CLI runs; the
   product code is not changed. Ray's internals, where a version lacks them, are skipped.
2. **The two-core ceiling.** The actor's own per-pair work (``synthesize`` on a uint8 512² crop, the two
   PNGs) in one process, then in two at once, one thread each, no Ray: how much a second core can add
   on this machine before any framework takes its share.
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

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import make_corpus  # noqa: E402  (benchmarks/pipeline.py, beside this script)

# Runs in the child: wrap the functions whose start/end mark a phase, print "@@ <seconds> <event>" lines.
_STAMPED_CLI = r"""
import sys, time
T0 = float(sys.argv.pop(1))
def stamp(event):
    print(f"@@ {time.time() - T0:.3f} {event}", file=sys.stderr, flush=True)
from deblurdiff import _ray
from deblurdiff.pipelines import synth
connect, build = _ray.connect, synth._build_shards
def timed_connect(*a, **k):
    stamp("connect start"); out = connect(*a, **k); stamp("connect end"); return out
def timed_build(*a, **k):
    yield from build(*a, **k)
    stamp("last shard")
_ray.connect, synth._build_shards = timed_connect, timed_build
try:
    from ray._private import node
    kill = node.Node._kill_process_type
    def timed_kill(self, kind, *a, **k):
        t = time.time(); out = kill(self, kind, *a, **k); stamp(f"stopped {kind} {time.time() - t:.3f}"); return out
    node.Node._kill_process_type = timed_kill
except (ImportError, AttributeError):
    pass
from deblurdiff.cli import main
sys.exit(main())
"""


def run_command(corpus: Path, out: Path, crop: int) -> dict:
    """One whole command; returns {event: seconds since the child was launched} plus "exit"."""
    args = ["synth", "--input", str(corpus), "--output", str(out), "--crop", str(crop), "--crops-per-image", "4",
            "--recipe", "realistic", "--shard-size", "50", "--workers", "1"]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", _STAMPED_CLI, repr(t0), *args], capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"synth failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    events: dict[str, float] = {"exit": wall}
    for line in proc.stderr.splitlines():
        if line.startswith("@@ "):
            _, seconds, event = line.split(" ", 2)
            events[event] = float(seconds)
    last_run = json.loads((out / "manifest.json").read_text())["last_run"]
    events["pairs"], events["span"] = last_run["samples_written"], last_run["build_span_s"]
    return events


def phases(e: dict) -> list[tuple[str, float]]:
    """The command's wall time by phase. The shards' building span is the manifest's (first shard started
    -> last finished, stamped by the actor); Ray Data's iterator hands records on a little later."""
    built = e["last shard"] - e["span"]  # when the first shard started
    stops = {k.split()[1]: float(k.split()[2]) for k in e if k.startswith("stopped ")}
    rows = [
        ("interpreter, imports, planning (to ray.init)", e["connect start"]),
        ("ray.init (local instance)", e["connect end"] - e["connect start"]),
        ("Ray Data start, actor start (to the first shard's start)", built - e["connect end"]),
        ("building the shards (the manifest's span)", e["span"]),
        ("after the last record: manifest, Ray shutdown, exit", e["exit"] - e["last shard"]),
    ]
    rows += [(f"  of which stopping Ray's {kind}", s) for kind, s in stops.items()]
    return rows


def pairs_loop(seconds: float) -> None:
    """Child of the ceiling test: the actor's per-pair work on one thread for ``seconds``; prints pairs/s."""
    os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # as the synth actors run (pipelines._pool.actor_env)
    import torch

    from blur_synthesis import photos
    from deblurdiff.blur_synthesis import load_recipe, synthesize
    from deblurdiff.pipelines.png import encode_png
    from deblurdiff.pixels import to_uint8

    torch.set_num_threads(1)
    recipe = load_recipe("realistic")
    crops = to_uint8(photos(8, 512))
    synthesize(crops[:1], recipe, seeds=[0])  # warm-up: FFT plans, lazy imports
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sharp = crops[n % 8 : n % 8 + 1]
        blurry = synthesize(sharp, recipe, seeds=[1000 + n]).blurry
        encode_png(sharp[0].permute(1, 2, 0).numpy())
        encode_png(blurry[0].permute(1, 2, 0).numpy())
        n += 1
    print(n / (time.perf_counter() - t0))


def ceiling(seconds: float) -> tuple[float, list[float]]:
    def launch(k: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, __file__, "--pairs-loop", str(seconds)], stdout=subprocess.PIPE, text=True)
                 for _ in range(k)]
        return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    one = launch(1)[0]
    return one, launch(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=100)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--ceiling-s", type=float, default=15.0, help="seconds per ceiling measurement (0: skip it)")
    ap.add_argument("--pairs-loop", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pairs_loop is not None:
        return pairs_loop(args.pairs_loop)

    with tempfile.TemporaryDirectory(prefix="dd-synth-overhead-") as tmp:  # ~300 MB of shards a run at 512²
        corpus = make_corpus(Path(tmp) / "corpus", args.sources, size=(768, 576))
        load0 = os.getloadavg()[0]
        runs = [run_command(corpus, Path(tmp) / f"out{i}", args.crop) for i in range(args.runs)]
        load1 = os.getloadavg()[0]
    print(f"# one `deblurdiff synth` command: {args.sources} sources (768x576 JPEG) x 4 crops, {args.crop}², realistic, "
          f"--shard-size 50, --workers 1, fresh local Ray; {platform.machine()} {os.cpu_count()} cores, "
          f"load {load0:.2f} -> {load1:.2f}")
    table = [phases(e) for e in runs]
    print("| phase | " + " | ".join(f"run {i + 1} s" for i in range(len(runs))) + " |")
    print("|---|" + "---|" * len(runs))
    for j, (name, _) in enumerate(table[0]):
        print(f"| {name} | " + " | ".join(f"{t[j][1]:.2f}" if j < len(t) else "-" for t in table) + " |")
    print("| **whole command** | " + " | ".join(f"**{e['exit']:.2f}**" for e in runs) + " |")
    print("| pairs written (pairs/s while building) | " + " | ".join(f"{e['pairs']} ({e['pairs'] / e['span']:.1f})" for e in runs) + " |")
    if args.ceiling_s > 0:
        one, two = ceiling(args.ceiling_s)
        print(f"\n# two-core ceiling: synthesize (realistic, uint8 512²) + two PNGs per pair, one thread per process, no Ray, {args.ceiling_s:.0f} s each")
        print("| processes | pairs/s each | pairs/s together | vs one |")
        print("|---|---|---|---|")
        print(f"| 1 | {one:.2f} | {one:.2f} | 1.00× |")
        print(f"| 2 | {' / '.join(f'{r:.2f}' for r in two)} | {sum(two):.2f} | {sum(two) / one:.2f}× |")


if __name__ == "__main__":
    main()
