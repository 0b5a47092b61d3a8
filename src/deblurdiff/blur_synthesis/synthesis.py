"""``synthesize(sharp, recipe, seeds)``: sharp images -> realistic blurry ones, seeded and recorded.

Two steps per sample, kept apart (kornia style):

1. ``sample_params(recipe, seed)`` draws every random value from a CPU ``torch.Generator`` seeded by
   the sample's seed and returns a JSON-able dict (the ``meta.json`` record; typed inside as
   ``params.SampleParams``). ``build_kernels`` and
   ``region_masks`` turn it into tensors deterministically; the sensor-noise field comes from its own
   CPU generator seeded by a drawn ``noise_seed``.
2. ``degrade(sharp, params, kernels)`` applies the stages in recipe order on the image's device.

On CPU each sample runs on its own (a (1, 3, H, W) slice), so a sample's result does not depend on the
batch it sits in or its position there, bit for bit, for a given thread count. On a GPU (``batched``)
samples that share their on/off choices (``signature``) run as one batch: same draws and kernels, pixels
equal to the one-at-a-time ones to float rounding (so they may move by rounding with the batch's other
samples; ``synth`` fixes its batches by the plan, so its shards stay byte-identical on one GPU type).
Across devices the draws and kernels are identical and results agree to float rounding (before the
8-bit JPEG step).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from deblurdiff.blur_synthesis import formation as fm
from deblurdiff.blur_synthesis.conv import fft_blur, region_masks
from deblurdiff.blur_synthesis.kernels import bernoulli, build_psf, choice, log_uniform, pad_to, randint, related_psf, sample_psf, uniform
from deblurdiff.blur_synthesis.params import (
    BayerParams,
    BlurParams,
    JpegParams,
    LinearLightParams,
    MaskParams,
    NoiseParams,
    SampleParams,
    SaturationParams,
)
from deblurdiff.blur_synthesis.recipe import Recipe, load_recipe
from deblurdiff.pixels import to_float, to_uint8

__all__ = ["SynthesisResult", "synthesize", "sample_params", "build_kernels", "build_masks", "noise_field", "degrade", "signature"]


@dataclass
class SynthesisResult:
    """What ``synthesize`` returns.

    blurry:  (B, 3, H, W) in [0, 1], same dtype and device as ``sharp`` (uint8 sharp: uint8 levels).
    kernels: per sample, an (n_psf, K, K) float32 CPU tensor of the PSF(s) applied (n_psf > 1 for
             spatially varying blur; zero-padded, centred, to the sample's largest PSF).
             ``kernels_to_array(result.kernels[i])`` gives the ``kernel.npy`` array.
    params:  per sample, a JSON-able dict of every drawn value (and the recipe name, hash, seed).
    """

    blurry: torch.Tensor
    kernels: list[torch.Tensor]
    params: list[dict]
    recipe: Recipe = field(repr=False)


# ----------------------------------------------------------------------------- 1. sampling
_STAGES = ("linear_light", "saturation", "blur", "bayer", "noise", "jpeg")


def sample_params(recipe: Recipe, seed: int) -> dict:
    """Every random value for one sample, as its JSON-able record (``draw_params(...).to_dict()``)."""
    return draw_params(recipe, seed).to_dict()


def draw_params(recipe: Recipe, seed: int) -> SampleParams:
    """Every random value for one sample. ``Generator().manual_seed(seed)`` (CPU) first draws one
    seed per stage; each stage then draws from its own generator, so what one stage draws (how many
    regions, which PSF family) never shifts the draws of another, and every draw is reproducible on any
    device or worker."""
    root = torch.Generator().manual_seed(int(seed))
    stage_seeds = torch.randint(0, 2**62, (len(_STAGES),), generator=root).tolist()
    gen = {name: torch.Generator().manual_seed(s) for name, s in zip(_STAGES, stage_seeds)}
    r = recipe

    g, ll = gen["linear_light"], r.linear_light
    linear_light = LinearLightParams(
        applied=bernoulli(g, ll.prob),
        curve=choice(g, ll.curves.model_dump()) if sum(ll.curves.model_dump().values()) > 0 else "srgb",
        gamma=uniform(g, *ll.gamma_range),
    )

    g, sat = gen["saturation"], r.saturation
    saturation = SaturationParams(applied=bernoulli(g, sat.prob), threshold=uniform(g, *sat.threshold),
                                  gain=log_uniform(g, *sat.gain))

    g, sv = gen["blur"], r.blur.spatially_varying
    varying = bernoulli(g, sv.prob)
    n_regions = randint(g, *sv.regions) if varying else 1
    psfs = [sample_psf(g, r.blur) for _ in range(n_regions)]
    shared = bernoulli(g, sv.shared_shake) and varying and psfs[0]["family"] == "trajectory"
    if shared:  # the same hand motion seen through a rotating camera: turned and scaled per region
        max_size = 2 * ((int(r.blur.trajectory.size[1]) - 1) // 2) + 1  # largest odd size allowed
        psfs = [psfs[0]] + [related_psf(g, psfs[0], sv.rotation, sv.scale, max_size) for _ in range(n_regions - 1)]
    masks = None
    if varying:
        centres = torch.rand(n_regions, 2, generator=g, dtype=torch.float64).tolist()
        masks = MaskParams(centres=centres, softness=uniform(g, *sv.softness))
    blur = BlurParams(psfs=psfs, border=r.blur.border, masks=masks)

    g = gen["bayer"]
    bayer = BayerParams(applied=bernoulli(g, r.bayer.prob), cfa=fm.CFA_PATTERNS[randint(g, 0, 3)])

    g, nz = gen["noise"], r.noise
    applied = bernoulli(g, nz.prob)
    shot = log_uniform(g, *nz.shot)
    if nz.read == "brooks2019":  # Brooks et al. 2019, "Unprocessing images", read variance from shot
        read = math.sqrt(math.exp(2.18 * math.log(max(shot, 1e-12)) + 1.20 + 0.26 * float(torch.randn((), generator=g, dtype=torch.float64))))
    else:
        read = log_uniform(g, *nz.read)
    noise = NoiseParams(applied=applied, shot=shot, read=read, noise_seed=int(torch.randint(0, 2**62, (), generator=g)))

    g = gen["jpeg"]
    jp = JpegParams(applied=bernoulli(g, r.jpeg.prob), quality=randint(g, *r.jpeg.quality))

    return SampleParams(recipe=r.name, recipe_hash=r.hash, seed=int(seed), linear_light=linear_light,
                        saturation=saturation, blur=blur, bayer=bayer, noise=noise, jpeg=jp)


def build_kernels(params: SampleParams | dict) -> torch.Tensor:
    """(n_psf, K, K) float32 CPU: the sample's PSFs, zero-padded (centred) to the largest."""
    psfs = [build_psf(spec) for spec in SampleParams.coerce(params).blur.psfs]
    size = max(p.shape[-1] for p in psfs)
    return torch.stack([pad_to(p, size) for p in psfs])


def build_masks(params: SampleParams | dict, height: int, width: int,
                device: torch.device | str = "cpu") -> torch.Tensor | None:
    """(1, n, H, W) region masks of a spatially varying sample, or None for uniform blur."""
    spec = SampleParams.coerce(params).blur.masks
    if spec is None:
        return None
    centres = torch.tensor(spec.centres, dtype=torch.float32, device=device)[None]  # (1, n, 2)
    return region_masks(centres, torch.tensor([spec.softness], device=device), height, width)


def noise_field(params: SampleParams | dict, height: int, width: int) -> torch.Tensor | None:
    """The sample's standard-normal noise field, (C, H, W) float32 on CPU (C = 1 on a Bayer raw, else 3),
    from its own generator seeded by ``params.noise.noise_seed``; None when noise is off."""
    p = SampleParams.coerce(params)
    if not p.noise.applied:
        return None
    channels = 1 if p.bayer.applied else 3
    return torch.randn(channels, height, width, generator=torch.Generator().manual_seed(p.noise.noise_seed))


# ----------------------------------------------------------------------------- 2. applying
def signature(params: SampleParams | dict, kernels: torch.Tensor) -> tuple:
    """A sample's on/off choices (which stages run, which curve, CFA, how many PSFs): samples with equal
    signatures differ only in per-sample numbers, so ``degrade`` can run them as one batch."""
    p = SampleParams.coerce(params)
    ll = p.linear_light
    return (ll.applied and ll.curve, p.saturation.applied, int(kernels.shape[0]), p.blur.border,
            p.bayer.applied and p.bayer.cfa, p.noise.applied)


def degrade(sharp: torch.Tensor, params, kernels, eps=None, apply_jpeg: bool = True) -> torch.Tensor:
    """Apply drawn degradations: sharp (B, 3, H, W) in [0, 1] -> blurry (B, 3, H, W), float.

    ``sharp`` may also be uint8 levels (read as ``k / 255``, the same numbers as ``to_float(sharp)``): their
    linear light is then looked up in a 256-entry table instead of computed per pixel.

    One sample (B = 1): ``params`` its record, ``kernels`` from ``build_kernels(params)``, ``eps`` from
    ``noise_field`` (drawn here when None). A batch: lists of B of each, all with one ``signature``
    (the batched GPU path); PSFs are then zero-padded to the batch's largest, so a sample's pixels
    match its B = 1 result to float rounding, not bit for bit.
    ``apply_jpeg=False`` stops before the JPEG stage (``synthesize`` runs the codec in a thread pool).
    """
    one = not isinstance(params, (list, tuple))
    ps = [SampleParams.coerce(q) for q in ([params] if one else params)]
    ks = [kernels] if one else list(kernels)
    if len(ps) != sharp.shape[0] or len(ks) != len(ps) or len({signature(q, k) for q, k in zip(ps, ks)}) != 1:
        raise ValueError(f"degrade: expected one params/kernels per sample ({sharp.shape[0]}), sharing one signature")
    x = sharp
    h, w = x.shape[-2:]
    p = ps[0]  # the on/off choices (shared by the batch)
    ll, sat, bayer, noise, jp = p.linear_light, p.saturation, p.bayer, p.noise, p.jpeg

    dtype = x.dtype if x.is_floating_point() else torch.float32

    def each(value):  # a per-sample number: a float for one sample (as before batching), else (B,)
        values = [value(q) for q in ps]
        return values[0] if one else torch.tensor(values, dtype=dtype, device=x.device)

    # 1. to linear light (blur and noise are physical in scene radiance, not in display values)
    if x.dtype == torch.uint8:
        x = fm.to_linear_levels(x, ll.curve, each(lambda q: q.linear_light.gamma)) if ll.applied else to_float(x)
    elif ll.applied:
        x = fm.to_linear(x, ll.curve, each(lambda q: q.linear_light.gamma))
    # 2. clipped highlights get their true radiance back (> 1) so the blur spreads them
    if sat.applied:
        x = fm.boost_highlights(x, each(lambda q: q.saturation.threshold), each(lambda q: q.saturation.gain))
    # 3. blur: one PSF, or several blended by smooth masks
    size = max(k.shape[-1] for k in ks)
    psfs = torch.stack([pad_to(k, size) for k in ks]).to(x.device)  # (B, n, K, K)
    masks = [build_masks(q, h, w, x.device) for q in ps]  # (1, n, H, W) or None each
    x = fft_blur(x, psfs, None if masks[0] is None else torch.cat(masks), border=p.blur.border)
    # 4. sensor: Bayer sampling, Poisson–Gaussian noise, clipping at full well
    if bayer.applied:
        x = fm.mosaic(x, bayer.cfa)
    if noise.applied:
        fields = [noise_field(q, h, w) for q in ps] if eps is None else ([eps] if one else list(eps))
        x = fm.poisson_gaussian_noise(x, each(lambda q: q.noise.shot), each(lambda q: q.noise.read),
                                      torch.stack(fields).to(x.device, non_blocking=True))
    x = x.clamp_(0, 1)  # in place: from here on x is always a fresh tensor of this function's (fft_blur's)
    if bayer.applied:
        x = fm.demosaic(x, bayer.cfa).clamp_(0, 1)
    # 5. back to display values, then the camera's JPEG
    if ll.applied:
        x = fm.from_linear(x, ll.curve, each(lambda q: q.linear_light.gamma)).clamp_(0, 1)
    coded = [i for i, q in enumerate(ps) if q.jpeg.applied]  # quality and on/off are per sample
    if apply_jpeg and coded:
        decoded = fm.jpeg(x[coded], [ps[i].jpeg.quality for i in coded])
        if len(coded) == len(ps):
            return decoded
        x = x.clone()
        x[coded] = decoded
    return x


def _check_inputs(sharp: torch.Tensor, seeds: Sequence[int]) -> list[int]:
    if (not torch.is_tensor(sharp) or sharp.dim() != 4 or sharp.shape[1] != 3
            or not (sharp.is_floating_point() or sharp.dtype == torch.uint8)):
        got = (tuple(sharp.shape), sharp.dtype) if torch.is_tensor(sharp) else type(sharp).__name__
        raise ValueError(f"synthesize: sharp must be a float tensor (B, 3, H, W) in [0, 1] or uint8, got {got}")
    if torch.is_tensor(seeds):
        seeds = seeds.tolist()
    if isinstance(seeds, int):
        seeds = [seeds]
    seeds = [int(s) for s in seeds]
    if len(seeds) != sharp.shape[0]:
        raise ValueError(f"synthesize: seeds must give one int per sample, got {len(seeds)} for a batch of {sharp.shape[0]}")
    return seeds


def _map(fn, items: list) -> list:
    """``[fn(i) for i in items]``, on a thread pool of ``torch.get_num_threads()`` threads when that is
    more than 1. Used for the CPU-side per-sample work (draws, PSFs, noise fields, the JPEG codec all
    release the GIL); each sample has its own generators, so threads never change a result."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def synthesize(sharp: torch.Tensor, recipe: "str | Path | Recipe" = "realistic", seeds: Sequence[int] = (),
               *, batched: bool | None = None) -> SynthesisResult:
    """Synthesise blurry versions of ``sharp`` (B, 3, H, W), float in [0, 1], any device.

    ``sharp`` may also be uint8 levels (decoded pixels, read as ``k / 255``): the blurry images then come
    back as uint8 too, the same bits as ``to_uint8`` of the float result, for less work (the linear light
    is a table lookup, the JPEG stage skips its float round trip).

    ``seeds``: one int per sample; the same (image, seed, recipe) gives the same result whatever the
    batch, position, device or worker. ``recipe``: a built-in name, a YAML path or a ``Recipe``.
    ``batched``: run samples that share their on/off choices as one batch on the device (default: on a
    GPU, not on CPU). Draws and PSFs are the same either way; batched pixels match the one-at-a-time
    ones to float rounding (tested: 1e-5 before the 8-bit JPEG stage), one at a time they are
    bit-identical whatever the batch.
    """
    recipe = load_recipe(recipe)
    seeds = _check_inputs(sharp, seeds)
    h, w = sharp.shape[-2:]
    levels = sharp.dtype == torch.uint8
    if batched is None:
        batched = sharp.device.type != "cpu"

    # 1. draws, on CPU: parameters, PSFs and noise fields (independent per sample)
    def prepare(seed: int):
        p = draw_params(recipe, seed)
        return p, build_kernels(p), noise_field(p, h, w)

    prepared = _map(prepare, seeds)
    # 2. image formation on sharp's device: one sample at a time (batch-independent bit for bit), or
    #    one batch per signature (a few kernel launches for the whole batch on a GPU)
    groups: dict[tuple, list[int]] = {}
    for i, (p, k, _) in enumerate(prepared):
        groups.setdefault(signature(p, k) if batched else (i,), []).append(i)
    blurry: list[torch.Tensor | None] = [None] * len(seeds)
    for idx in groups.values():
        if batched:
            p, k, eps = ([prepared[i][j] for i in idx] for j in range(3))
            out = degrade(sharp[idx], p, k, eps, apply_jpeg=False)
        else:
            (i,) = idx
            out = degrade(sharp[i : i + 1], *prepared[i], apply_jpeg=False)
        if levels:
            out = to_uint8(out)
        for j, i in enumerate(idx):
            blurry[i] = out[j : j + 1]
    # 3. the camera's JPEG, on CPU (Pillow/libjpeg), on a thread pool when torch has threads
    coded = [i for i, (p, _, _) in enumerate(prepared) if p.jpeg.applied]
    for i, x in zip(coded, _map(lambda i: fm.jpeg(blurry[i], [prepared[i][0].jpeg.quality]), coded)):
        blurry[i] = x
    # one sample (the synth actor's and the training stream's call): its own tensor, no copy
    out = (blurry[0] if len(blurry) == 1 else torch.cat(blurry)) if blurry else sharp.clone()
    return SynthesisResult(blurry=out, kernels=[k for _, k, _ in prepared], params=[p.to_dict() for p, _, _ in prepared],
                           recipe=recipe)
