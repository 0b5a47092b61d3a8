"""The drawn parameters of one synthesised sample, typed.

``sample_params`` draws a :class:`SampleParams`; the stages read its attributes (``p.noise.shot``),
not nested string keys. Outside, it travels as the JSON-able dict of DESIGN §2 (``synthesize().params``,
``meta.json``): :meth:`SampleParams.to_dict` / :meth:`SampleParams.from_dict` convert, losslessly.
A PSF spec stays a dict (``kernels.sample_psf`` / ``build_psf``): its keys depend on the family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["BayerParams", "BlurParams", "JpegParams", "LinearLightParams", "MaskParams", "NoiseParams",
           "SampleParams", "SaturationParams"]


@dataclass(frozen=True)
class LinearLightParams:
    applied: bool
    curve: str  # "srgb" | "gamma"
    gamma: float


@dataclass(frozen=True)
class SaturationParams:
    applied: bool
    threshold: float
    gain: float


@dataclass(frozen=True)
class MaskParams:
    centres: list[list[float]]  # (n, 2) region centres, (y, x) in [0, 1]
    softness: float


@dataclass(frozen=True)
class BlurParams:
    psfs: list[dict]  # one spec per region (kernels.build_psf)
    border: str
    masks: MaskParams | None  # None: one spatially uniform PSF


@dataclass(frozen=True)
class BayerParams:
    applied: bool
    cfa: str


@dataclass(frozen=True)
class NoiseParams:
    applied: bool
    shot: float
    read: float
    noise_seed: int  # seeds the noise field's own generator


@dataclass(frozen=True)
class JpegParams:
    applied: bool
    quality: int


@dataclass(frozen=True)
class SampleParams:
    recipe: str
    recipe_hash: str
    seed: int
    linear_light: LinearLightParams
    saturation: SaturationParams
    blur: BlurParams
    bayer: BayerParams
    noise: NoiseParams
    jpeg: JpegParams

    def to_dict(self) -> dict:
        """The JSON-able record (``synthesize().params[i]``, ``meta.json``'s ``params``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SampleParams:
        blur = data["blur"]
        masks = blur["masks"]
        return cls(
            recipe=data["recipe"], recipe_hash=data["recipe_hash"], seed=data["seed"],
            linear_light=LinearLightParams(**data["linear_light"]),
            saturation=SaturationParams(**data["saturation"]),
            blur=BlurParams(psfs=[dict(p) for p in blur["psfs"]], border=blur["border"],
                            masks=None if masks is None else MaskParams(**masks)),
            bayer=BayerParams(**data["bayer"]),
            noise=NoiseParams(**data["noise"]),
            jpeg=JpegParams(**data["jpeg"]),
        )

    @classmethod
    def coerce(cls, params: SampleParams | dict) -> SampleParams:
        """The typed form of either form (the public functions accept a ``meta.json`` record too)."""
        return params if isinstance(params, cls) else cls.from_dict(params)
