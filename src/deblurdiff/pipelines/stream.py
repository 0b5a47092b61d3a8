"""The training source: a ``ray.data.Dataset`` of (sharp, blurry) pairs for Ray Train.

Two ways to feed training (config keys ``data.shards`` / ``data.images``)::

    ds = training_dataset(shards="pairs/")                    # WebDataset shards from `deblurdiff synth`
    ds = training_dataset(images="photos/", crop=256)         # synthesise on the fly, same recipe code
    trainer = TorchTrainer(..., datasets={"train": ds})
    # in the worker:
    for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8):
        sharp, blurry = batch["sharp"], batch["blurry"]       # float32 (B, 3, H, W) in [0, 1]

On the fly, the pipeline is: read raw bytes + decode + crop (Ray Data tasks) -> blur
(``map_batches`` on an actor pool) -> rows. The stream holds ``passes`` passes over the photos, each
drawing NEW crops and NEW blur: pass ``p`` cuts crops ``p·N … p·N + N − 1`` of every source (N =
``crops_per_image``), each seeded by (seed, source, that crop index) exactly as ``synth`` seeds its
crops, so pass 0 gives the pairs ``synth --crops-per-image N`` writes for the same seed, recipe and
crop (blurry quantised to 8 bits like a PNG), and a few photographs give an unbounded stream of
distinct pairs. Each pass visits the sources in its own seeded order. Inputs that cannot be decoded
are skipped and logged with their reason (a warning per input).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np

from deblurdiff.errors import UsageError
from deblurdiff.imageio import ImageDecodeError, decode_rgb
from deblurdiff.pipelines._pool import size_pool
from deblurdiff.pipelines.plan import crop_box, sample_seed
from deblurdiff.pipelines.sources import Source, list_sources, read_source, resolve_filesystem
from deblurdiff.pipelines.shard_format import BLUR, SHARP
from deblurdiff.pipelines.stages import decode_crops, synthesize_crops
from deblurdiff.pixels import to_float

__all__ = ["training_dataset", "BATCH_KEYS"]

logger = logging.getLogger(__name__)

BATCH_KEYS = ("sharp", "blurry")  # float32 (3, H, W) per row; (B, 3, H, W) per torch batch


def training_dataset(*, shards=None, images=None, crop: int | None = None, recipe="realistic", seed: int = 0,
                     crops_per_image: int = 1, passes: int = 1, min_pairs: int | None = None,
                     crop_scale: tuple[float, float] = (1.0, 1.0), filesystem=None, num_cpus: float = 0.5,
                     synth_workers: int | None = None, synth_cpus: float | None = None,
                     use_gpu: bool = False):
    """A ``ray.data.Dataset`` whose rows are ``{"sharp", "blurry"}``, float32 (3, H, W) in [0, 1].

    Give exactly one of

    - ``shards``: a folder of WebDataset shards (``shard-*.tar``), a ``.tar`` path, or a list of them
      (local or URI) -- pairs as written by ``deblurdiff synth``; ``crop`` (optional) cuts a random,
      seeded ``crop``×``crop`` window from larger pairs;
    - ``images``: folders / images / list files / WebDataset image shards as for ``synth``; each
      of ``passes`` passes gives ``crops_per_image`` new random ``crop``×``crop`` crops of every
      source (``crop`` required), blurred with ``recipe`` and ``seed`` on the fly; ``min_pairs``: at
      least that many pairs in all (more passes when needed: a training run's steps × batch size);
      ``crop_scale`` (lo, hi): each crop sees its photo at a random scale in [lo, hi] (a ``crop / s`` px
      window resized to ``crop``; ``stages.decode_crops``), so a corpus of large photos also teaches
      what smaller ones look like at the pixel level.

    Resources (so the data stages fit beside the training workers): ``num_cpus`` per read/decode
    task; ``synth_workers`` actors of ``synth_cpus`` CPUs each for on-the-fly blur (default: from
    the cluster, leaving one CPU to the readers); ``use_gpu=True`` puts the blur on GPU actors
    (off by default: the trainer needs the GPUs). Needs a connected Ray. Iterate with
    ``iter_torch_batches(batch_size=B)`` -> ``{"sharp", "blurry"}`` tensors (B, 3, H, W).
    """
    if (shards is None) == (images is None):
        raise UsageError("data: set exactly one of data.shards (WebDataset pairs) or data.images (image folders)")
    lo, hi = crop_scale
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"data.crop_scale: expected [lo, hi] with 0 < lo <= hi <= 1, got [{lo}, {hi}]")
    if shards is not None:
        if (lo, hi) != (1.0, 1.0):
            raise UsageError("data.crop_scale applies to data.images (crops cut on the fly); shards hold "
                             "crops already cut")
        return _from_shards(_as_list(shards), crop=crop, seed=seed, filesystem=filesystem, num_cpus=num_cpus)
    if crop is None:
        raise UsageError("data.images: a crop size is needed for on-the-fly synthesis (set data.crop)")
    if passes < 1 or crops_per_image < 1:
        raise UsageError(f"data.images: passes and crops per image must be >= 1, got {passes} and {crops_per_image}")
    return _from_images(_as_list(images), crop=crop, recipe=recipe, seed=seed, crops_per_image=crops_per_image,
                        crop_scale=(float(lo), float(hi)), passes=passes, min_pairs=min_pairs, filesystem=filesystem,
                        num_cpus=num_cpus, synth_workers=synth_workers, synth_cpus=synth_cpus, use_gpu=use_gpu)


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


# ----------------------------------------------------------------------------- data.shards
def list_shards(paths: list[str], filesystem=None) -> tuple[list[str], object]:
    """The ``.tar`` files under ``paths`` (folders are listed recursively), sorted; and their filesystem."""
    import pyarrow.fs as pafs

    tars, fs_out = [], None
    for uri in paths:
        fs, path = resolve_filesystem(uri, filesystem)
        fs_out = fs_out or fs
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UsageError(f"data.shards {uri}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            found = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File and i.path.endswith(".tar")]
            if not found:
                raise UsageError(f"data.shards {uri}: no .tar shards in this folder")
            tars.extend(sorted(found))
        else:
            tars.append(path)
    return tars, fs_out


def _from_shards(paths: list[str], *, crop, seed, filesystem, num_cpus):
    import ray.data

    from deblurdiff.pipelines._pair_shards import PairShards

    tars, fs = list_shards(paths, filesystem)
    # Raw PNG bytes through the project's one shard reader (the members eval and synth --resume read).
    ds = ray.data.read_datasource(PairShards(tars, filesystem=fs), num_cpus=num_cpus)
    return ds.map_batches(_DecodePairs, fn_constructor_kwargs={"crop": crop, "seed": seed}, batch_size=16,
                          batch_format="numpy", num_cpus=num_cpus)


class _DecodePairs:
    """WebDataset rows (PNG bytes) -> float pairs, optionally cropped to ``crop`` at a seeded spot.
    A pair whose PNGs do not decode is skipped with a warning naming its key."""

    def __init__(self, crop: int | None, seed: int):
        self.crop, self.seed = crop, seed

    def __call__(self, batch: dict) -> dict:
        sharp, blurry = [], []
        for key, s_png, b_png in zip(batch["__key__"], batch[SHARP], batch[BLUR]):
            try:
                s, b = decode_rgb(bytes(s_png)), decode_rgb(bytes(b_png))  # (H, W, 3) uint8
            except ImageDecodeError as exc:
                logger.warning("data.shards: skipping sample %s: %s", key, exc)
                continue
            if self.crop is not None:
                h, w = s.shape[:2]
                if h < self.crop or w < self.crop:
                    raise ValueError(f"data.crop {self.crop} is larger than sample {key} ({w}x{h}); "
                                     f"lower data.crop or re-run synth with a larger --crop")
                top, left = crop_box(self.seed, str(key), 0, h, w, self.crop)
                s = s[top : top + self.crop, left : left + self.crop]
                b = b[top : top + self.crop, left : left + self.crop]
            sharp.append(s)
            blurry.append(b)
        if not sharp:  # every pair of the batch skipped: an empty batch of the same layout
            empty = np.zeros((0, 3, self.crop or 0, self.crop or 0), np.float32)
            return {"sharp": empty, "blurry": empty.copy()}
        return {"sharp": _chw_float(sharp), "blurry": _chw_float(blurry)}


def _chw_float(images) -> np.ndarray:
    """(n, H, W, 3) uint8 (array or list) -> (n, 3, H, W) float32 in [0, 1]."""
    return to_float(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------- data.images
def _from_images(paths, *, crop, recipe, seed, crops_per_image, crop_scale, passes, min_pairs, filesystem,
                 num_cpus, synth_workers, synth_cpus, use_gpu):
    import ray.data

    from deblurdiff.blur_synthesis import load_recipe

    recipe = load_recipe(recipe)
    corpus = list_sources(paths, filesystem)
    for s in corpus.skipped:
        logger.warning("data.images: skipping %s: %s", s.path, s.reason)
    if not corpus.sources:
        raise UsageError(f"data.images {' '.join(paths)}: no image files found")
    if min_pairs:
        passes = max(passes, math.ceil(min_pairs / (len(corpus.sources) * crops_per_image)))
    logger.info("data.images: %d photos, %d passes of %d crops each (%d pairs, every one drawn afresh)%s",
                len(corpus.sources), passes, crops_per_image, passes * len(corpus.sources) * crops_per_image,
                "" if crop_scale == (1.0, 1.0) else " at scales %g–%g" % crop_scale)
    ds = ray.data.from_items(pass_rows(corpus.sources, seed, passes))
    ds = ds.map_batches(_decode_crop_batch, fn_kwargs={"filesystems": corpus.filesystems, "crop": crop, "seed": seed,
                                                       "crops_per_image": crops_per_image, "crop_scale": crop_scale},
                        batch_size=4, batch_format="numpy", num_cpus=num_cpus)
    # Leave the readers their CPUs (a pool that takes them all starves the reads and hangs).
    pool = size_pool(synth_workers, reserve_cpus=max(num_cpus, 1.0), use_gpu=use_gpu)
    remote = pool.remote_args()
    if synth_cpus is not None:
        remote["num_cpus"] = synth_cpus
    return ds.map_batches(_SynthesizeBatch, fn_constructor_kwargs={"recipe": recipe, "device": pool.device,
                                                                   "threads": pool.threads},
                          batch_size=8, batch_format="numpy", compute=pool.strategy(autoscale=True), **remote)


def pass_rows(sources: list[Source], seed: int, passes: int) -> list[dict]:
    """One row per (pass, source), pass after pass; each pass visits the sources in an order of its own,
    drawn from (seed, pass), so consecutive pairs come from different photos."""
    rows = []
    for p in range(passes):
        order = np.random.default_rng(sample_seed(seed, "", p, "pass-order")).permutation(len(sources))
        rows += [{"source": json.dumps(sources[i].to_dict()), "pass": p} for i in order]
    return rows


def _decode_crop_batch(batch: dict, *, filesystems, crop: int, seed: int, crops_per_image: int,
                       crop_scale: tuple[float, float]):
    """(source JSON, pass) rows -> sharp crops (n, c, c, 3) uint8 with their blur seeds; bad inputs logged,
    dropped. Pass p cuts crop indices [p·N, (p+1)·N): new positions and new blur every pass."""
    sharp, seeds = [], []
    for text, pass_index in zip(batch["source"], batch["pass"]):
        source = Source.from_dict(json.loads(str(text)))
        first = int(pass_index) * crops_per_image
        try:
            crops = decode_crops(read_source(source, filesystems), source.key,
                                 list(range(first, first + crops_per_image)), crop, seed, crop_scale)
        except ImageDecodeError as exc:
            if int(pass_index) == 0:  # once per input, not once per pass
                logger.warning("data.images: skipping %s: %s", source.uri, exc)
            continue
        for c in crops:
            sharp.append(c.pixels)
            seeds.append(sample_seed(seed, source.key, c.crop_index, "blur"))
    if sharp:  # a generator: a batch whose inputs were all skipped yields nothing (no empty tensors)
        yield {"sharp_u8": np.stack(sharp), "seed": np.array(seeds, dtype=np.int64)}


class _SynthesizeBatch:
    """Actor: sharp uint8 crops -> float pairs, blurred with the recipe (stages.synthesize_crops)."""

    def __init__(self, recipe, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.recipe, self.device = recipe, device

    def __call__(self, batch: dict) -> dict:
        sharp_u8 = batch["sharp_u8"]  # (n, c, c, 3) uint8
        if len(sharp_u8) == 0:
            empty = np.zeros((0, 3, *sharp_u8.shape[1:3]), np.float32)
            return {"sharp": empty, "blurry": empty}
        blurry_u8, _, _ = synthesize_crops(sharp_u8, [int(s) for s in batch["seed"]], self.recipe, self.device)
        return {"sharp": _chw_float(sharp_u8), "blurry": _chw_float(blurry_u8)}

