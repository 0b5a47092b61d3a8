"""DeblurDiff's networks (LKPN, latent ControlNet, the tiny autoencoder), presets and the loss."""

from deblurdiff.models.autoencoder import ExactAutoencoder
from deblurdiff.models.controlnet import LatentControlNet, LatentHintEmbedding
from deblurdiff.models.lkpn import LKPN, LKPNOutput
from deblurdiff.models.objective import (
    CoTrainingModule,
    LossTerms,
    NoisePrediction,
    deblurdiff_loss,
    diffusion_target,
    predict_noise,
    training_step,
)
from deblurdiff.models.presets import COMPONENTS, PRESETS, PipelineParts, ddpm_scheduler, sd21, tiny
from deblurdiff.models.text import NullTextEmbedding

__all__ = [
    "COMPONENTS",
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
    "predict_noise",
    "sd21",
    "tiny",
    "training_step",
]
