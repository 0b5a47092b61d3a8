"""The quickstart behind ``deblurdiff demo`` / ``make demo``: the whole system on the embedded default.

On a local Ray instance, tiny preset, CPU, nothing downloaded:

1. synthesise pairs from scikit-image's bundled photos with the ``realistic`` recipe — training pairs
   from some photos, at least 8 held-out pairs from *other* photos;
2. train with Ray Train + DeepSpeed (2 workers) for a few minutes and export the pipeline;
3. evaluate on the held-out pairs (PSNR, SSIM, MSE(z_b, z_0), MSE(ẑ, z_0));
4. deblur scikit-image's real motion-blurred ``clock_motion.png``;
5. start the Serve app, send it one request, stop it;
6. write ``report.json`` and ``before_after.png`` and print a short summary.

Every number in the report comes from the held-out pairs.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from deblurdiff.errors import UsageError
from deblurdiff.pixels import to_uint8

logger = logging.getLogger(__name__)

__all__ = ["TRAIN_PHOTOS", "HELD_OUT_PHOTOS", "run_demo"]

# Files scikit-image ships inside its wheel (skimage/data/; no download). Held-out photos never
# reach training.
TRAIN_PHOTOS = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png",
                "retina.jpg", "camera.png", "coins.png", "brick.png", "grass.png", "gravel.png", "moon.png")
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png")
BLURRED_PHOTO = "clock_motion.png"  # a real motion-blurred photo
CROP = 64  # tiny trains on 64×64 crops
TRAIN_CROPS_PER_IMAGE = 24
HELD_OUT_CROPS_PER_IMAGE = 6  # 2 photos × 6 = 12 held-out pairs (≥ 8)


def _training_config(output: Path, pairs: Path, held_out: Path, max_steps: int, workers: int) -> dict:
    """The demo's training run: ``configs/tiny.yaml`` shortened to fit a few minutes on 2 cores."""
    return {
        "run": {"output_dir": str(output / "run"), "name": "demo", "seed": 0, "log_every": 25},
        "data": {"shards": str(pairs), "crop": CROP, "validation_shards": str(held_out),
                 "validation_pairs": 4, "shuffle_buffer": 64},
        "model": {"preset": "tiny"},
        "train": {"max_steps": max_steps, "batch_size": 8, "lr": 1e-3, "warmup_steps": 20,
                  "lr_schedule": "cosine", "min_lr_ratio": 0.1, "grad_clip": 1.0,
                  "checkpoint_every": max_steps, "keep_checkpoints": 1, "validate_every": 0,
                  "validation_steps": 10},
        "scaling": {"workers": workers},
        "wandb": {"mode": "offline"},
    }


@contextmanager
def _timed(timings: dict, name: str):
    start = time.perf_counter()
    print(f"[demo] {name} ...", flush=True)
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    print(f"[demo] {name}: {timings[name]:.1f} s", flush=True)


def _photo_paths(names: tuple[str, ...]) -> list[str]:
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    paths = [data_dir / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"scikit-image's bundled photos are missing: {', '.join(missing)}")
    return [str(p) for p in paths]


def _side_by_side(left: np.ndarray, right: np.ndarray, path: Path) -> None:
    from PIL import Image

    gap = 8
    h, w = left.shape[:2]
    canvas = Image.new("RGB", (2 * w + gap, h), (255, 255, 255))
    canvas.paste(Image.fromarray(left), (0, 0))
    canvas.paste(Image.fromarray(right), (w + gap, 0))
    canvas.save(path)


