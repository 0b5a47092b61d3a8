"""The quickstart behind ``deblurdiff demo`` / ``make demo``: the whole system on the embedded default.

On a local Ray instance, tiny preset, CPU, nothing downloaded:

1. synthesise validation and held-out pairs from scikit-image's bundled photos with the ``small-handheld``
   recipe (``realistic``'s image formation, sensor noise and JPEG, camera shake scaled to 3–11 px: within
   reach of the tiny model's 5×5 kernels on 64 px crops); the fine-tuning photos are blurred on the fly;
2. score the packaged ``tiny-small-handheld`` pipeline as shipped (``deblurdiff.pretrained``: the tiny
   preset trained by ``deblurdiff train`` on photographs from Debian's wallpaper packages, none of them
   scikit-image's; ``provenance.json``, ``NOTICE.md`` beside it);
3. fine-tune it with Ray Train + DeepSpeed (2 workers) on fresh pairs from the demo's fine-tuning photos
   (``configs/tiny.yaml`` with the demo's overrides; ``--from-scratch``: train the preset instead);
4. choose the sampler settings on the *validation* pairs, and keep the fine-tuned model unless the
   packaged one scores higher there; record the settings in the kept model's directory, so
   ``deblur``, ``eval`` and ``serve`` use them by default;
5. evaluate on the held-out pairs (PSNR, SSIM, latent MSEs) beside the per-pair 5×5 linear filter fitted
   *with the sharp answer* (a bound, not reachable blind), per photo too;
6. ``before_after.png``: a held-out photo blurred with the demo's recipe | restored | sharp; and
   ``real_blur_clock_motion.png``: scikit-image's real motion-blurred photo, whose ~30 px blur is beyond
   the tiny kernels (an honest example of what it does not do);
7. start the Serve app, send it one request (no parameters: the recorded settings), stop it;
8. write ``report.json`` and print a short summary.

Every quality number in the report comes from the held-out pairs; nothing is tuned on them.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from deblurdiff.errors import UsageError
from deblurdiff.pixels import to_uint8

logger = logging.getLogger(__name__)

__all__ = ["HELD_OUT_PHOTOS", "RECIPE", "SAMPLING_CANDIDATES", "TRAIN_PHOTOS", "VALIDATION_PHOTOS", "run_demo"]

# Files scikit-image ships inside its wheel (skimage/data/; no download). Three disjoint sets. The packaged
# model never saw any of them (it learnt from Debian's photographs), so all are free for the demo.
HELD_OUT_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png")
TRAIN_PHOTOS = ("hubble_deep_field.jpg", "ihc.png", "retina.jpg", "grass.png", "gravel.png", "moon.png", "brick.png")
VALIDATION_PHOTOS = ("coins.png", "page.png")  # sampler settings and the kept model are chosen here
# Left out: motorcycle_right.png is the other half of motorcycle_left's stereo pair (near-duplicate of a
# held-out photo); the rest of skimage/data is synthetic, binary or too small.
BLURRED_PHOTO = "clock_motion.png"  # a real motion-blurred photo
BEFORE_AFTER = ("motorcycle_left.png", 150, 300, 256, 7)  # held-out photo, top, left, crop size, blur seed
RECIPE = "small-handheld"  # built-in: camera shake 3–11 px, defocus radius ≤ 2, realistic's noise and JPEG
CROP = 64  # tiny trains on 64×64 crops
TRAIN_CROPS_PER_IMAGE = 8  # per photo and pass over the photos, drawn afresh every pass (data.images)
VALIDATION_CROPS_PER_IMAGE = 8  # 16 pairs: enough to rank a few sampler settings, cheap to score
HELD_OUT_CROPS_PER_IMAGE = 8  # 6 photos × 8 = 48 held-out pairs
PRETRAINED = "tiny-small-handheld"  # the packaged pipeline the demo fine-tunes (deblurdiff.pretrained)
DEFAULT_MAX_STEPS = 300  # fine-tuning steps: a few minutes on 2 idle cores (README, RESULTS.md)
FINETUNE_LR = 2e-4  # a fifth of tiny.yaml's from-scratch 1e-3: refine the packaged weights, not retrain them
FROM_SCRATCH_MAX_STEPS = 500  # --from-scratch: what fits the 15-minute budget on 2 idle cores
# Sampler settings tried on the validation pairs; the best PSNR is recorded with the model.
SAMPLING_CANDIDATES = (
    {"sampler": "dpmpp", "steps": 1, "strength": 0.0},  # the LKPN's ẑ decoded, no denoising step
    {"sampler": "dpmpp", "steps": 20, "strength": 0.05},  # from ẑ noised to t = 50: one step
    {"sampler": "dpmpp", "steps": 10, "strength": 0.1},  # from ẑ noised to t = 100: one step
    {"sampler": "dpmpp", "steps": 10, "strength": 0.3},  # from ẑ noised to t = 300 (img2img): three steps
    {"sampler": "dpmpp", "steps": 10, "strength": 1.0},  # from pure noise, as the paper samples
)
STAGES = ("synthesise", "evaluate_packaged", "train", "choose_sampling", "evaluate", "before_after",
          "deblur_clock_motion", "serve_one_request")


def _training_config(output: Path, photos: Path, validation: Path, max_steps: int, workers: int,
                     init_from: Path | None):
    """The demo's training run: the packaged ``configs/tiny.yaml`` with the demo's overrides on top, on
    fresh pairs from ``photos`` every pass, fine-tuning ``init_from`` at ``FINETUNE_LR`` (None: the
    preset from scratch, tiny.yaml's lr)."""
    from deblurdiff.config import load_config
    from deblurdiff.training import TrainConfig
    from deblurdiff.training.config import packaged_config

    overrides = [f"run.output_dir={output / 'run'}", "run.name=demo", "run.log_every=25", "data.shards=null",
                 f"data.images={photos}", f"data.recipe={RECIPE}", f"data.crops_per_image={TRAIN_CROPS_PER_IMAGE}",
                 "data.cache=false", f"data.validation_shards={validation}", f"data.crop={CROP}",
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


def _labelled_row(panels: list[tuple[str, np.ndarray]], path: Path, scale: int = 1) -> None:
    """Images side by side (each scaled ``scale``× with nearest neighbour, so pixels stay pixels), a
    caption above each."""
    from PIL import Image, ImageDraw

    gap, caption = 8, 18
    tiles = [Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
             for _, img in panels]
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), caption + tiles[0].height),
                       (255, 255, 255))
    draw, x = ImageDraw.Draw(canvas), 0
    for (label, _), tile in zip(panels, tiles):
        draw.text((x + 4, 3), label, fill=(0, 0, 0))
        canvas.paste(tile, (x, caption))
        x += tile.width + gap
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

    from deblurdiff._ray import connect
    from deblurdiff.evaluation import evaluate, score_sampling
    from deblurdiff.model_dir import load_pipeline
    from deblurdiff.pretrained import packaged_model
    from deblurdiff.training import launch

    output = Path(output).expanduser().resolve()
    if (output / "report.json").exists() or (output / "run").exists():
        raise UsageError(f"--output {output}: holds an earlier demo; choose an empty directory")
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 0. a local Ray instance for every stage (no cluster needed)
    connect("local", dashboard=True)  # the state API Ray Train's PlacementGroupCleaner polls (launcher.py)

    # 1. pairs for validation and the held-out score (Ray Data synth); the fine-tuning photos, blurred on the fly
    with _timed(timings, "synthesise"):
        pairs, synth = _synthesise(output)

    # 2. the packaged model as shipped (what `--model tiny-small-handheld` gives a user without training),
    #    on the validation pairs (every sampler candidate) and the held-out pairs (its recorded sampler)
    init_from = None if from_scratch else packaged_model(PRETRAINED)
    max_steps = max_steps or (FROM_SCRATCH_MAX_STEPS if from_scratch else DEFAULT_MAX_STEPS)
    shipped = None
    if init_from is not None:
        with _timed(timings, "evaluate_packaged"):
            shipped_pipe = load_pipeline(init_from)
            shipped = {"validation": score_sampling(shipped_pipe, pairs / "validation", list(candidates)),
                       "held_out": evaluate(shipped_pipe, pairs / "held_out", output / "eval_packaged" / "summary.json",
                                            seed=0, progress=False)}

    # 3. fine-tune it (Ray Train + DeepSpeed, 2 workers) on fresh pairs, and export
    with _timed(timings, "train"):
        cfg = _training_config(output, output / "photos" / "train", pairs / "validation", max_steps, workers,
                               init_from)
        train_summary = launch(cfg)

    # 4. sampler settings and the model to keep, both chosen on the validation pairs
    with _timed(timings, "choose_sampling"):
        model_dir, sampling, validation, kept = _choose_model(Path(train_summary["model_dir"]), init_from, shipped,
                                                              pairs / "validation", output, candidates)
        pipe = load_pipeline(model_dir)  # as a user loads it: the recorded settings are its defaults
        assert pipe.default_sampling() == sampling

    # 5. the held-out score with those settings, beside the with-the-answer bound, per photo too
    with _timed(timings, "evaluate"):
        evaluation = evaluate(pipe, pairs / "held_out", output / "eval" / "summary.json", seed=0, progress=False)
        bound = _oracle_bound(pairs / "held_out")
        per_photo = _per_photo(Path(evaluation["per_image_csv"]), bound["per_pair"])

    # 6. pictures: a held-out photo with the demo's blur; the real motion-blurred photo, labelled as such
    with _timed(timings, "before_after"):
        _before_after(pipe, output / "before_after.png")
    with _timed(timings, "deblur_clock_motion"):
        clock_rgb = _real_blur_example(pipe, output)

    # 7. serve: start the app, one request without parameters (the recorded settings), stop it
    with _timed(timings, "serve_one_request"):
        serve_result = _serve_one_request(model_dir, clock_rgb, port)

    # 8. report
    report = _report(evaluation, bound, per_photo, synth, cfg, train_summary, init_from, shipped, kept, sampling,
                     validation, serve_result, {**timings, "total": round(time.perf_counter() - started, 2)},
                     model_dir, output)
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    ray.shutdown()  # the local instance started in step 0
    _print_summary(report, output)
    return report


