"""DeblurDiffPipeline: blurry image(s) in, restored image(s) out (DESIGN §1 "Inference as released").

    pipe = DeblurDiffPipeline.from_preset("tiny")                  # or .from_pretrained(model_dir)
    out = pipe(Image.open("blurry.png"), num_inference_steps=20, sampler="dpmpp",
               generator=torch.Generator().manual_seed(0))
    out.images[0].save("restored.png")

Per step (iterative refinement): LKPN predicts kernels from (z_b, x_t), EAC gives ẑ = EAC(z_b, K) + z_b,
the ControlNet reads x_t and cat([z_b, ẑ]), the frozen UNet predicts eps, the scheduler steps
x_t -> x_{t-1}. The networks' math lives in ``deblurdiff.models.predict_noise`` (shared with training).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from deblurdiff.errors import UsageError
from deblurdiff.models.objective import NoisePrediction, predict_noise
from deblurdiff.models.presets import COMPONENTS, PRESETS
from deblurdiff.pixels import to_float, to_uint8

__all__ = ["COLOUR_FIXES", "OUTPUT_TYPES", "RELEASED_SAMPLING", "SAMPLERS", "check_sampling", "denoising_steps", "DeblurDiffPipeline", "DeblurDiffPipelineOutput"]


def _ddpm(config) -> DDPMScheduler:
    # The released sampler: DDPM respaced to N steps (linspace 999…0), fixed-small variance, no clipping.
    return DDPMScheduler.from_config(config)


def _dpmpp(config) -> DPMSolverMultistepScheduler:
    # Fast multistep sampler: DPM-Solver++ (2nd order, deterministic), good at ~20 steps.
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2, variance_type=None
    )


# Sampler name -> scheduler factory over the pipeline's (DDPM) scheduler config. Schedulers are
# swapped, never forked: both are diffusers' own with the same noise schedule.
_SCHEDULERS = {"ddpm": _ddpm, "dpmpp": _dpmpp}
SAMPLERS = tuple(_SCHEDULERS)  # what the CLI and the HTTP API accept
COLOUR_FIXES = ("adain", "none")
OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class DeblurDiffPipelineOutput(BaseOutput):
    """``images``: list of PIL images ("pil"), float (B, H, W, 3) array ("np") or (B, 3, H, W) tensor
    ("pt") in [0, 1]; a list of arrays/tensors when the inputs had different sizes.

    With ``return_intermediates=True``, per denoising step (same order as ``timesteps``), on the CPU,
    cropped to the input's latent extent: ``z_hat`` (ẑ, (B, C, h, w)) and ``kernels`` (K, (B, C·k², h, w)).
    For a batch of mixed sizes each entry is a list over the inputs.
    """

    images: list | np.ndarray | torch.Tensor
    z_hat: list | None = None
    kernels: list | None = None
    timesteps: list[int] | None = None


class DeblurDiffPipeline(DiffusionPipeline):
    """DeblurDiff on diffusers: ``vae``, ``unet`` (frozen), ``controlnet`` + ``lkpn`` (trained),
    ``scheduler`` (DDPM, the released sampler's config) and ``null_text`` (the cached empty-prompt
    context). Pipeline config: ``preset`` (the preset it was built from), ``trainable_components``,
    ``blurry_range`` ("unit": z_b is encoded from [0, 1], a quirk of the released SD-2.1 weights;
    "signed": from [-1, 1] like z_0), ``origin`` (for a converted model: the checkpoint it came from),
    ``sampling`` (the sampler settings this model was validated
    with, ``{"sampler", "steps", "strength"}``; a call that names none of them uses these; None: the
    released 50-step DDPM from noise, ``RELEASED_SAMPLING``), ``z_hat_anchor`` (the UNet predicts a
    correction to the estimate x0 = ẑ instead of the whole output; off in the paper and the release, on in
    the tiny preset: see ``predict_noise``). Saved in ``model_index.json``.
    """

    model_cpu_offload_seq = "lkpn->controlnet->unet->vae"

    def __init__(self, vae, unet, controlnet, lkpn, scheduler, null_text, preset="custom",
                 trainable_components=("controlnet", "lkpn"), blurry_range="unit", origin=None, sampling=None,
                 z_hat_anchor=False):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, controlnet=controlnet, lkpn=lkpn, scheduler=scheduler,
                              null_text=null_text)
        if blurry_range not in ("unit", "signed"):
            raise ValueError(f"blurry_range must be 'unit' or 'signed', got {blurry_range!r}")
        self.register_to_config(preset=preset, blurry_range=blurry_range, origin=origin,
                                sampling=check_sampling(sampling), z_hat_anchor=bool(z_hat_anchor))
        self.set_trainable(trainable_components)
        self.tile_workers = 1

    def set_tile_workers(self, workers: int) -> None:
        """Restore up to ``workers`` latent tiles at once, on Python threads (torch releases the GIL).
        Each tile still runs on torch's intra-op threads, so with ``torch.set_num_threads(1)`` this uses
        ``workers`` cores and the result is the same, bit for bit, as one tile at a time (a tile's numbers
        never depend on the others; they are blended in tile order). Only tiled calls are affected."""
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"tile workers must be a positive integer, got {workers!r}")
        self.tile_workers = workers

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, base_model: str | None = None, random_init: bool = False, *,
                    device: str | torch.device | None = None, torch_dtype: torch.dtype | None = None,
                    seed: int = 0, trainable: list[str] | tuple[str, ...] | None = None) -> "DeblurDiffPipeline":
        """Build a preset: ``"tiny"`` (random init, CPU-sized; the embedded default) or ``"sd21"``
        (frozen parts from ``base_model``, a local diffusers dir or a hub id; or ``random_init=True``).

        ``device="meta"`` builds shapes only (parameter counting); ``seed`` fixes the random init;
        ``trainable`` overrides the preset's trainable components (``set_trainable``).
        """
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        parts = PRESETS[name](base_model=base_model, random_init=random_init, device=device, seed=seed)
        pipe = cls(vae=parts.vae, unet=parts.unet, controlnet=parts.controlnet, lkpn=parts.lkpn,
                   scheduler=parts.scheduler, null_text=parts.null_text, preset=name,
                   trainable_components=trainable if trainable is not None else parts.trainable,
                   blurry_range=parts.blurry_range, z_hat_anchor=parts.z_hat_anchor)
        if torch_dtype is not None:
            # Cast each network as nn.Module does: ModelMixin.to(dtype) warns once per component about
            # float32 modules to keep, and no component has any (``_keep_in_fp32_modules`` is empty).
            for module in pipe.components.values():
                if isinstance(module, torch.nn.Module):
                    torch.nn.Module.to(module, dtype=torch_dtype)
        return pipe

    # ------------------------------------------------------------------------------ building blocks
    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (8 for SD's VAE, 1 for the tiny ExactAutoencoder)."""
        cfg = self.vae.config
        if "downsample_factor" in cfg:
            return int(cfg.downsample_factor)
        return 2 ** (len(cfg.block_out_channels) - 1)

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of this many pixels (64 for SD-2.1): every level of the
        UNets must see an even size."""
        levels = max(len(self.unet.config.block_out_channels), len(self.lkpn.unet.config.block_out_channels))
        return self.vae_scale_factor * 2 ** (levels - 1)

    def set_trainable(self, names) -> None:
        """Train exactly ``names`` (a subset of unet / controlnet / lkpn); freeze everything else.
        Gradients can only ever reach the trainable parts."""
        unknown = set(names) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"trainable components {sorted(unknown)}: expected names from {', '.join(COMPONENTS)}")
        self.register_to_config(trainable_components=list(names))
        for name in COMPONENTS:
            getattr(self, name).requires_grad_(name in names)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """Components the training loop optimises (sd21: controlnet + lkpn; tiny: + unet)."""
        return {name: getattr(self, name) for name in self.config.trainable_components}

    def null_text_embedding(self, batch_size: int) -> torch.Tensor:
        """The cached empty-prompt context, (batch_size, L, D)."""
        return self.null_text(batch_size)

    def encode(self, image: torch.Tensor, *, blurry: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1] -> scaled latent z (B, C, H/f, W/f), float32.

        ``blurry=True`` gives z_b, else z_0. H and W must suit the VAE (multiples of f); the pipeline
        pads before encoding. Sampled from the posterior (the released model's z_b is a sample).
        """
        x = image.to(self.vae.device, self.vae.dtype)
        if not (blurry and self.config.blurry_range == "unit"):
            x = x * 2 - 1
        z = self.vae.encode(x).latent_dist.sample(generator)
        return z.float() * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Scaled latent (B, C, h, w) -> image (B, 3, h·f, w·f) in [0, 1], float32."""
        x = self.vae.decode((z / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        x = (x.float() + 1) / 2
        return x.clamp(0, 1) if clamp else x

    def make_scheduler(self, sampler: str):
        """A fresh scheduler for ``sampler`` (per call: concurrent calls never share step state)."""
        if sampler not in _SCHEDULERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        return _SCHEDULERS[sampler](self.scheduler.config)

    def default_sampling(self) -> dict:
        """``{"sampler", "steps", "strength"}`` a call uses when it names none: the settings recorded
        with this model (``sampling`` in its config), else the released sampler."""
        return dict(self.config.get("sampling") or RELEASED_SAMPLING)

    # ------------------------------------------------------------------------------ __call__
    def check_inputs(self, num_inference_steps, sampler, tile_size, tile_stride, colour_fix, output_type,
                     strength=1.0):
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise ValueError(f"num_inference_steps must be an integer in [1, 1000], got {num_inference_steps!r}")
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
        if strength > 0 and denoising_steps(num_inference_steps, strength) < 1:
            raise ValueError(f"strength {strength} with num_inference_steps {num_inference_steps} leaves no "
                             f"denoising step; use strength >= {1 / num_inference_steps:.3g} or more steps")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if colour_fix not in COLOUR_FIXES and colour_fix is not None:
            raise ValueError(f"colour_fix must be one of {', '.join(COLOUR_FIXES)} or None, got {colour_fix!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if tile_size is None and tile_stride is not None:
            raise ValueError("tile_stride needs tile_size")
        if tile_size is not None:
            m = self.pad_multiple
            if not isinstance(tile_size, int) or tile_size <= 0 or tile_size % m:
                raise ValueError(f"tile_size must be a positive multiple of {m} pixels, got {tile_size!r}")
            f = self.vae_scale_factor
            if tile_stride is not None and (not isinstance(tile_stride, int) or not 0 < tile_stride <= tile_size
                                            or tile_stride % f):
                raise ValueError(f"tile_stride must be a multiple of {f} pixels in (0, tile_size={tile_size}], "
                                 f"got {tile_stride!r}")

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampler: str | None = None,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        colour_fix: str | None = "adain",
        output_type: str = "pil",
        return_intermediates: bool = False,
        control_scale: float = 1.0,
        release_compat: bool = False,
        strength: float | None = None,
    ) -> DeblurDiffPipelineOutput:
        """Deblur ``image``: a PIL image, an (H, W, 3) / (B, H, W, 3) array (uint8, or float in [0, 1]),
        a (3, H, W) / (B, 3, H, W) tensor in [0, 1], or a list of those. Any size: inputs are padded
        to ``pad_multiple`` and the outputs cropped back to the input sizes.

        ``num_inference_steps``, ``sampler`` and ``strength`` left as None take the model's validated
        settings (``default_sampling()``).

        Args:
            num_inference_steps: denoising steps (50 with "ddpm" is the released setting; 20 with "dpmpp").
            generator: makes the result deterministic (z_b sampling, x_T and DDPM noise all draw from it);
                a list (one per image) makes each image's result depend on its own generator only.
            sampler: one of ``SAMPLERS``: "ddpm" (released) or "dpmpp" (DPM-Solver++).
            tile_size / tile_stride: latent tiling for large images, in image pixels (sd21: 512 / 256 =
                the released 64 / 32 latent tiles); eps of overlapping tiles is blended with Gaussian weights.
                None: one pass up to ``AUTO_TILE_ABOVE_PIXELS`` (1 MP), ``AUTO_TILE`` / ``AUTO_TILE_STRIDE`` above.
            colour_fix: "adain" matches each output channel's mean/std to the input's; "none" skips it.
            return_intermediates: also return the per-step ẑ and kernels.
            release_compat: post-process exactly as the released DeblurDiff does (docs/released-model.md):
                zero padding instead of reflection, no clamp between decoding and the colour fix, and
                "pil" outputs quantised by truncation instead of rounding.
            strength: where sampling starts, as in diffusers' img2img. 1.0 (released): from pure noise x_T,
                all ``num_inference_steps`` steps. Below 1: from the LKPN's deblurred latent ẑ (computed
                from z_b, with z_b in place of x_t) noised to the ``int(num_inference_steps · strength)``-th
                last timestep, running only those steps: less invented detail, more fidelity, faster.
                0: the LKPN's ẑ decoded, no denoising step (the tiny preset's default: its from-scratch
                diffusion branch has no pretrained prior to add; benchmarks/RESULTS.md).
        """
        # 1. check inputs (unset sampler settings: the ones this model was validated with)
        defaults = self.default_sampling()
        num_inference_steps = defaults["steps"] if num_inference_steps is None else num_inference_steps
        sampler = defaults["sampler"] if sampler is None else sampler
        strength = defaults["strength"] if strength is None else strength
        self.check_inputs(num_inference_steps, sampler, tile_size, tile_stride, colour_fix, output_type, strength)
        images, single_size = _to_tensors(image)
        if isinstance(generator, (list, tuple)) and len(generator) != len(images):
            raise ValueError(f"generator: a list needs one generator per image; got {len(generator)} "
                             f"for {len(images)} images")

        # 2. restore same-sized inputs as one batch, mixed sizes one by one
        if single_size:
            groups = [(torch.stack(images), generator)]
        else:
            per_image = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(images)
            groups = [(img[None], g) for img, g in zip(images, per_image)]
        results = [
            self._restore(x, num_inference_steps, g, sampler, tile_size, tile_stride,
                          colour_fix, return_intermediates, control_scale, release_compat, strength)
            for x, g in groups
        ]

        # 3. post-process
        restored = [r[0] for r in results]
        out_images = _postprocess(restored, output_type, single_size, truncate=release_compat)
        if not return_intermediates:
            return DeblurDiffPipelineOutput(images=out_images)
        z_hats = results[0][1] if single_size else [r[1] for r in results]
        kernels = results[0][2] if single_size else [r[2] for r in results]
        return DeblurDiffPipelineOutput(images=out_images, z_hat=z_hats, kernels=kernels, timesteps=results[0][3])

    def _restore(self, x, steps, generator, sampler, tile_size, tile_stride, colour_fix, keep, control_scale,
                 release_compat=False, strength=1.0):
        """x: (B, 3, H, W) float in [0, 1] -> (restored (B, 3, H, W) float on CPU, ẑ list, K list, timesteps)."""
        device, dtype = self._execution_device, self.unet.dtype
        b, _, h, w = x.shape
        f = self.vae_scale_factor
        # 1. pad to what the networks need (reflect where possible; zeros as released), remember the latent extent
        x = x.to(device)
        x_pad = _pad_to_multiple(x, self.pad_multiple, zeros=release_compat)
        lh, lw = math.ceil(h / f), math.ceil(w / f)

        # 2. z_b and the empty-prompt context
        z_b = self.encode(x_pad, blurry=True, generator=generator)  # (B, C, H'/f, W'/f)
        context = self.null_text_embedding(b).to(device, dtype)

        # 3. timesteps: all of them, or (strength < 1) only the last int(steps · strength), as img2img does
        scheduler = self.make_scheduler(sampler)
        scheduler.set_timesteps(steps, device=device)
        begin = steps - denoising_steps(steps, strength)
        if hasattr(scheduler, "set_begin_index"):  # multistep solvers index their state from it (DDPM has none)
            scheduler.set_begin_index(begin)
        timesteps_to_run = scheduler.timesteps[begin:]

        # 4. x_T ~ N(0, I); or (strength < 1) the LKPN's deblurred estimate ẑ noised to the first timestep
        #    run. Latents stay fp32 across steps, the networks may run in bf16.
        if tile_size is None and h * w > AUTO_TILE_ABOVE_PIXELS:  # memory flat in pixels: tiles, not one pass
            tile_size, tile_stride = AUTO_TILE, AUTO_TILE_STRIDE
        tiles = _latent_tiles(z_b.shape[-2:], tile_size // f, (tile_stride or tile_size // 2) // f) \
            if tile_size else None
        z_hats, kernels, timesteps = [], [], []
        if len(timesteps_to_run) == 0:  # strength 0: ẑ itself (the LKPN at t = 0), decoded with no step, no noise
            z_hat, k_hat = self._lkpn_estimate(z_b.to(dtype), torch.zeros(b, dtype=torch.long, device=device),
                                               context, tiles, keep)
            latents = z_hat.float()
            if keep:  # the one ẑ of this call, as the intermediates of a sampling run
                z_hats.append(z_hat[..., :lh, :lw].float().cpu())
                kernels.append(k_hat[..., :lh, :lw].float().cpu())
        else:
            noise = randn_tensor(z_b.shape, generator=generator, device=device, dtype=torch.float32)
            if begin == 0:
                latents = noise * scheduler.init_noise_sigma
            else:
                t_first = timesteps_to_run[:1].repeat(b)
                latents = scheduler.add_noise(
                    self._lkpn_estimate(z_b.to(dtype), t_first, context, tiles)[0].float(), noise, t_first)

        # 5. denoising loop: LKPN + EAC re-run on every x_t (iterative refinement), always on the original z_b
        for t in self.progress_bar(timesteps_to_run):
            x_in = scheduler.scale_model_input(latents, t)
            pred = self._predict_noise(x_in.to(dtype), t, z_b.to(dtype), context, tiles, control_scale, keep)
            latents = scheduler.step(pred.model_output.float(), t, latents, generator=generator).prev_sample
            if keep:
                z_hats.append(pred.z_hat[..., :lh, :lw].float().cpu())
                kernels.append(pred.kernels[..., :lh, :lw].float().cpu())
                timesteps.append(int(t))

        # 6. decode, crop the padding, colour fix
        # (the release colour-fixes the unclamped decoder output and clamps once, at the end)
        y = self.decode(latents, clamp=not release_compat)[..., :h, :w]
        if colour_fix == "adain":
            y = adain_colour_fix(y, x)
        return y.clamp(0, 1).cpu(), z_hats, kernels, timesteps

    def _lkpn_estimate(self, z_b, t, context, tiles, keep_kernels=False):
        """(ẑ (B, C, h, w), K (B, C·k², h, w)) from z_b alone: the LKPN with z_b standing in for x_t (the
        sampler has no x_t yet); tile by tile with the same Gaussian blending as every step when tiled
        (K only when ``keep_kernels``, else None: at 12 MP the tiny preset's K alone is 3.6 GB)."""
        if tiles is None:
            out = self.lkpn(z_b, z_b, t, context)
            return out.z_hat, out.kernels

        def tile(y0, y1, x0, x1):
            out = self.lkpn(z_b[..., y0:y1, x0:x1], z_b[..., y0:y1, x0:x1], t, context)
            return out.z_hat, out.kernels if keep_kernels else None

        return _blend_tiles(tiles, z_b.shape[-2:], tile, self.tile_workers)

    def _predict_noise(self, x_t, t, z_b, context, tiles, control_scale, keep_kernels=True) -> NoisePrediction:
        """``predict_noise`` on the whole latent, or tile by tile with Gaussian-weighted blending."""
        anchor = self.scheduler if self.config.get("z_hat_anchor") else None  # the training noise schedule
        if tiles is None:
            return predict_noise(self.unet, self.controlnet, self.lkpn, x_t, t, z_b, context, control_scale, anchor)

        def tile(y0, y1, x0, x1):
            p = predict_noise(self.unet, self.controlnet, self.lkpn, x_t[..., y0:y1, x0:x1], t,
                              z_b[..., y0:y1, x0:x1], context, control_scale, anchor)
            return p.model_output, p.z_hat, p.kernels if keep_kernels else None

        model_output, z_hat, kernels = _blend_tiles(tiles, x_t.shape[-2:], tile, self.tile_workers)
        return NoisePrediction(model_output=model_output, z_hat=z_hat, kernels=kernels)


# ---------------------------------------------------------------------------------- helpers
# Images above this many pixels are restored in overlapping tiles unless a tile size is given, so memory stays
# flat whatever the photo (with windowed attention the cost is linear in pixels either way); up to 1 MP, one
# pass. 512 px tiles with a 384 px stride process each pixel ~1.8 times; in a quarter of the memory per tile
# of 1024 / 768 (the tiny preset's LKPN runs at full resolution). Measured on the packaged tiny model, one
# torch thread (RESULTS.md, "Real photo sizes"): a 2048×1536 photo in one pass 19.4 s and 4.0 GB, in tiles
# 22.5 s and 1.6 GB, two tiles at once 10.9 s; the blend differs from one whole pass by 55 dB PSNR.
AUTO_TILE_ABOVE_PIXELS = 1024 * 1024
AUTO_TILE, AUTO_TILE_STRIDE = 512, 384

# The released sampler (DESIGN §1): 50-step DDPM from pure noise.
RELEASED_SAMPLING = {"sampler": "ddpm", "steps": 50, "strength": 1.0}


def check_sampling(sampling: dict | None) -> dict | None:
    """A model's recorded sampler settings: None, or exactly ``{"sampler", "steps", "strength"}`` with
    valid values (ValueError naming the field otherwise)."""
    if sampling is None:
        return None
    if not isinstance(sampling, dict) or set(sampling) != set(RELEASED_SAMPLING):
        raise ValueError(f"sampling: expected a dict with keys {sorted(RELEASED_SAMPLING)}, got {sampling!r}")
    if sampling["sampler"] not in SAMPLERS:
        raise ValueError(f"sampling.sampler must be one of {', '.join(SAMPLERS)}, got {sampling['sampler']!r}")
    steps, strength = sampling["steps"], sampling["strength"]
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 1000:
        raise ValueError(f"sampling.steps must be an integer in [1, 1000], got {steps!r}")
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1 \
            or (strength > 0 and denoising_steps(steps, strength) < 1):
        raise ValueError(f"sampling.strength must be in [0, 1] (0: ẑ decoded) and, above 0, leave at least one of "
                         f"the {steps} steps, "
                         f"got {strength!r}")
    return {"sampler": sampling["sampler"], "steps": steps, "strength": float(strength)}


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """Steps actually run at ``strength`` (diffusers' img2img rule: int(steps · strength))."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def adain_colour_fix(restored: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN: per image and channel, give ``restored`` the mean and std of ``reference``. (B, 3, H, W)."""
    mu_r, std_r = restored.mean((2, 3), keepdim=True), (restored.var((2, 3), keepdim=True) + eps).sqrt()
    mu_i, std_i = reference.mean((2, 3), keepdim=True), (reference.var((2, 3), keepdim=True) + eps).sqrt()
    return (restored - mu_r) / std_r * std_i + mu_i


def _pad_to_multiple(x: torch.Tensor, multiple: int, zeros: bool = False) -> torch.Tensor:
    """Pad right/bottom to a multiple: reflect (no hard edge for the networks) when the image is
    large enough, else replicate; ``zeros``: black, as the release pads."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    if zeros:
        return F.pad(x, (0, pw, 0, ph))
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _latent_tiles(shape, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) latent windows of ``tile`` (clipped to the latent) covering it with ``stride``."""
    h, w = shape
    th, tw = min(tile, h), min(tile, w)
    return [(y, y + th, x, x + tw) for y in _tile_starts(h, tile, stride) for x in _tile_starts(w, tile, stride)]


def _blend_tiles(tiles, size, run_tile, workers: int = 1) -> tuple:
    """``run_tile(y0, y1, x0, x1)`` on each latent window -> a tuple of (B, c, th, tw) tensors (None: not
    wanted); returns the same tuple over the whole ``size`` = (h, w) latent in fp32, overlapping tiles
    blended with Gaussian weights (``_gaussian_weights``). ``workers`` > 1 runs that many tiles at once
    on threads; the blend still adds them in tile order, so the sum is the same bit for bit."""
    totals = weight_sum = None
    with ThreadPoolExecutor(min(workers, len(tiles))) if workers > 1 and len(tiles) > 1 else nullcontext() as pool:
        if pool is None:
            results = (run_tile(*window) for window in tiles)
        else:  # grad mode is per thread: the workers get the caller's (no_grad inside the pipeline)
            grad = torch.is_grad_enabled()
            results = pool.map(lambda window: _with_grad(grad, run_tile, window), tiles)
        for (y0, y1, x0, x1), parts in zip(tiles, results):
            totals, weight_sum = _add_tile(totals, weight_sum, parts, (y0, y1, x0, x1), size)
    return tuple(None if total is None else total / weight_sum for total in totals)


def _with_grad(enabled: bool, run_tile, window) -> tuple:
    with torch.set_grad_enabled(enabled):
        return run_tile(*window)


def _add_tile(totals, weight_sum, parts, window, size):
    """Add one tile's outputs, Gaussian-weighted, into the running totals (allocated on the first tile)."""
    y0, y1, x0, x1 = window
    if totals is None:
        totals = [None if p is None else p.new_zeros((*p.shape[:2], *size), dtype=torch.float32) for p in parts]
        weight_sum = parts[0].new_zeros((1, 1, *size), dtype=torch.float32)
    wt = _gaussian_weights(y1 - y0, x1 - x0, weight_sum.device)  # (1, 1, th, tw)
    for total, part in zip(totals, parts):
        if total is not None:
            total[..., y0:y1, x0:x1] += part.float() * wt
    weight_sum[..., y0:y1, x0:x1] += wt
    return totals, weight_sum


def _gaussian_weights(h: int, w: int, device) -> torch.Tensor:
    """Separable Gaussian centred on the tile (variance 0.01 of the tile size²), (1, 1, h, w)."""
    def axis(n):
        pos = torch.arange(n, device=device, dtype=torch.float32)
        return torch.exp(-((pos - (n - 1) / 2) ** 2) / (n * n) / (2 * 0.01))
    return (axis(h)[:, None] * axis(w)[None, :])[None, None]


def _to_tensors(image) -> tuple[list[torch.Tensor], bool]:
    """Inputs -> list of (3, H, W) float32 tensors in [0, 1]; and whether they share one size."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("image: expected at least one image, got an empty list")
    tensors = []
    for item in items:
        tensors.extend(_one_input(item))
    return tensors, len({t.shape for t in tensors}) == 1


def _one_input(item) -> list[torch.Tensor]:
    if isinstance(item, PIL.Image.Image):
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        if item.ndim not in (3, 4) or item.shape[-1] != 3:
            raise ValueError(f"image: expected an (H, W, 3) or (B, H, W, 3) array, got shape {item.shape}")
        if not item.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            item = item.copy()
        item = torch.from_numpy(np.ascontiguousarray(item)).movedim(-1, -3)
    if not isinstance(item, torch.Tensor):
        raise ValueError(f"image: expected a PIL image, numpy array or torch tensor, got {type(item).__name__}")
    if item.ndim not in (3, 4) or item.shape[-3] != 3:
        raise ValueError(f"image: expected a (3, H, W) or (B, 3, H, W) tensor, got shape {tuple(item.shape)}")
    if item.dtype == torch.uint8:
        item = to_float(item)
    elif item.is_floating_point():
        item = item.float()
        lo, hi = item.min().item(), item.max().item()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"image: float values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        item = item.clamp(0, 1)
    else:
        raise ValueError(f"image: expected uint8 or float values, got {item.dtype}")
    return list(item) if item.ndim == 4 else [item]


def _postprocess(restored: list[torch.Tensor], output_type: str, single_size: bool, truncate: bool = False):
    """restored: list of (B, 3, H, W) float CPU tensors in [0, 1]."""
    if output_type == "pt":
        return restored[0] if single_size else [r[0] for r in restored]
    arrays = [r.permute(0, 2, 3, 1).numpy() for r in restored]  # (B, H, W, 3)
    if output_type == "np":
        return arrays[0] if single_size else [a[0] for a in arrays]
    return [PIL.Image.fromarray(to_uint8(img, truncate=truncate)) for a in arrays for img in a]
