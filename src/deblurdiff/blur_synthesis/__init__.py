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

from __future__ import annotations

import importlib

# Public name -> the submodule that defines it. Loaded on first use (PEP 562), so a caller that only
# reads recipes (the synth driver: ``load_recipe``) does not import torch and kornia (~2 s).
_EXPORTS = {
    "synthesize": "synthesis", "SynthesisResult": "synthesis", "sample_params": "synthesis",
    "build_kernels": "synthesis", "build_masks": "synthesis", "degrade": "synthesis",
    "load_recipe": "recipe", "Recipe": "recipe", "RecipeError": "recipe", "builtin_recipes": "recipe",
    "kernels_to_array": "kernels", "sample_psf": "kernels", "build_psf": "kernels",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
