"""DeblurDiff's networks (LKPN, latent ControlNet, the tiny autoencoder), presets and the loss."""

from deblurdiff.models.autoencoder import ExactAutoencoder
from deblurdiff.models.controlnet import LatentControlNet, LatentHintEmbedding
from deblurdiff.models.lkpn import LKPN, LKPNOutput
from deblurdiff.models.objective import (
    FIXED_TIMESTEPS,
    CoTrainingModule,
    LossTerms,
    NoisePrediction,
    deblurdiff_loss,
    diffusion_target,
    fixed_timestep_losses,
    output_for_x0,
    predict_noise,
    training_step,
    x0_from_output,
)
from deblurdiff.models.presets import COMPONENTS, PRESETS, PipelineParts, ddpm_scheduler, sd21, tiny
from deblurdiff.models.text import NullTextEmbedding
from deblurdiff.models.unet import WindowedUNet2DConditionModel  # imported: diffusers loads it by module name

__all__ = [
    "COMPONENTS",
    "FIXED_TIMESTEPS",
    "CoTrainingModule",
    "ExactAutoencoder",
    "LKPN",
    "LKPNOutput",
    "LatentControlNet",
    "LatentHintEmbedding",
    "LossTerms",
    "NoisePrediction",
    "NullTextEmbedding",
    "PRESETS",
    "PipelineParts",
    "ddpm_scheduler",
    "deblurdiff_loss",
    "diffusion_target",
    "fixed_timestep_losses",
    "output_for_x0",
    "predict_noise",
    "sd21",
    "tiny",
    "training_step",
    "WindowedUNet2DConditionModel",
    "x0_from_output",
]