def _synthesise(output: Path) -> tuple[Path, dict]:
    """Validation and held-out pairs (shards, Ray Data), each from its own photos; the fine-tuning photos
    copied to ``output/photos/train`` for on-the-fly synthesis. Returns (pairs dir, synth results)."""
    from deblurdiff.pipelines.synth import run_synth

    pairs = output / "pairs"
    synth = {name: run_synth(_photo_paths(photos), str(pairs / name), recipe=RECIPE, crop=CROP,
                             crops_per_image=crops, seed=seed, shard_size=64)
             for name, photos, crops, seed in (("validation", VALIDATION_PHOTOS, VALIDATION_CROPS_PER_IMAGE, 2),
                                               ("held_out", HELD_OUT_PHOTOS, HELD_OUT_CROPS_PER_IMAGE, 1))}
    train = output / "photos" / "train"
    train.mkdir(parents=True, exist_ok=True)
    for path in _photo_paths(TRAIN_PHOTOS):
        shutil.copy(path, train)
    return pairs, synth


def _choose_model(trained: Path, packaged: Path | None, shipped: dict | None, validation_pairs: Path, output: Path,
                  candidates) -> tuple[Path, dict, list[dict], str]:
    """Score the trained model's sampler candidates on the validation pairs and pick its settings; keep the
    packaged model instead (copied to ``output/model-packaged``) only if its best validation PSNR is
    higher by more than the tie margin. Records the settings in the kept model's directory.
    Returns (kept model dir, settings, the kept model's validation rows, "fine-tuned" | "packaged")."""
    from deblurdiff.evaluation import TIE_DB, choose_sampling, score_sampling
    from deblurdiff.model_dir import load_pipeline, record_sampling

    rows = score_sampling(load_pipeline(trained), validation_pairs, list(candidates))
    kept, model_dir = "fine-tuned", trained
    if shipped is not None and max(r["psnr_restored"] for r in shipped["validation"]) \
            > max(r["psnr_restored"] for r in rows) + TIE_DB:
        kept, model_dir, rows = "packaged", output / "model-packaged", shipped["validation"]
        shutil.copytree(packaged, model_dir)
    sampling = record_sampling(model_dir, choose_sampling(rows), validated_on={
        "data": str(validation_pairs), "photos": list(VALIDATION_PHOTOS), "recipe": RECIPE, "crop": CROP,
        "candidates": rows})
    return model_dir, sampling, rows, kept


