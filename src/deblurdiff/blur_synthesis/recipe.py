"""Recipes: YAML-declared degradation stages with ranges and probabilities, validated at load.

A recipe is a flat YAML file (see ``recipes/*.yaml``). Every stage has a ``prob`` (chance the stage
runs for a sample) and ranges ``[low, high]`` that the sampler draws from. Unknown keys, bad ranges and
probabilities fail at load with one line naming the file, the dotted field and what was expected::

    recipe = load_recipe("realistic")          # a built-in name
    recipe = load_recipe("my_recipe.yaml")     # or a file
    recipe.name, recipe.hash                   # written into meta.json / manifest.json

``hash`` is the sha256 of the canonical JSON of every field that changes the output (everything but
``name`` and ``description``), so reformatting or commenting a file keeps its hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deblurdiff.config import describe_validation_error
from deblurdiff.errors import UsageError

__all__ = ["Recipe", "RecipeError", "load_recipe", "builtin_recipes"]


class RecipeError(UsageError, ValueError):
    """A recipe name, file or field is wrong; the message is one line naming it and why."""


# ----------------------------------------------------------------------------- field types
def _check_range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"expected [low, high] with low <= high, got [{low}, {high}]")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_check_range)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]


def _positive_range(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] <= 0:
        raise ValueError(f"expected positive values, got [{value[0]}, {value[1]}]")
    return value


def _odd_size_range(value: tuple[float, float]) -> tuple[float, float]:
    if not (3 <= value[0] and value[1] <= 255):
        raise ValueError(f"expected PSF sizes within [3, 255] px, got [{value[0]}, {value[1]}]")
    return value


def _within(low: float, high: float):
    def check(value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < low or value[1] > high:
            raise ValueError(f"expected [low, high] within [{low}, {high}], got {list(value)}")
        return value

    return AfterValidator(check)


PositiveRange = Annotated[Range, AfterValidator(_positive_range)]
SizeRange = Annotated[Range, AfterValidator(_odd_size_range)]
def _non_negative(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] < 0:
        raise ValueError(f"expected values >= 0, got {list(value)}")
    return value


NonNegativeRange = Annotated[Range, AfterValidator(_non_negative)]
IntRange = Annotated[tuple[int, int], AfterValidator(_check_range)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- PSF families
class TrajectoryCfg(_Section):
    """Camera shake, Boracchi & Foi (2012): a random walk with inertia, Gaussian and impulsive shakes."""

    size: SizeRange = (15, 127)  # PSF side length in px (log-uniform, made odd); path extent = size - 3
    steps: Annotated[int, Field(ge=16, le=4096)] = 384  # recurrence steps (statistics rescaled to 2000)
    # overall shake amount. B&F draw 0.1 * U, which at 2000 steps gives tangled scribbles; real
    # hand-shake PSFs (Levin et al. 2009, Köhler et al. 2012) are smooth curves with a few bends.
    anxiety: Range = (0.001, 0.008)
    centripetal: Range = (0.0, 0.7)  # pull back to the start (B&F: 0.7 * U)
    gaussian: Range = (0.0, 10.0)  # Gaussian shake strength (B&F: 10 * U)
    impulsive: Range = (0.0, 0.2)  # frequency of big shakes (B&F: 0.2 * U)
    exposure: Range = (0.5, 1.0)  # fraction of the trajectory the shutter sees


class LinearCfg(_Section):
    """Uniform linear motion: a straight segment, rasterised sub-pixel."""

    length: Annotated[Range, AfterValidator(_positive_range)] = (3.0, 60.0)  # px
    angle: Range = (0.0, 180.0)  # degrees


class DefocusCfg(_Section):
    """Out-of-focus blur: a uniform disk or a regular polygon (aperture blades), anti-aliased."""

    radius: PositiveRange = (1.0, 12.0)  # px
    polygon_prob: Prob = 0.4  # chance of a polygonal aperture instead of a disk
    blades: Annotated[IntRange, _within(3, 64)] = (5, 9)


class GaussianCfg(_Section):
    """Gaussian blur, isotropic or anisotropic (rotated)."""

    sigma: PositiveRange = (0.5, 4.0)  # px, major axis
    anisotropic_prob: Prob = 0.5
    ratio: Annotated[Range, AfterValidator(_positive_range)] = (0.2, 1.0)  # minor / major sigma
    angle: Range = (0.0, 180.0)  # degrees


class Families(_Section):
    """Relative weights of the PSF families (normalised; zero disables one)."""

    trajectory: Annotated[float, Field(ge=0.0)] = 0.0
    linear: Annotated[float, Field(ge=0.0)] = 0.0
    defocus: Annotated[float, Field(ge=0.0)] = 0.0
    gaussian: Annotated[float, Field(ge=0.0)] = 0.0

    @model_validator(mode="after")
    def _some_weight(self) -> "Families":
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("expected at least one family with a positive weight")
        return self


class SpatiallyVaryingCfg(_Section):
    """Several PSFs over smooth masks (soft Voronoi regions): blurry = sum_i k_i conv (m_i * sharp)."""

    prob: Prob = 0.0
    regions: Annotated[IntRange, _within(2, 8)] = (2, 3)
    softness: PositiveRange = (0.02, 0.15)  # mask transition width, as a fraction of the image size
    # Camera shake that varies across the frame comes mostly from in-plane rotation: the regions see
    # the same hand motion, turned and scaled. With this probability (when region 1 is a camera-shake
    # PSF) the other regions reuse its path, rotated by `rotation` degrees and scaled by `scale`;
    # otherwise every region draws its own PSF (e.g. depth-dependent defocus next to motion).
    shared_shake: Prob = 0.0
    rotation: Range = (-25.0, 25.0)
    scale: PositiveRange = (0.6, 1.4)


class BlurCfg(_Section):
    families: Families
    trajectory: TrajectoryCfg = TrajectoryCfg()
    linear: LinearCfg = LinearCfg()
    defocus: DefocusCfg = DefocusCfg()
    gaussian: GaussianCfg = GaussianCfg()
    spatially_varying: SpatiallyVaryingCfg = SpatiallyVaryingCfg()
    border: Literal["reflect", "replicate", "circular"] = "reflect"


# ----------------------------------------------------------------------------- image formation
class CurveWeights(_Section):
    srgb: Annotated[float, Field(ge=0.0)] = 1.0  # IEC 61966-2-1 (kornia.color)
    gamma: Annotated[float, Field(ge=0.0)] = 0.0  # x ** gamma with gamma drawn from `gamma_range`


class LinearLightCfg(_Section):
    """Blur in linear light: invert a camera response curve, blur, re-apply it."""

    prob: Prob = 0.0
    curves: CurveWeights = CurveWeights()
    gamma_range: PositiveRange = (1.8, 2.6)


class SaturationCfg(_Section):
    """Saturated highlights (RSBlur): boost bright pixels above 1 before the blur, clip after."""

    prob: Prob = 0.0
    threshold: Range = (0.8, 0.97)  # linear value from which a pixel counts as clipped in the sharp image
    gain: Annotated[Range, AfterValidator(_positive_range)] = (1.5, 6.0)  # true radiance / clipped value


class NoiseCfg(_Section):
    """Poisson–Gaussian sensor noise, heteroscedastic Gaussian form: var(y | x) = shot * x + read**2.

    ``shot`` and ``read`` are drawn log-uniformly; ``read: brooks2019`` ties the read noise to the shot
    noise as in "Unprocessing images" (Brooks et al. 2019): log(read**2) = 2.18 log(shot) + 1.20 + N(0, 0.26).
    """

    prob: Prob = 0.0
    shot: NonNegativeRange = (1e-4, 1.2e-2)  # variance per unit intensity; [0, 0] = no shot noise
    read: Union[Literal["brooks2019"], tuple[float, float]] = "brooks2019"  # read-noise std, or the Brooks relation

    @field_validator("read", mode="before")
    @classmethod
    def _read(cls, value):
        if value == "brooks2019":
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return _non_negative(_check_range((float(value[0]), float(value[1]))))
        raise ValueError("expected 'brooks2019' or a read-noise std range [low, high]")


class BayerCfg(_Section):
    """Mosaic to a Bayer CFA before the noise, demosaic after (kornia.color raw)."""

    prob: Prob = 0.0


class JpegCfg(_Section):
    """JPEG through the real codec (Pillow/libjpeg) at a random quality."""

    prob: Prob = 0.0
    quality: Annotated[IntRange, _within(1, 100)] = (60, 95)


class Recipe(_Section):
    """A validated recipe. Stages run in this order: linear light -> saturation -> blur -> Bayer ->
    noise -> clip -> demosaic -> back to display -> JPEG."""

    name: str
    description: str = ""
    blur: BlurCfg
    linear_light: LinearLightCfg = LinearLightCfg()
    saturation: SaturationCfg = SaturationCfg()
    noise: NoiseCfg = NoiseCfg()
    bayer: BayerCfg = BayerCfg()
    jpeg: JpegCfg = JpegCfg()

    @functools.cached_property
    def canonical_json(self) -> str:
        """Every field that changes the output, as sorted compact JSON (what ``hash`` hashes)."""
        data = self.model_dump(mode="json", exclude={"name", "description"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json.encode()).hexdigest()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> "Recipe":
        """Validate a nested dict; the first problem becomes one RecipeError line naming ``source``."""
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: expected a mapping of stages, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            hint = "check the spelling against the built-in recipes"
            raise RecipeError(describe_validation_error(exc, source, hint)) from None


# ----------------------------------------------------------------------------- loading
_RECIPE_DIR = resources.files("deblurdiff.blur_synthesis") / "recipes"


def builtin_recipes() -> list[str]:
    """Names of the built-in recipes (files ``recipes/<name>.yaml``)."""
    return sorted(p.name.removesuffix(".yaml") for p in _RECIPE_DIR.iterdir() if p.name.endswith(".yaml"))


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~20x faster


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> "Recipe":
    raw = (_RECIPE_DIR / f"{name}.yaml").read_text()
    return Recipe.from_dict(yaml.load(raw, Loader=_SafeLoader), f"recipe {name}")


def load_recipe(name_or_path: "str | Path | Recipe" = "realistic") -> Recipe:
    """A built-in recipe by name (``realistic``, ``clean-motion``, ``defocus``, ``diffbir``) or a YAML
    file by path; a ``Recipe`` passes through. Raises RecipeError (a UsageError and ValueError)."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text
    if not looks_like_path:
        if text not in builtin_recipes():
            raise RecipeError(f"recipe {text!r}: unknown name; built-ins are {', '.join(builtin_recipes())} (or give a .yaml path)")
        return _load_builtin(text)  # validated once per process; Recipe is frozen
    path = Path(text)
    if not path.is_file():
        raise RecipeError(f"recipe {path}: no such file")
    source, raw = str(path), path.read_text()
    try:
        data = yaml.load(raw, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and "name" not in data:
        data["name"] = Path(text).stem
    return Recipe.from_dict(data, source)
