"""Training throughput: samples/s of the co-training step.

    python benchmarks/train_step.py                      # CPU: tiny, 1 and 2 Ray Train workers (+ GPU when CUDA)
    python benchmarks/train_step.py --gpu-only --quick   # one-shot GPU table, bounded (~1 min)
    python benchmarks/train_step.py --record             # append the tables to benchmarks/RESULTS.md

CPU: the real launcher (Ray Train V2 + DeepSpeed ZeRO-2 over gloo, the real shard stream) on the tiny
preset at 64x64 crops, global batch 8, with 1 and 2 workers on a local Ray sized to this machine.
samples/s is the steady state (the first logging window, with warm-up, is left out).

GPU (CUDA only, one process, no Ray): ``sd21`` random-init at 512x512 (timings do not depend on the
weights), per-GPU batch 8, the recipe's own ``micro_step``:
- fp32 eager baseline: plain AdamW, fp32 everywhere, no gradient checkpointing;
- ours: DeepSpeed ZeRO-2 (single rank), bf16 autocast (fp32 trainable weights, frozen parts stored
  bf16), with and without gradient checkpointing; plus bf16 eager, to separate bf16 from DeepSpeed.
Peak memory is ``torch.cuda.max_memory_allocated``. Target on one H200: >= 8 samples/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
sys.path.insert(0, str(REPO / "src"))

from deblurdiff.config import load_config  # noqa: E402
from deblurdiff.training.config import TrainConfig  # noqa: E402


# ----------------------------------------------------------------------------------------- CPU
def _photos(directory: Path) -> Path:
    import numpy as np
    import skimage.data

    from deblurdiff.imageio import encode_image

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = getattr(skimage.data, name)()[..., :3]
        (directory / f"{name}.png").write_bytes(encode_image(np.ascontiguousarray(img), "png"))
    return directory


def cpu_table(steps: int, log_every: int) -> str:
    import ray

    from deblurdiff.pipelines import run_synth
    from deblurdiff.training.launcher import launch

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp, "pairs")
        run_synth([str(_photos(Path(tmp, "photos")))], str(shards), crop=64, crops_per_image=16, shard_size=16,
                  seed=0, workers=1)
        for workers in (1, 2):
            out = Path(tmp, f"run{workers}")
            cfg = load_config(REPO / "configs" / "tiny.yaml", TrainConfig, [
                f"run.output_dir={out}", f"data.shards={shards}", f"scaling.workers={workers}",
                f"train.max_steps={steps}", f"run.log_every={log_every}", f"train.checkpoint_every={steps}",
                "train.validate_every=0", "train.validation_steps=1", "data.validation_pairs=1", "wandb.mode=disabled",
            ])
            summary = launch(cfg)
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            windows = [x for x in lines if "train/samples_per_s" in x][1:]  # drop the warm-up window
            sps = statistics.median(x["train/samples_per_s"] for x in windows)
            spstep = statistics.median(x["train/s_per_step"] for x in windows)
            rows.append((workers, summary["resources"]["cpus_per_worker"], cfg.train.batch_size, sps, spstep,
                         summary["last_metrics"].get("train/loss", float("nan"))))
    ray.shutdown()
    load = os.getloadavg()[0]
    head = (f"### tiny preset on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load average {load:.1f} at the end; {date.today()})\n\n"
            f"Ray Train V2 + DeepSpeed ZeRO-2 (gloo), 64x64 crops, {steps} steps, median over logging windows "
            f"of {log_every} steps after the first.\n\n"
            "| workers | CPUs/worker | global batch | samples/s | s/step | loss at end |\n|---|---|---|---|---|---|\n")
    body = "".join(f"| {w} | {c:g} | {b} | {s:.2f} | {t:.2f} | {loss:.3f} |\n" for w, c, b, s, t, loss in rows)
    ratio = rows[1][3] / rows[0][3] if rows[0][3] else float("nan")
    return head + body + f"\n2 workers vs 1: {ratio:.2f}x samples/s.\n"


# ----------------------------------------------------------------------------------------- GPU
class _EagerEngine:
    """The slice of a DeepSpeed engine ``micro_step`` uses, over a plain torch optimiser (baseline)."""

    def __init__(self, module, optimizer):
        self.module, self.optimizer = module, optimizer

    def __call__(self, *args):
        return self.module(*args)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _init_single_rank() -> None:
    """A one-process NCCL group: deepspeed.initialize needs torch.distributed."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl", auto_mpi_discovery=False)