def _oracle_bound(held_out: Path) -> dict:
    """Per held-out pair, the PSNR of the best 5×5 linear filter fitted *with the sharp answer*; the mean."""
    from deblurdiff.evaluation import Pair, _to_tensor, iter_pairs, oracle_linear_filter, psnr

    rows = {}
    for pair in (p for p in iter_pairs(held_out) if isinstance(p, Pair)):
        sharp, blurry = _to_tensor(pair.sharp), _to_tensor(pair.blurry)  # as eval scores them
        rows[pair.key] = psnr(oracle_linear_filter(sharp, blurry, 5), sharp)
    return {"psnr_oracle_5x5": float(np.mean(list(rows.values()))), "per_pair": rows}


def _per_photo(per_image_csv: Path, oracle: dict[str, float]) -> dict[str, dict]:
    """Held-out scores per source photo (the pair key ends with the photo's stem): blurry, restored, bound."""
    groups: dict[str, list[dict]] = {}
    with open(per_image_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            groups.setdefault(row["key"].split("_", 1)[1], []).append(row)
    return {photo: {"pairs": len(rows),
                    **{k: round(float(np.mean([float(r[k]) for r in rows])), 3) for k in ("psnr_blurry", "psnr_restored")},
                    "psnr_oracle_5x5": round(float(np.mean([oracle[r["key"]] for r in rows])), 3)}
            for photo, rows in sorted(groups.items())}


def _before_after(pipe, path: Path) -> None:
    """A held-out photo's crop blurred with the demo's recipe | restored | sharp, each shown 2× so a reader
    sees the pixels."""
    import torch

    from deblurdiff.blur_synthesis import synthesize
    from deblurdiff.evaluation import _to_tensor
    from deblurdiff.imageio import read_rgb

    name, top, left, size, seed = BEFORE_AFTER
    sharp_u8 = np.ascontiguousarray(read_rgb(_photo_paths((name,))[0])[top:top + size, left:left + size])
    sharp = _to_tensor(sharp_u8)  # (1, 3, H, W) in [0, 1], as eval reads pairs
    blurry_u8 = to_uint8(synthesize(sharp, recipe=RECIPE, seeds=[seed]).blurry[0].permute(1, 2, 0)).numpy()
    restored = pipe(blurry_u8, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    _labelled_row([(f"blurry ({RECIPE}, seed {seed})", blurry_u8), ("restored", to_uint8(restored)),
                   (f"sharp ({name}, held out)", sharp_u8)], path, scale=2)


def _real_blur_example(pipe, output: Path) -> np.ndarray:
    """clock_motion.png (real ~30 px motion blur, beyond the tiny 5×5 kernels) before | after."""
    import torch

    from deblurdiff.imageio import encode_image, read_rgb

    clock_rgb = read_rgb(_photo_paths((BLURRED_PHOTO,))[0])  # (300, 400, 3) uint8, grey as RGB
    restored = to_uint8(pipe(clock_rgb, generator=torch.Generator().manual_seed(0), output_type="np").images[0])
    (output / "clock_motion_restored.png").write_bytes(encode_image(restored, "png"))
    _labelled_row([("real motion blur (~30 px: beyond the tiny model's reach)", clock_rgb), ("restored", restored)],
                  output / "real_blur_clock_motion.png")
    return clock_rgb


def _serve_one_request(model_dir: Path, image: np.ndarray, port: int) -> dict:
    from deblurdiff._ray import free_port
    from deblurdiff.imageio import decode_rgb, encode_image
    from deblurdiff.serving.local import ServeRunner

    # Ray is already up (run_demo step 0), so the runner deploys onto it and stop() shuts Serve down.
    runner = ServeRunner({"model": str(model_dir), "min_replicas": 1, "max_replicas": 1},
                         host="127.0.0.1", port=port or free_port())
    url = runner.start()
    try:
        status, headers, body = _post_image(url + "v1/deblur?format=png&seed=0", encode_image(image, "png"))
        served = decode_rgb(body)
    finally:
        runner.stop()
    return {"status": status, "size": [served.shape[1], served.shape[0]], "same_size_as_input": served.shape == image.shape,
            "sampling": {"sampler": headers.get("x-deblur-sampler"), "steps": int(headers.get("x-deblur-steps", 0)),
                         "strength": float(headers.get("x-deblur-strength", "nan"))}}


def _report(evaluation, bound, per_photo, synth, cfg, train_summary, init_from, shipped, kept, sampling, validation,
            serve_result, timings, model_dir, output) -> dict:
    gain, reachable = (evaluation["psnr_restored"] - evaluation["psnr_blurry"],
                       bound["psnr_oracle_5x5"] - evaluation["psnr_blurry"])
    return {
        "recipe": RECIPE,  # a built-in recipe: deblurdiff/blur_synthesis/recipes/small-handheld.yaml
        "crop": CROP,
        "held_out_pairs": evaluation["pairs"],
        "held_out_photos": list(HELD_OUT_PHOTOS),
        "validation_photos": list(VALIDATION_PHOTOS),
        "train_photos": list(TRAIN_PHOTOS),  # the demo's fine-tuning photos (the packaged model's: its provenance)
        "psnr_blurry": evaluation["psnr_blurry"],
        "psnr_restored": evaluation["psnr_restored"],
        "ssim_blurry": evaluation["ssim_blurry"],
        "ssim_restored": evaluation["ssim_restored"],
        # Per pair, the best 5×5 linear filter fitted WITH the sharp answer: a bound, not reachable blind.
        "psnr_oracle_5x5": bound["psnr_oracle_5x5"],
        "gain_share_of_bound": gain / reachable if reachable > 0 else None,
        "per_photo": per_photo,
        "restored_beats_blurry": bool(gain >= 1.0 and evaluation["ssim_restored"] > evaluation["ssim_blurry"]),
        "blurry_latent_mse": evaluation["blurry_latent_mse"],
        # ẑ exactly as the user's call produces it (the real sampling run, averaged over its steps).
        "lkpn_latent_mse": evaluation["lkpn_latent_mse"],
        # Training diagnostic only (x_t noised from the SHARP z_0 at fixed timesteps): not proof of deblurring.
        "train_objective_latent_mse": evaluation["train_objective_latent_mse"],
        "lkpn_learned": evaluation["lkpn_latent_mse"] < evaluation["blurry_latent_mse"],
        "train": {"init_from": PRETRAINED if init_from is not None else None, "final_step": train_summary["final_step"],
                  "lr": cfg.train.lr, "workers": cfg.scaling.workers, "last_metrics": train_summary["last_metrics"]},
        "model_kept": kept,  # "fine-tuned", or "packaged" when it scored higher on the validation pairs
        # The packaged model before fine-tuning, on the same held-out pairs with its own recorded sampler.
        "packaged_model": None if shipped is None else {
            "name": PRETRAINED, **{k: shipped["held_out"][k] for k in ("sampler", "steps", "strength", "psnr_restored",
                                                                     "ssim_restored", "lkpn_latent_mse")},
            "validation": shipped["validation"]},
        "sampling": sampling,  # recorded in the kept model's directory; deblur / eval / serve defaults
        "sampling_validation": validation,
        "serve": serve_result,
        "timings_s": timings,
        "skipped_inputs": {**{name: result.skipped for name, result in synth.items()},
                           "eval": len(evaluation["skipped"])},
        "outputs": {"model": str(model_dir), "eval": str(output / "eval" / "summary.json"),
                    "before_after": str(output / "before_after.png"),
                    "real_blur_clock_motion": str(output / "real_blur_clock_motion.png"),
                    "clock_motion_restored": str(output / "clock_motion_restored.png")},
    }


def _print_summary(report: dict, output: Path) -> None:
    t = report["timings_s"]
    verdict = "beats" if report["lkpn_latent_mse"] < report["blurry_latent_mse"] else "does NOT beat"
    s, shipped, trained = report["sampling"], report["packaged_model"], report["train"]
    origin = (f"fine-tuned {trained['init_from']} for {trained['final_step']} steps" if trained["init_from"]
              else f"trained from scratch for {trained['final_step']} steps")
    if report["model_kept"] == "packaged":
        origin += f"; kept {PRETRAINED} as shipped (higher on the validation pairs)"
    gain, share = report["psnr_restored"] - report["psnr_blurry"], report["gain_share_of_bound"]
    print("\n".join([
        "",
        f"deblurdiff demo: done in {t['total'] / 60:.1f} min -> {output}",
        f"  blur                  recipe {report['recipe']}, {report['crop']} px crops",
        f"  model                 {origin}",
        f"  held-out pairs        {report['held_out_pairs']} from {len(report['held_out_photos'])} photos "
        f"({', '.join(report['held_out_photos'])}; never trained or tuned on)",
        f"  sampler (validated)   {s['sampler']}, {s['steps']} steps, strength {s['strength']:g} "
        f"(recorded in the model directory)",
        f"  PSNR blurry/restored  {report['psnr_blurry']:.2f} dB -> {report['psnr_restored']:.2f} dB ({gain:+.2f} dB)"
        + (f"; as packaged, before fine-tuning: {shipped['psnr_restored']:.2f} dB" if shipped else ""),
        f"  with-the-answer bound {report['psnr_oracle_5x5']:.2f} dB (best 5x5 linear filter per pair, fitted to the "
        f"sharp crop)" + (f": the model took {100 * share:.0f} % of that gain" if share is not None else ""),
        f"  SSIM blurry/restored  {report['ssim_blurry']:.3f} -> {report['ssim_restored']:.3f}",
        f"  target                PSNR +1.0 dB and a higher SSIM: "
        f"{'met' if report['restored_beats_blurry'] else 'NOT met'}",
        f"  latent MSE (sampling) z_b {report['blurry_latent_mse']:.5f} -> ẑ {report['lkpn_latent_mse']:.5f} "
        f"(ẑ {verdict} the blurry latent)",
        f"  serve                 HTTP {report['serve']['status']}, output {report['serve']['size'][0]}x"
        f"{report['serve']['size'][1]}",
        f"  timings (s)           " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()),
        f"  see                   {output / 'report.json'}, {output / 'before_after.png'}, "
        f"{output / 'real_blur_clock_motion.png'}",
    ]), flush=True)
