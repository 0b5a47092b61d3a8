"""One denoising step's network math, and the co-training loss — used by both inference and training.

``predict_noise`` is THE forward pass (LKPN + EAC -> ControlNet -> UNet); the pipeline's sampling loop
and ``training_step`` both call it, so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FIXED_TIMESTEPS", "CoTrainingModule", "LossTerms", "NoisePrediction", "deblurdiff_loss", "diffusion_target",
           "fixed_timestep_losses", "output_for_x0", "predict_noise", "training_step", "x0_from_output"]

FIXED_TIMESTEPS = (50, 250, 500, 750, 950)  # spread over [0, 1000): the loss differs a lot with t


@dataclass
class NoisePrediction:
    # The UNet's raw output, (B, C, h, w), named as diffusers names it: eps under eps-prediction (paper,
    # sd21), v under v-prediction (tiny). The scheduler's prediction_type says which.
    model_output: torch.Tensor
    z_hat: torch.Tensor  # ẑ = EAC(z_b, K) + z_b, (B, C, h, w)
    kernels: torch.Tensor  # K, (B, C·k², h, w)


@dataclass
class LossTerms:
    loss: torch.Tensor  # diffusion_loss + λ · latent_loss (what to backpropagate)
    # MSE(model_output, target): target eps (paper) or v (v-prediction presets); MSE(x0_pred, z_0) when
    # training noises x_t from the estimate (``training_step``'s noise_from="estimate")
    diffusion_loss: torch.Tensor
    latent_loss: torch.Tensor  # MSE(ẑ, z_0)
    # MSE(ẑ_start, z_0), ẑ_start = the LKPN's estimate from z_b alone (x_t := z_b), where the sampler starts
    # at strength < 1; None when not trained (start_weight 0, the paper).
    start_latent_loss: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        floats = {"loss": self.loss.item(), "diffusion_loss": self.diffusion_loss.item(),
                  "latent_loss": self.latent_loss.item()}
        if self.start_latent_loss is not None:
            floats["start_latent_loss"] = self.start_latent_loss.item()
        return floats


def predict_noise(
    unet: nn.Module,
    controlnet: nn.Module,
    lkpn: nn.Module,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    z_blur: torch.Tensor,
    context: torch.Tensor,
    control_scale: float = 1.0,
    anchor_scheduler=None,
    estimate=None,
) -> NoisePrediction:
    """eps(x_t, t | z_b) with iterative refinement: LKPN + EAC re-run on this step's x_t.

    x_t, z_blur: (B, C, h, w); timestep: scalar or (B,); context: (B, L, D).

    ``anchor_scheduler`` (None in the paper and the release; the tiny preset's ``z_hat_anchor``): the
    UNet's output becomes a correction to the output that would make the scheduler's x0 estimate exactly
    ẑ, ``model_output = output_for_x0(ẑ) + unet(...)``. A UNet that predicts nothing (zero) then
    returns the LKPN's deblurred estimate instead of its noisy input: what a small diffusion branch
    trained from scratch adds is detail on top of ẑ, never noise in place of it. ẑ is detached there:
    the latent loss trains it; through the anchor the diffusion loss would weight its error by
    1/(1 − ᾱ_t), ~1000 at t = 0.

    ``estimate``: the LKPN's output for this step when the caller already has it (an LKPN that does
    not read x_t gives the same ẑ at every step); None runs the LKPN here.
    """
    # 1. LKPN predicts per-pixel kernels from (z_b, x_t); EAC applies them to the ORIGINAL z_b.
    lk = estimate if estimate is not None else lkpn(z_blur, x_t, timestep, context)
    # 2. ControlNet reads x_t plus the latent hint cat([z_b, ẑ]) -> 12 skip residuals + 1 middle residual.
    down_res, mid_res = controlnet(
        x_t, timestep, encoder_hidden_states=context,
        controlnet_cond=torch.cat([z_blur, lk.z_hat], dim=1),
        conditioning_scale=control_scale, return_dict=False,
    )
    # 3. The (frozen) UNet predicts eps with the residuals added to its skips and middle block.
    model_output = unet(
        x_t, timestep, encoder_hidden_states=context,
        down_block_additional_residuals=down_res, mid_block_additional_residual=mid_res,
    ).sample
    if anchor_scheduler is not None:
        model_output = model_output + output_for_x0(anchor_scheduler, lk.z_hat.detach(), x_t, timestep).to(model_output.dtype)
    return NoisePrediction(model_output=model_output, z_hat=lk.z_hat, kernels=lk.kernels)


FIDELITY_LOSSES = ("mse", "psnr")


def _optimised(pred: torch.Tensor, target: torch.Tensor, fidelity: str) -> torch.Tensor:
    """The term backpropagated for one fit, in fp32. "mse": MSE over the batch (the paper). "psnr": the
    mean over samples of 10·log10(MSE_i), i.e. minus the mean PSNR up to a constant (NAFNet's PSNR loss):
    each sample's error counts relative to its own size, so a nearly clean crop whose small error a
    correction doubles weighs as much as a noisy crop. Pooled MSE is dominated by the noisy crops and
    teaches a correction that costs the clean ones dB (RESULTS.md, "fifth round")."""
    if fidelity == "mse":
        return F.mse_loss(pred.float(), target.float())
    if fidelity == "psnr":
        per_sample = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
        return 10 * torch.log10(per_sample + 1e-8).mean()
    raise ValueError(f"fidelity must be one of {FIDELITY_LOSSES}, got {fidelity!r}")


def deblurdiff_loss(model_output: torch.Tensor, target: torch.Tensor, z_hat: torch.Tensor, z_0: torch.Tensor,
                    latent_weight: float = 1.0, fidelity: str = "mse") -> LossTerms:
    """loss = MSE(model_output, target) + λ · MSE(ẑ, z_0)   (DESIGN §1: target eps, λ = 1). Computed in fp32.

    ``fidelity="psnr"`` backpropagates both fits as mean 10·log10 per-sample MSE (``_optimised``); the
    reported ``diffusion_loss`` and ``latent_loss`` stay MSEs either way."""
    diffusion_loss = F.mse_loss(model_output.float(), target.float())
    latent_loss = F.mse_loss(z_hat.float(), z_0.float())
    if fidelity == "mse":
        loss = diffusion_loss + latent_weight * latent_loss
    else:
        loss = _optimised(model_output, target, fidelity) + latent_weight * _optimised(z_hat, z_0, fidelity)
    return LossTerms(loss=loss, diffusion_loss=diffusion_loss, latent_loss=latent_loss)


def diffusion_target(noise_scheduler, z_0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, from the scheduler's ``prediction_type``: eps (SD-2.1-base,
    the paper) or v = sqrt(ᾱ_t) eps − sqrt(1 − ᾱ_t) z_0 (the tiny preset; see ``presets.tiny``)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(z_0, noise, timesteps)
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {kind!r}")


def _alphas_cumprod(noise_scheduler, x_t: torch.Tensor, timesteps) -> torch.Tensor:
    """ᾱ_t in fp32, shaped to broadcast over x_t: (B or 1, 1, 1, 1)."""
    alphas = noise_scheduler.alphas_cumprod.to(x_t.device)[torch.as_tensor(timesteps, device=x_t.device).long()].float()
    return alphas.reshape(-1, *([1] * (x_t.dim() - 1)))


def output_for_x0(noise_scheduler, x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The model output (eps or v, by the scheduler's ``prediction_type``) from which the scheduler
    recovers exactly ``x0`` at x_t: eps = (x_t − sqrt(ᾱ_t) x0) / sqrt(1 − ᾱ_t), v = (sqrt(ᾱ_t) x_t − x0) / sqrt(1 − ᾱ_t).
    x0, x_t: (B, C, h, w); timesteps: scalar or (B,). Computed in fp32."""
    a = _alphas_cumprod(noise_scheduler, x_t, timesteps)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t.float() - a.sqrt() * x0.float()) / (1 - a).sqrt()
    if kind == "v_prediction":
        return (a.sqrt() * x_t.float() - x0.float()) / (1 - a).sqrt()
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {kind!r}")


