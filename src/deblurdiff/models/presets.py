"""Model sizes as builder functions: ``tiny()`` (CPU, the embedded default) and ``sd21()`` (the paper).

Each returns ``PipelineParts``; ``DeblurDiffPipeline.from_preset(name, ...)`` wraps them. ``PRESETS``
maps the public names to the builders.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from deblurdiff.errors import UsageError
from deblurdiff.models.autoencoder import ExactAutoencoder
from deblurdiff.models.controlnet import LatentControlNet
from deblurdiff.models.lkpn import LKPN
from deblurdiff.models.text import NullTextEmbedding, encode_empty_prompt
from deblurdiff.models.unet import WindowedUNet2DConditionModel

__all__ = ["COMPONENTS", "PRESETS", "PipelineParts", "ddpm_scheduler", "sd21", "sd21_unet_config", "sd21_vae_config", "tiny"]

logger = logging.getLogger(__name__)

# The pipeline's module components, in one place: the pipeline, training (trainable vs frozen), export
# and the tests all iterate over these names. (The scheduler is a component too, but holds no weights.)
COMPONENTS = ("vae", "unet", "controlnet", "lkpn", "null_text")


@dataclass
class PipelineParts:
    vae: torch.nn.Module
    unet: UNet2DConditionModel
    controlnet: LatentControlNet
    lkpn: LKPN
    null_text: NullTextEmbedding
    scheduler: DDPMScheduler
    trainable: tuple[str, ...]  # component names the training loop optimises
    blurry_range: str  # "unit": z_b encoded from [0, 1] (released-weights quirk); "signed": from [-1, 1]
    z_hat_anchor: bool = False  # the UNet corrects x0 = ẑ (``predict_noise``'s anchor_scheduler); the paper: off


def ddpm_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD-2.1's noise schedule with the released sampler: DDPM respaced to the requested step count
    (linspace: 999 … 0), fixed-small variance, no x0 clipping, eps prediction (SD-2.1-base)."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        variance_type="fixed_small", clip_sample=False, prediction_type=prediction_type, timestep_spacing="linspace",
    )


@contextlib.contextmanager
def _build_on(device: str | torch.device | None, seed: int | None):
    """Create parameters directly on ``device`` ("meta": shapes only, no memory), from a fixed seed."""
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)
        if device is not None:
            stack.enter_context(torch.device(device))
        yield


# ----------------------------------------------------------------------------------------- tiny
TINY_CROP = 64  # the tiny preset's training crop (configs/tiny.yaml data.crop)
TINY_ATTENTION_WINDOW = TINY_CROP  # latent px at level 0 (= image px: the tiny latent is at image resolution)


def tiny(base_model: str | None = None, random_init: bool = True,
         device: str | torch.device | None = None, seed: int = 0) -> PipelineParts:
    """CPU-sized DeblurDiff that learns in minutes.

    - Autoencoder: ``ExactAutoencoder`` (fixed, exactly invertible, latent = image resolution, C = 3),
      so K has C·k² = 75 channels; scaling factor 2 gives latents of about unit std, as SD's 0.18215 does.
    - UNet / ControlNet / LKPN: three levels (16, 32, 32 channels), one res block per level,
      cross-attention only at the lowest resolution (self-attention at full resolution would dominate
      the cost), an 8-token context of width 32. About 1.3 GFLOP per 64² sample for a whole step
      (LKPN + ControlNet + UNet), so a CPU trains on 64² crops at about a second per step.
    - ``zero_sum_kernels`` LKPN: EAC corrections are high-pass only (see ``LKPN``).
    - v-prediction (SD-2.1-base predicts eps): with eps, a small UNet trained for minutes turns tiny
      eps errors at high noise into huge x0 errors (× sqrt((1 − ᾱ)/ᾱ), ~15 at t = 999) and the sampler
      wanders off; v keeps x0 estimates bounded. Measured on held-out pairs after 300 CPU steps: restored
      PSNR 16.7 dB with v against 14.1 dB with eps.
    - ``z_hat_anchor``: the UNet's output corrects the v that makes x0 = ẑ (``predict_noise``), so what
      the from-scratch diffusion branch has not learned leaves the LKPN's estimate, not noise. Measured
      with the start loss (``train.start_latent_weight``; single process, 300 steps, the demo's pairs,
      dpmpp 10 steps, held-out): strength 0.1 24.96 → 28.08 dB, from pure noise 19.95 → 25.83 dB
      (benchmarks/RESULTS.md, "Demo restoration").
    - ``reads_x_t=False`` LKPN: ẑ is a blind deblurring of z_b alone, the same at every step. Reading the
      sampler's x_t, the co-trained LKPN took its kernels from x_t noised from the sharp z_0 and made ẑ
      worse than z_b at inference; without it, held-out 27.82 → 28.79 dB (blurry 28.96; RESULTS.md,
      "Demo restoration, third round").
    - Trained (``configs/tiny.yaml``) with ``train.noise_from: estimate`` and ``train.max_timestep: 300``: the
      diffusion branch learns from x_t noised from ẑ, as sampling from ẑ meets it, and stops adding
      noise (one recipe, 500 steps: held-out 31.98 → 33.00 dB, blurry 33.00; RESULTS.md, "fourth round").
    - Also trained with ``train.fidelity_loss: psnr`` (per-sample PSNR instead of the batch MSE): pooled MSE
      let ẑ lose up to 3 dB on the cleanest crops; 500 steps, held-out 32.67 → 33.27 dB (RESULTS.md, "fifth
      round"). ``deblurdiff.pretrained`` ships this preset trained 3000 steps on real photos (``tiny-small-handheld``).
    - Windowed attention as the release runs it, one window = the 64 px training crop's token grid
      (global attention before; a 2048×1152 photo took 584 s and 4.3 GB, self-attention being 80 % of it).
    - Trainable: ``unet`` + ``controlnet`` + ``lkpn``. The paper trains only ControlNet + LKPN because
      its UNet is a pretrained Stable Diffusion; no pretrained tiny UNet exists, and a frozen random
      one predicts nothing useful, so the tiny preset trains its UNet too.
    """
    if base_model is not None:
        raise UsageError("preset 'tiny' is built from scratch; it takes no base_model")
    c, k = 3, 5
    levels = dict(
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, use_linear_projection=True,
    )
    # Windowed attention (the release's scheme, ``models.windows``), the window being the token grid of the
    # 64 px training crop: 16 tokens at the one attention level (level 2), i.e. TINY_ATTENTION_WINDOW = 64
    # latent px halved per level in the UNet and LKPN, 16 feature px in the ControlNet (which the release
    # does not halve). A training crop sees one window (global attention, as trained); a 12 MP photo costs
    # linearly in pixels instead of quadratically (benchmarks/RESULTS.md, "Real photo sizes").
    window = TINY_ATTENTION_WINDOW
    with _build_on(device, seed):
        vae = ExactAutoencoder(scaling_factor=2.0)
        unet = WindowedUNet2DConditionModel(in_channels=c, out_channels=c, attention_head_dim=4,
                                            attention_window=window, **levels)
        controlnet = LatentControlNet.from_unet(unet, conditioning_channels=2 * c)
        controlnet.set_attention_window(window >> (len(levels["block_out_channels"]) - 1))
        lkpn = LKPN(latent_channels=c, kernel_size=k, attention_heads=4, zero_sum_kernels=True, reads_x_t=False,
                    attention_window=window, **levels)
        # A fixed random "empty prompt" (there is no tiny text encoder): (1, 8 tokens, 32).
        null_text = NullTextEmbedding.from_tensor(torch.randn(1, 8, 32))
    return PipelineParts(vae, unet, controlnet, lkpn, null_text, ddpm_scheduler("v_prediction"),
                         trainable=("unet", "controlnet", "lkpn"), blurry_range="signed", z_hat_anchor=True)


# ----------------------------------------------------------------------------------------- sd21
def sd21_unet_config() -> dict:
    """stabilityai/stable-diffusion-2-1-base ``unet/config.json`` (865.9M parameters)."""
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    )


def sd21_vae_config() -> dict:
    """stabilityai/stable-diffusion-2-1-base ``vae/config.json`` (83.7M parameters)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    )