def _post_image(url: str, data: bytes, timeout: float = 300) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def run_demo(output: str | Path, *, max_steps: int = 300, workers: int = 2, steps: int = 10,
             port: int = 0) -> dict:
    """Run the quickstart into ``output``; returns the report (also ``output/report.json``)."""
    import ray
    import torch

    from deblurdiff._ray import connect
    from deblurdiff.config import validate_config
    from deblurdiff.evaluation import evaluate
    from deblurdiff.imageio import decode_rgb, encode_image, read_rgb
    from deblurdiff.model_dir import load_pipeline
    from deblurdiff.pipelines.synth import run_synth
    from deblurdiff.serving.local import ServeRunner
    from deblurdiff.training import TrainConfig, launch

    output = Path(output).expanduser().resolve()
    if (output / "report.json").exists() or (output / "run").exists():
        raise UsageError(f"--output {output}: holds an earlier demo; choose an empty directory")
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 0. a local Ray instance for every stage (no cluster needed)
    connect("local", include_dashboard=False)

    # 1. synthesise training and held-out pairs from different photos
    with _timed(timings, "synthesise"):
        train_synth = run_synth(_photo_paths(TRAIN_PHOTOS), str(output / "pairs" / "train"),
                                recipe="realistic", crop=CROP, crops_per_image=TRAIN_CROPS_PER_IMAGE,
                                seed=0, shard_size=64)
        held_synth = run_synth(_photo_paths(HELD_OUT_PHOTOS), str(output / "pairs" / "held_out"),
                               recipe="realistic", crop=CROP, crops_per_image=HELD_OUT_CROPS_PER_IMAGE,
                               seed=1, shard_size=64)

    # 2. train (Ray Train + DeepSpeed, 2 workers) and export
    with _timed(timings, "train"):
        raw = _training_config(output, output / "pairs" / "train", output / "pairs" / "held_out",
                               max_steps, workers)
        cfg = validate_config(raw, TrainConfig, source="demo training config")
        train_summary = launch(cfg)
    model_dir = Path(train_summary["model_dir"])

    # 3. evaluate on the held-out pairs
    with _timed(timings, "evaluate"):
        pipe = load_pipeline(model_dir)
        evaluation = evaluate(pipe, output / "pairs" / "held_out", output / "eval" / "summary.json",
                              steps=steps, sampler="dpmpp", seed=0, progress=False)

    # 4. deblur a real motion-blurred photo
    with _timed(timings, "deblur_clock_motion"):
        clock_rgb = read_rgb(_photo_paths((BLURRED_PHOTO,))[0])  # (300, 400, 3) uint8, grey as RGB
        restored = pipe(clock_rgb, num_inference_steps=steps, sampler="dpmpp",
                        generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        restored_u8 = to_uint8(restored)
        (output / "clock_motion_restored.png").write_bytes(encode_image(restored_u8, "png"))
        _side_by_side(clock_rgb, restored_u8, output / "before_after.png")

    # 5. serve: start the app, one request, stop it
    with _timed(timings, "serve_one_request"):
        # Ray is already up (step 0), so the runner deploys onto it and stop() shuts Serve down.
        runner = ServeRunner({"model": str(model_dir), "min_replicas": 1, "max_replicas": 1},
                             host="127.0.0.1", port=port or _free_port())
        url = runner.start()
        try:
            status, body = _post_image(url + f"v1/deblur?steps={min(steps, 10)}&format=png",
                                       encode_image(clock_rgb, "png"))
            served = decode_rgb(body)
        finally:
            runner.stop()
        serve_result = {"status": status, "size": [served.shape[1], served.shape[0]],
                        "same_size_as_input": served.shape == clock_rgb.shape}

    # 6. report
    report = {
        "held_out_pairs": evaluation["pairs"],
        "held_out_photos": list(HELD_OUT_PHOTOS),
        "train_photos": list(TRAIN_PHOTOS),
        "train_pairs": train_synth.samples,
        "psnr_blurry": evaluation["psnr_blurry"],
        "psnr_restored": evaluation["psnr_restored"],
        "ssim_blurry": evaluation["ssim_blurry"],
        "ssim_restored": evaluation["ssim_restored"],
        "blurry_latent_mse": evaluation["blurry_latent_mse"],
        "lkpn_latent_mse": evaluation["lkpn_latent_mse"],
        "lkpn_latent_mse_sampling": evaluation["lkpn_latent_mse_sampling"],
        "lkpn_learned": evaluation["lkpn_latent_mse"] < evaluation["blurry_latent_mse"],
        "train": {"final_step": train_summary["final_step"], "workers": workers,
                  "last_metrics": train_summary["last_metrics"]},
        "sampler": {"name": "dpmpp", "steps": steps},
        "serve": serve_result,
        "timings_s": {**timings, "total": round(time.perf_counter() - started, 2)},
        "skipped_inputs": {"train": train_synth.skipped, "held_out": held_synth.skipped,
                           "eval": len(evaluation["skipped"])},
        "outputs": {"model": str(model_dir), "eval": str(output / "eval" / "summary.json"),
                    "before_after": str(output / "before_after.png"),
                    "clock_motion_restored": str(output / "clock_motion_restored.png")},
    }
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    ray.shutdown()  # the local instance started in step 0
    _print_summary(report, output)
    return report


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _print_summary(report: dict, output: Path) -> None:
    t = report["timings_s"]
    verdict = "learned" if report["lkpn_learned"] else "did NOT beat the blurry latent"
    print("\n".join([
        "",
        f"deblurdiff demo: done in {t['total'] / 60:.1f} min -> {output}",
        f"  held-out pairs        {report['held_out_pairs']} (from {', '.join(report['held_out_photos'])}; "
        f"never trained on)",
        f"  PSNR blurry/restored  {report['psnr_blurry']:.2f} dB -> {report['psnr_restored']:.2f} dB",
        f"  latent MSE            z_b {report['blurry_latent_mse']:.5f} -> ẑ {report['lkpn_latent_mse']:.5f} "
        f"(LKPN {verdict})",
        f"  serve                 HTTP {report['serve']['status']}, output {report['serve']['size'][0]}x"
        f"{report['serve']['size'][1]}",
        f"  timings (s)           " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()),
        f"  see                   {output / 'report.json'}, {output / 'before_after.png'}",
    ]), flush=True)
