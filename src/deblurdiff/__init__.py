"""DeblurDiff: Latent Kernel Prediction Network + Element-wise Adaptive Convolution steering a
ControlNet on a frozen Stable Diffusion (arXiv 2502.03810), as a platform on Ray."""

__version__ = "0.1.0"

__all__ = ["DeblurDiffPipeline", "__version__"]


def __getattr__(name: str):
    # Lazy: `import deblurdiff` (and the CLI's --help) must not import torch/diffusers.
    if name == "DeblurDiffPipeline":
        from deblurdiff.diffusion import DeblurDiffPipeline

        return DeblurDiffPipeline
    raise AttributeError(f"module 'deblurdiff' has no attribute {name!r}")