def x0_from_output(noise_scheduler, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The scheduler's x0 estimate from a model output (the inverse of ``output_for_x0``):
    x0 = (x_t − sqrt(1 − ᾱ_t) eps) / sqrt(ᾱ_t), or x0 = sqrt(ᾱ_t) x_t − sqrt(1 − ᾱ_t) v. Shapes as there; fp32."""
    a = _alphas_cumprod(noise_scheduler, x_t, timesteps)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t.float() - (1 - a).sqrt() * model_output.float()) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t.float() - (1 - a).sqrt() * model_output.float()
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {kind!r}")


def training_step(
    unet: nn.Module,
    controlnet: nn.Module,
    lkpn: nn.Module,
    noise_scheduler,
    z_0: torch.Tensor,
    z_blur: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    latent_weight: float = 1.0,
    z_hat_anchor: bool = False,
    start_weight: float = 0.0,
    noise_from: str = "sharp",
    fidelity: str = "mse",
) -> LossTerms:
    """Loss terms for one co-training batch (no backward, no optimiser step).

    z_0: sharp latents, z_blur: blurry latents z_b (both scaled, (B, C, h, w));
    noise: eps ~ N(0, I) like z_0; timesteps: (B,) ints in [0, T); context: (B, L, D).
    ``z_hat_anchor``: the pipeline's option of that name (see ``predict_noise``'s ``anchor_scheduler``).
    ``start_weight`` μ > 0 adds μ · MSE(ẑ_start, z_0), ẑ_start = LKPN(z_b, x_t := z_b): the estimate the
    sampler starts from at strength < 1. Co-trained only on x_t from z_0, the LKPN learns to copy detail
    out of a nearly clean x_t and meets z_b in its place for the first time at inference; this term
    teaches it to deblur z_b on its own (one more LKPN pass per step).

    ``noise_from``: where x_t comes from. "sharp" (the paper): x_t = sqrt(ᾱ_t) z_0 + sqrt(1 − ᾱ_t) eps,
    the target eps or v. "estimate": x_t is noised from the sampler's start estimate ẑ_start (detached),
    as the sampler starts from it at strength < 1 (img2img), and the diffusion loss is MSE(x0_pred, z_0),
    x0_pred the scheduler's x0 from the model output: the diffusion branch learns to refine ẑ into z_0
    from the inputs it meets at inference. Trained from z_0 instead, a small branch learns at low t to
    copy detail out of x_t, and at inference copies the noise that x_t holds in its place.

    ``fidelity``: what is backpropagated (``deblurdiff_loss``): "mse" (the paper) or "psnr".
    """
    reads_x_t = getattr(getattr(lkpn, "config", None), "reads_x_t", True)
    estimate = None  # the LKPN's output when it does not depend on x_t: computed once, with gradients
    if noise_from == "sharp":
        x_0 = z_0
    elif noise_from == "estimate":
        if reads_x_t:
            with torch.no_grad():
                x_0 = lkpn(z_blur, z_blur, timesteps, context).z_hat  # x_t := z_b, as the sampler starts
        else:
            estimate = lkpn(z_blur, z_blur, timesteps, context)
            x_0 = estimate.z_hat.detach()
    else:
        raise ValueError(f"noise_from must be 'sharp' or 'estimate', got {noise_from!r}")
    # Forward diffusion q(x_t | x_0), in the networks' dtype (z_b's; evaluation keeps an fp32 z_0 as the
    # target beside a half-precision model).
    x_t = noise_scheduler.add_noise(x_0.to(noise.dtype), noise, timesteps).to(z_blur.dtype)
    pred = predict_noise(unet, controlnet, lkpn, x_t, timesteps, z_blur, context,
                         anchor_scheduler=noise_scheduler if z_hat_anchor else None, estimate=estimate)
    if noise_from == "sharp":
        target = diffusion_target(noise_scheduler, z_0, noise, timesteps)  # eps (paper) or v
        terms = deblurdiff_loss(pred.model_output, target, pred.z_hat, z_0, latent_weight, fidelity)
    else:
        x0_pred = x0_from_output(noise_scheduler, pred.model_output, x_t, timesteps)
        terms = deblurdiff_loss(x0_pred, z_0, pred.z_hat, z_0, latent_weight, fidelity)
    if start_weight > 0:
        # An LKPN that does not read x_t already made its estimate from z_b alone: no second pass.
        z_start = lkpn(z_blur, z_blur, timesteps, context).z_hat if reads_x_t else pred.z_hat
        terms.start_latent_loss = F.mse_loss(z_start.float(), z_0.float())
        terms.loss = terms.loss + start_weight * _optimised(z_start, z_0, fidelity)
    return terms


def fixed_timestep_losses(
    unet: nn.Module,
    controlnet: nn.Module,
    lkpn: nn.Module,
    noise_scheduler,
    z_0: torch.Tensor,
    z_blur: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator,
    latent_weight: float = 1.0,
    timesteps: tuple[int, ...] = FIXED_TIMESTEPS,
    z_hat_anchor: bool = False,
) -> LossTerms:
    """The co-training loss terms averaged over fixed ``timesteps``, with noise drawn (on the CPU) from
    ``generator``: deterministic for a given seed, so runs and checkpoints compare. Used by training's
    validation and by ``deblurdiff eval`` (whose ``lkpn_latent_mse`` is ``latent_loss``, MSE(ẑ, z_0)).

    z_0, z_blur: (B, C, h, w); context: (B, L, D). Returns 0-dim fp32 tensors.
    """
    n, device = z_0.shape[0], z_0.device
    per_t = []
    for t in timesteps:
        eps = torch.randn(z_0.shape, generator=generator).to(device)
        t_batch = torch.full((n,), t, device=device, dtype=torch.long)
        per_t.append(training_step(unet, controlnet, lkpn, noise_scheduler, z_0, z_blur, eps, t_batch, context,
                                   latent_weight, z_hat_anchor))
    mean = lambda name: torch.stack([getattr(terms, name).float() for terms in per_t]).mean()  # noqa: E731
    return LossTerms(loss=mean("loss"), diffusion_loss=mean("diffusion_loss"), latent_loss=mean("latent_loss"))


class CoTrainingModule(nn.Module):
    """The trainable parts as ONE ``nn.Module`` whose ``forward`` returns the loss terms.

    Hand it to DeepSpeed (``deepspeed.initialize(model=CoTrainingModule(pipe), ...)``): only the
    pipeline's trainable components (``pipe.trainable_modules()``) are registered children, so the
    engine, the optimiser and checkpoints see exactly those. The frozen parts are held as plain
    attributes: they are called, never registered, never updated. The modules are the pipeline's own
    objects, so after training ``pipe.save_pretrained(dir)`` exports the trained weights.
    """

    def __init__(self, pipeline, latent_weight: float = 1.0, start_weight: float = 0.0, noise_from: str = "sharp",
                 fidelity: str = "mse"):
        super().__init__()
        trainable = pipeline.trainable_modules()
        for name, module in trainable.items():
            self.add_module(name, module)
        # Frozen parts, deliberately NOT registered as submodules (object.__setattr__ skips nn.Module).
        object.__setattr__(self, "_frozen", {n: getattr(pipeline, n) for n in ("unet", "controlnet", "lkpn")
                                             if n not in trainable})
        self.noise_scheduler = pipeline.scheduler
        self.latent_weight = latent_weight
        self.start_weight = start_weight
        self.noise_from = noise_from
        self.fidelity = fidelity
        self.z_hat_anchor = bool(pipeline.config.get("z_hat_anchor", False))

    def part(self, name: str) -> nn.Module:
        return self._modules[name] if name in self._modules else self._frozen[name]

    def forward(self, z_0, z_blur, noise, timesteps, context) -> LossTerms:
        return training_step(self.part("unet"), self.part("controlnet"), self.part("lkpn"), self.noise_scheduler,
                             z_0, z_blur, noise, timesteps, context, self.latent_weight, self.z_hat_anchor,
                             self.start_weight, self.noise_from, self.fidelity)