def _time_steps(engine, pipe, batch, context, *, bf16, warmup, steps) -> tuple[float, float, float]:
    """(samples/s, s/step, peak GiB) over ``steps`` micro-steps after ``warmup``."""
    from deblurdiff.training.loop import micro_step

    gen = torch.Generator().manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        micro_step(engine, pipe, batch, gen, context, bf16=bf16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        terms = micro_step(engine, pipe, batch, gen, context, bf16=bf16)
    terms.loss.item()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return batch["sharp"].shape[0] / dt, dt, torch.cuda.max_memory_allocated() / 2**30


def gpu_table(quick: bool, batch_size: int = 8, size: int = 512) -> str:
    from deblurdiff.ops import eac_backend
    from deblurdiff.training.engine import build_engine
    from deblurdiff.training.loop import build_pipeline, prepare_model

    device = torch.device("cuda")
    warmup, steps = (2, 4) if quick else (3, 10)
    base = [f"run.output_dir={tempfile.mkdtemp()}", "data.shards=unused", "model.preset=sd21", "model.random_init=true",
            "train.max_steps=1",
            "scaling.workers=1", f"train.batch_size={batch_size}", f"data.crop={size}"]
    rows: list[tuple] = []
    g = torch.Generator(device).manual_seed(0)
    batch = {"sharp": torch.rand(batch_size, 3, size, size, device=device, generator=g),
             "blurry": torch.rand(batch_size, 3, size, size, device=device, generator=g)}

    # The weights are created on the GPU directly (a random 1.4B-parameter init on the CPU takes minutes).
    cfg32 = load_config(None, TrainConfig, [*base, "train.precision=fp32", "train.gradient_checkpointing=false"])
    pipe = build_pipeline(cfg32, device=device)

    # 1. eager baselines (plain AdamW, no DeepSpeed, no checkpointing): fp32, then bf16 autocast
    for precision in ("fp32", "bf16"):
        label = f"{precision} eager (AdamW), no ckpt" + (" [baseline]" if precision == "fp32" else "")
        bf16 = precision == "bf16"
        opt = None
        try:
            prepared = prepare_model(cfg32, device, bf16=bf16, gradient_checkpointing=False, pipe=pipe)
            pipe, model = prepared.pipe, prepared.module
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
            context = pipe.null_text_embedding(batch_size).to(device, torch.bfloat16 if bf16 else torch.float32)
            sps, dt, mem = _time_steps(_EagerEngine(model, opt), pipe, batch, context, bf16=bf16, warmup=warmup,
                                       steps=steps)
            rows.append((label, f"{sps:.2f}", f"{dt:.3f}", f"{mem:.1f}"))
        except torch.OutOfMemoryError:
            rows.append((label, "OOM", "-", "> device"))
        finally:
            del opt
            for p in pipe.components.values():
                if isinstance(p, torch.nn.Module):
                    p.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()

    # 2. ours: DeepSpeed ZeRO-2 + bf16, gradient checkpointing on, then off (same engine)
    try:
        _init_single_rank()
        cfg16 = load_config(None, TrainConfig, [*base, "train.precision=bf16", "train.gradient_checkpointing=true"])
        prepared = prepare_model(cfg16, device, bf16=True, gradient_checkpointing=True, pipe=pipe)
        pipe, model = prepared.pipe, prepared.module
        engine, _, _ = build_engine(model, cfg16, world_size=1, on_gpu=True, bf16=True)
        context = pipe.null_text_embedding(batch_size).to(device, torch.bfloat16)
        for ckpt in (True, False):
            for name in ("unet", "controlnet", "lkpn"):
                for sub in getattr(pipe, name).modules():
                    if getattr(sub, "_supports_gradient_checkpointing", False):
                        (sub.enable_gradient_checkpointing if ckpt else sub.disable_gradient_checkpointing)()
            label = f"DeepSpeed ZeRO-2, bf16, grad ckpt {'on' if ckpt else 'off'}"
            try:
                sps, dt, mem = _time_steps(engine, pipe, batch, context, bf16=True, warmup=warmup, steps=steps)
                rows.append((label, f"{sps:.2f}", f"{dt:.3f}", f"{mem:.1f}"))
            except torch.OutOfMemoryError:
                rows.append((label, "OOM", "-", "> device"))
                gc.collect()
                torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 - a one-shot run reports what failed and keeps its other rows
        rows.append((f"DeepSpeed bf16: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", "-", "-", "-"))

    name = torch.cuda.get_device_name()
    head = (f"### sd21 (random init) on {name}, torch {torch.__version__}, EAC backend {eac_backend(device)}; "
            f"{date.today()}\n\n{size}x{size} crops, per-GPU batch {batch_size}, one process; "
            f"{warmup} warm-up + {steps} timed steps. Target >= 8 samples/s on one H200.\n\n"
            "| configuration | samples/s | s/step | peak GiB |\n|---|---|---|---|\n")
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU table")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a bounded one-shot run)")
    parser.add_argument("--steps", type=int, default=40, help="CPU: optimiser steps per run")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md under '## Training'")
    args = parser.parse_args()
    tables = []
    if not args.gpu_only:
        steps = 20 if args.quick else args.steps
        tables.append(cpu_table(steps, log_every=5))
        print(tables[-1], flush=True)
    if torch.cuda.is_available():
        tables.append(gpu_table(args.quick))
        print(tables[-1], flush=True)
    elif args.gpu_only:
        print("no CUDA device: nothing to do for --gpu-only")
    if args.record and tables:
        record("\n".join(tables))
    return 0


def record(block: str) -> None:
    """Append ``block`` at the end of the '## Training' section of RESULTS.md (created if absent)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find("\n## Training\n")
    if start < 0:
        RESULTS.write_text(text.rstrip() + "\n\n## Training\n\n" + block)
        return
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    RESULTS.write_text(text[:end].rstrip() + "\n\n" + block.rstrip() + "\n" + text[end:])


if __name__ == "__main__":
    sys.exit(main())
