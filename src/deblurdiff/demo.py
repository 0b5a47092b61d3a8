"""The quickstart behind ``deblurdiff demo`` / ``make demo``: the whole system on the embedded default.

On a local Ray instance, tiny preset, CPU, nothing downloaded:

1. synthesise pairs from scikit-image's bundled photos with the ``small-handheld`` recipe (``realistic``'s
   image formation, sensor noise and JPEG, camera shake scaled to 3–11 px: within reach of the tiny
   model's 5×5 kernels on 64 px crops; ``realistic`` draws shake up to 127 px, wider than the crop) —
   training pairs from some photos, validation pairs from others, at least 8 held-out pairs from yet others;
2. fine-tune the packaged ``tiny-small-handheld`` pipeline (``deblurdiff.pretrained``: the tiny preset
   trained by ``deblurdiff train`` on the same training photos, its provenance recorded beside it) with
   Ray Train + DeepSpeed (2 workers) for a few minutes, ``configs/tiny.yaml`` (the packaged copy) with
   the demo's overrides on top, and export the pipeline (``--from-scratch``: train the preset instead);
3. choose the sampler settings on the *validation* pairs and record them in the model directory, so
   ``deblur``, ``eval`` and ``serve`` use them by default;
4. evaluate on the held-out pairs with those settings (PSNR, SSIM, MSE(z_b, z_0), MSE(ẑ, z_0) along
   the sampling run);
5. deblur scikit-image's real motion-blurred ``clock_motion.png``;
6. start the Serve app, send it one request (no parameters: the recorded settings), stop it;
7. write ``report.json`` and ``before_after.png`` and print a short summary.

Every quality number in the report comes from the held-out pairs; nothing is tuned on them.
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

__all__ = ["HELD_OUT_PHOTOS", "RECIPE", "SAMPLING_CANDIDATES", "TRAIN_PHOTOS", "VALIDATION_PHOTOS", "run_demo"]

# Files scikit-image ships inside its wheel (skimage/data/; no download). Three disjoint sets:
# training, validation (sampler settings are chosen there) and held-out (only reported).
TRAIN_PHOTOS = ("astronaut.png", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png",
                "retina.jpg", "coins.png", "brick.png", "grass.png", "gravel.png", "moon.png")
VALIDATION_PHOTOS = ("rocket.jpg", "camera.png")
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png")
BLURRED_PHOTO = "clock_motion.png"  # a real motion-blurred photo
RECIPE = "small-handheld"  # built-in: camera shake 3–11 px, defocus radius ≤ 2, realistic's noise and JPEG
CROP = 64  # tiny trains on 64×64 crops
TRAIN_CROPS_PER_IMAGE = 64  # 704 pairs: the set tiny-small-handheld was trained on (its provenance.json)
VALIDATION_CROPS_PER_IMAGE = 4  # 8 pairs: enough to rank a few sampler settings, cheap to score
HELD_OUT_CROPS_PER_IMAGE = 6  # 2 photos × 6 = 12 held-out pairs (≥ 8)
PRETRAINED = "tiny-small-handheld"  # the packaged pipeline the demo fine-tunes (deblurdiff.pretrained)
DEFAULT_MAX_STEPS = 300  # fine-tuning steps: a few minutes on 2 idle cores (README, RESULTS.md)
FINETUNE_LR = 2e-4  # a fifth of tiny.yaml's from-scratch 1e-3: refine the packaged weights, not retrain them
FROM_SCRATCH_MAX_STEPS = 500  # --from-scratch: what fits the 15-minute budget on 2 idle cores
# Sampler settings tried on the validation pairs; the best PSNR is recorded with the model.
SAMPLING_CANDIDATES = (
    {"sampler": "dpmpp", "steps": 10, "strength": 1.0},  # from pure noise, as the paper samples
    {"sampler": "dpmpp", "steps": 10, "strength": 0.3},  # from the LKPN's ẑ, noised to t = 300 (img2img)
    {"sampler": "dpmpp", "steps": 10, "strength": 0.1},  # from ẑ noised to t = 100: one step
    {"sampler": "dpmpp", "steps": 20, "strength": 0.05},  # from ẑ noised to t = 50: one step, closest to ẑ
)


def _training_config(output: Path, pairs: Path, validation: Path, max_steps: int, workers: int,
                     init_from: Path | None):
    """The demo's training run: the packaged ``configs/tiny.yaml`` with the demo's overrides on top,
    fine-tuning ``init_from`` at ``FINETUNE_LR`` (None: the preset from scratch, tiny.yaml's lr)."""
    from deblurdiff.config import load_config
    from deblurdiff.training import TrainConfig
    from deblurdiff.training.config import packaged_config

    overrides = [f"run.output_dir={output / 'run'}", "run.name=demo", "run.log_every=25",
                 f"data.shards={pairs}", f"data.validation_shards={validation}", f"data.crop={CROP}",
                 f"train.max_steps={max_steps}", f"train.checkpoint_every={max_steps}", "train.keep_checkpoints=1",
                 "train.validate_every=0", f"scaling.workers={workers}"]
    if init_from is not None:
        overrides += [f"model.init_from={init_from}", f"train.lr={FINETUNE_LR}"]
    return load_config(packaged_config("tiny"), TrainConfig, overrides)


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


def _post_image(url: str, data: bytes, timeout: float = 300) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        # Header names lower-cased: the server sends them lower-case, callers should not care.
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def run_demo(output: str | Path, *, max_steps: int | None = None, workers: int = 2,
             candidates: tuple[dict, ...] = SAMPLING_CANDIDATES, port: int = 0, from_scratch: bool = False) -> dict:
    """Run the quickstart into ``output``; returns the report (also ``output/report.json``).

    ``from_scratch``: train the tiny preset from random weights instead of fine-tuning ``PRETRAINED``;
    ``max_steps`` defaults to ``FROM_SCRATCH_MAX_STEPS`` then, else ``DEFAULT_MAX_STEPS``."""
    import ray
    import torch

    from deblurdiff._ray import connect, free_port
    from deblurdiff.evaluation import choose_sampling, evaluate, score_sampling
    from deblurdiff.imageio import decode_rgb, encode_image, read_rgb
    from deblurdiff.model_dir import load_pipeline, record_sampling
    from deblurdiff.pipelines.synth import run_synth
    from deblurdiff.pretrained import packaged_model
    from deblurdiff.serving.local import ServeRunner
    from deblurdiff.training import launch

    output = Path(output).expanduser().resolve()
    if (output / "report.json").exists() or (output / "run").exists():
        raise UsageError(f"--output {output}: holds an earlier demo; choose an empty directory")
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 0. a local Ray instance for every stage (no cluster needed)
    connect("local", dashboard=True)  # the state API Ray Train's PlacementGroupCleaner polls (launcher.py)

    # 1. synthesise training, validation and held-out pairs, each from different photos
    pairs = output / "pairs"
    with _timed(timings, "synthesise"):
        synth = {name: run_synth(_photo_paths(photos), str(pairs / name), recipe=RECIPE, crop=CROP,
                                 crops_per_image=crops, seed=seed, shard_size=64)
                 for name, photos, crops, seed in (
                     ("train", TRAIN_PHOTOS, TRAIN_CROPS_PER_IMAGE, 0),
                     ("validation", VALIDATION_PHOTOS, VALIDATION_CROPS_PER_IMAGE, 2),
                     ("held_out", HELD_OUT_PHOTOS, HELD_OUT_CROPS_PER_IMAGE, 1))}

    # 2. the packaged model as shipped, scored on the held-out pairs (what `--model tiny-small-handheld`
    #    gives a user without training); then fine-tune it (Ray Train + DeepSpeed, 2 workers) and export
    init_from = None if from_scratch else packaged_model(PRETRAINED)
    max_steps = max_steps or (FROM_SCRATCH_MAX_STEPS if from_scratch else DEFAULT_MAX_STEPS)
    shipped = None
    if init_from is not None:
        with _timed(timings, "evaluate_packaged"):
            shipped = evaluate(load_pipeline(init_from), pairs / "held_out", output / "eval_packaged" / "summary.json",
                               seed=0, progress=False)
    with _timed(timings, "train"):
        cfg = _training_config(output, pairs / "train", pairs / "validation", max_steps, workers, init_from)
        train_summary = launch(cfg)
    model_dir = Path(train_summary["model_dir"])

    # 3. choose the sampler settings on the validation pairs; record them with the model
    with _timed(timings, "choose_sampling"):
        pipe = load_pipeline(model_dir)
        validation = score_sampling(pipe, pairs / "validation", list(candidates))
        sampling = record_sampling(model_dir, choose_sampling(validation),
                                   validated_on={"data": str(pairs / "validation"), "photos": list(VALIDATION_PHOTOS),
                                                 "recipe": RECIPE, "crop": CROP, "candidates": validation})
        pipe = load_pipeline(model_dir)  # as a user loads it: the recorded settings are its defaults
        assert pipe.default_sampling() == sampling

    # 4. evaluate on the held-out pairs, with the model's recorded settings
    with _timed(timings, "evaluate"):
        evaluation = evaluate(pipe, pairs / "held_out", output / "eval" / "summary.json", seed=0, progress=False)

    # 5. deblur a real motion-blurred photo, as `deblurdiff deblur photo.png --model DIR` does
    with _timed(timings, "deblur_clock_motion"):
        clock_rgb = read_rgb(_photo_paths((BLURRED_PHOTO,))[0])  # (300, 400, 3) uint8, grey as RGB
        restored = pipe(clock_rgb, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        restored_u8 = to_uint8(restored)
        (output / "clock_motion_restored.png").write_bytes(encode_image(restored_u8, "png"))
        _side_by_side(clock_rgb, restored_u8, output / "before_after.png")

    # 6. serve: start the app, one request without parameters (the recorded settings), stop it
    with _timed(timings, "serve_one_request"):
        # Ray is already up (step 0), so the runner deploys onto it and stop() shuts Serve down.
        runner = ServeRunner({"model": str(model_dir), "min_replicas": 1, "max_replicas": 1},
                             host="127.0.0.1", port=port or free_port())
        url = runner.start()
        try:
            status, headers, body = _post_image(url + "v1/deblur?format=png&seed=0", encode_image(clock_rgb, "png"))
            served = decode_rgb(body)
        finally:
            runner.stop()
        serve_result = {"status": status, "size": [served.shape[1], served.shape[0]],
                        "same_size_as_input": served.shape == clock_rgb.shape,
                        "sampling": {"sampler": headers.get("x-deblur-sampler"),
                                     "steps": int(headers.get("x-deblur-steps", 0)),
                                     "strength": float(headers.get("x-deblur-strength", "nan"))}}

    # 7. report
    report = {
        "recipe": RECIPE,  # a built-in recipe: deblurdiff/blur_synthesis/recipes/small-handheld.yaml
        "crop": CROP,
        "held_out_pairs": evaluation["pairs"],
        "held_out_photos": list(HELD_OUT_PHOTOS),
        "validation_photos": list(VALIDATION_PHOTOS),
        "train_photos": list(TRAIN_PHOTOS),
        "train_pairs": synth["train"].samples,
        "psnr_blurry": evaluation["psnr_blurry"],
        "psnr_restored": evaluation["psnr_restored"],
        "ssim_blurry": evaluation["ssim_blurry"],
        "ssim_restored": evaluation["ssim_restored"],
        "restored_beats_blurry": bool(evaluation["psnr_restored"] >= evaluation["psnr_blurry"] + 1.0
                                      and evaluation["ssim_restored"] > evaluation["ssim_blurry"]),
        "blurry_latent_mse": evaluation["blurry_latent_mse"],
        # ẑ exactly as the user's call produces it (the real sampling run, averaged over its steps).
        "lkpn_latent_mse": evaluation["lkpn_latent_mse"],
        # Training diagnostic only (x_t noised from the SHARP z_0 at fixed timesteps): not proof of deblurring.
        "train_objective_latent_mse": evaluation["train_objective_latent_mse"],
        "lkpn_learned": evaluation["lkpn_latent_mse"] < evaluation["blurry_latent_mse"],
        "train": {"init_from": PRETRAINED if init_from is not None else None, "final_step": train_summary["final_step"],
                  "lr": cfg.train.lr, "workers": workers, "last_metrics": train_summary["last_metrics"]},
        # The packaged model before fine-tuning, on the same held-out pairs with its own recorded sampler.
        "packaged_model": None if shipped is None else {
            "name": PRETRAINED, **{k: shipped[k] for k in ("sampler", "steps", "strength", "psnr_restored",
                                                         "ssim_restored", "lkpn_latent_mse")}},
        "sampling": sampling,  # recorded in the model directory; deblur / eval / serve defaults
        "sampling_validation": validation,
        "serve": serve_result,
        "timings_s": {**timings, "total": round(time.perf_counter() - started, 2)},
        "skipped_inputs": {**{name: result.skipped for name, result in synth.items()},
                           "eval": len(evaluation["skipped"])},
        "outputs": {"model": str(model_dir), "eval": str(output / "eval" / "summary.json"),
                    "before_after": str(output / "before_after.png"),
                    "clock_motion_restored": str(output / "clock_motion_restored.png")},
    }
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    ray.shutdown()  # the local instance started in step 0
    _print_summary(report, output)
    return report


def _print_summary(report: dict, output: Path) -> None:
    t = report["timings_s"]
    verdict = "beats" if report["lkpn_latent_mse"] < report["blurry_latent_mse"] else "does NOT beat"
    s, shipped, trained = report["sampling"], report["packaged_model"], report["train"]
    origin = (f"fine-tuned {trained['init_from']} for {trained['final_step']} steps" if trained["init_from"]
              else f"trained from scratch for {trained['final_step']} steps")
    print("\n".join([
        "",
        f"deblurdiff demo: done in {t['total'] / 60:.1f} min -> {output}",
        f"  blur                  recipe {report['recipe']}, {report['crop']} px crops",
        f"  model                 {origin}",
        f"  held-out pairs        {report['held_out_pairs']} (from {', '.join(report['held_out_photos'])}; "
        f"never trained or tuned on)",
        f"  sampler (validated)   {s['sampler']}, {s['steps']} steps, strength {s['strength']:g} "
        f"(recorded in the model directory)",
        f"  PSNR blurry/restored  {report['psnr_blurry']:.2f} dB -> {report['psnr_restored']:.2f} dB"
        + (f" (as packaged, before fine-tuning: {shipped['psnr_restored']:.2f} dB)" if shipped else ""),
        f"  SSIM blurry/restored  {report['ssim_blurry']:.3f} -> {report['ssim_restored']:.3f}",
        f"  target                PSNR +1.0 dB and a higher SSIM: "
        f"{'met' if report['restored_beats_blurry'] else 'NOT met'}",
        f"  latent MSE (sampling) z_b {report['blurry_latent_mse']:.5f} -> ẑ {report['lkpn_latent_mse']:.5f} "
        f"(ẑ {verdict} the blurry latent)",
        f"  serve                 HTTP {report['serve']['status']}, output {report['serve']['size'][0]}x"
        f"{report['serve']['size'][1]}",
        f"  timings (s)           " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()),
        f"  see                   {output / 'report.json'}, {output / 'before_after.png'}",
    ]), flush=True)
