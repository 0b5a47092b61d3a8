"""Realistic blur synthesis: camera-shake/motion/defocus/Gaussian PSFs, spatially varying blur,
linear light, saturation, Poisson–Gaussian noise, Bayer, JPEG — batched, seeded and recorded.

Public API (DESIGN §2)::

    from deblurdiff.blur_synthesis import synthesize, load_recipe, kernels_to_array
    out = synthesize(sharp, recipe="realistic", seeds=[0, 1])   # sharp (B, 3, H, W) in [0, 1]
    out.blurry            # (B, 3, H, W) in [0, 1]
    out.kernels[i]        # (n_psf, K, K) float32: the PSF(s) applied to sample i
    out.params[i]         # JSON-able dict: recipe name + hash, seed, every drawn value
    kernels_to_array(out.kernels[i])   # np.float32 (n_psf, K, K) for kernel.npy

Convolution convention: true convolution about the PSF's centre pixel
(``scipy.signal.fftconvolve(mode="same")``; ``F.conv2d(x, psf.flip(-2, -1), padding=K // 2)``).
"""

from deblurdiff.blur_synthesis.kernels import build_psf, kernels_to_array, sample_psf
from deblurdiff.blur_synthesis.recipe import Recipe, RecipeError, builtin_recipes, load_recipe
from deblurdiff.blur_synthesis.synthesize import SynthesisResult, build_kernels, build_masks, degrade, sample_params, synthesize

__all__ = [
    "synthesize",
    "load_recipe",
    "kernels_to_array",
    "Recipe",
    "RecipeError",
    "SynthesisResult",
    "builtin_recipes",
    "sample_params",
    "build_kernels",
    "build_masks",
    "degrade",
    "sample_psf",
    "build_psf",
]