def _load_frozen_sd21(base_model: str):
    """VAE, UNet and the empty-prompt context from a diffusers SD-2.1 directory, a single
    ``.ckpt``/``.safetensors`` file (``models.single_file``), or a named hub id."""
    from deblurdiff.models.single_file import SINGLE_FILE_SUFFIXES, load_sd21_single_file

    if os.path.isfile(base_model) and base_model.endswith(SINGLE_FILE_SUFFIXES):
        return load_sd21_single_file(base_model)
    local = os.path.isdir(base_model)
    if not local and (base_model.count("/") != 1 or os.path.exists(base_model)):
        raise UsageError(f"base_model {base_model!r} is neither a local diffusers directory nor a hub id "
                         "(owner/name)")
    try:
        vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet")
        context = encode_empty_prompt(base_model)
    except (OSError, ValueError) as exc:
        where = "directory" if local else "hub id (needs network access and, for gated models, a token)"
        raise UsageError(f"base_model {base_model!r}: cannot load a Stable Diffusion 2.1 {where}: "
                         f"{str(exc).splitlines()[0]}") from exc
    return vae, unet, context


def sd21(base_model: str | None = None, random_init: bool = False,
         device: str | torch.device | None = None, seed: int = 0) -> PipelineParts:
    """The paper's model on Stable Diffusion 2.1-base.

    Frozen VAE + UNet (+ the empty-prompt context) come from ``base_model``; or, with
    ``random_init=True``, the same architecture is built untrained (tests, benchmarks; with
    ``device="meta"`` without allocating memory). LKPN is paper-size and starts at the identity; the
    ControlNet is copied from the UNet. Trainable: ``controlnet`` + ``lkpn``.
    """
    if base_model is None and not random_init:
        raise UsageError("preset 'sd21' needs base_model=<a local Stable Diffusion 2.1-base diffusers directory, "
                         "or a hub id> (or random_init=True for an untrained model, e.g. for benchmarks)")
    if base_model is not None and random_init:
        raise UsageError("preset 'sd21': give base_model or random_init=True, not both")
    if base_model is not None:
        vae, unet, context = _load_frozen_sd21(base_model)
        if device is not None:
            vae, unet = vae.to(device), unet.to(device)
    with _build_on(device, seed):
        if base_model is None:
            vae = AutoencoderKL(**sd21_vae_config())
            unet = UNet2DConditionModel(**sd21_unet_config())
            context = torch.randn(1, 77, unet.config.cross_attention_dim) * 0.5  # stands in for CLIP("")
        controlnet = LatentControlNet.from_unet(unet, conditioning_channels=2 * unet.config.in_channels)
        lkpn = LKPN(latent_channels=unet.config.in_channels, kernel_size=5,
                    cross_attention_dim=unet.config.cross_attention_dim)
        null_text = NullTextEmbedding.from_tensor(context)
    return PipelineParts(vae, unet, controlnet, lkpn, null_text, ddpm_scheduler(),
                         trainable=("controlnet", "lkpn"), blurry_range="unit")


PRESETS = {"tiny": tiny, "sd21": sd21}
