"""Request limits and query-parameter validation for the HTTP API (DESIGN §4).

Pure Python (no Ray, no torch) so it is unit-testable and cheap in the ingress. Every rejection is an
:class:`ApiError` carrying the HTTP status, a stable machine-readable ``code`` and a one-line message
naming the field and why; the ingress turns it into ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Mapping

from pydantic import Field, model_validator

from deblurdiff.config import Section

__all__ = [
    "ACCEPTED_FORMATS",
    "OUTPUT_FORMATS",
    "ApiError",
    "DeblurParams",
    "Limits",
    "auto_tile",
    "parse_params",
]

# Input formats the API accepts (names as ``deblurdiff.imageio.probe`` reports them).
ACCEPTED_FORMATS = ("png", "jpeg", "webp")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed accepts any int64


class ApiError(Exception):
    """A request the API refuses: HTTP ``status``, stable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class Limits(Section):
    """Ingress runtime settings (Serve ``user_config`` of ``DeblurIngress``; changeable live).

    Defaults: 20 MiB bodies, 16 MP (4096 x 4096) images, 1-200 steps; large images are tiled.
    """

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)  # checked before the body is read
    # A refused body is read and discarded up to these bounds before the 413, so that clients which
    # send the whole body first (urllib, requests) can read the answer; past them the server hangs up.
    max_drain_bytes: int = Field(256 * 1024 * 1024, ge=0)
    drain_timeout_s: float = Field(10.0, ge=0)
    max_pixels: int = Field(4096 * 4096, ge=1)  # checked on the header, before decoding
    max_steps: int = Field(200, ge=1)
    # Steps when a request gives none; None: the steps the model was validated with (its recorded
    # sampling settings, /v1/info "default_sampling"; 50-step DDPM for the released model).
    default_steps: int | None = Field(None, ge=1)
    # Whole request budget in the model deployment (queue + inference); past it the client gets 504.
    request_timeout_s: float = Field(300.0, gt=0)
    # Images above this many pixels go through tiled inference (bounded memory) unless `tile` is given.
    tile_above_pixels: int = Field(1024 * 1024, ge=1)
    default_tile: int = Field(512, ge=64)
    max_tile: int = Field(2048, ge=64)

    @model_validator(mode="after")
    def _consistent(self):
        if self.default_steps is not None and self.default_steps > self.max_steps:
            raise ValueError(f"default_steps ({self.default_steps}) must be <= max_steps ({self.max_steps})")
        if self.default_tile % 64 or self.max_tile % 64:
            raise ValueError("default_tile and max_tile must be multiples of 64")
        return self


@dataclass(frozen=True)
class DeblurParams:
    """Validated query parameters of ``POST /v1/deblur``."""

    steps: int | None  # None: the model's validated steps
    sampler: str | None  # None: the model's validated sampler
    strength: float | None  # None: the model's validated strength (where sampling starts, [0, 1]; 0: ẑ decoded)
    seed: int
    tile: int | None  # None: whole image; else tile size in pixels
    format: str  # output encoding: png | jpeg | webp


def _int_param(query: Mapping[str, str], name: str, low: int, high: int, hint: str = "") -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name}: expected an integer{hint}, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(422, "invalid_parameter", f"{name}: must be between {low} and {high}, got {value}")
    return value


KNOWN_PARAMS = ("steps", "sampler", "strength", "seed", "tile", "format")


def _strength_param(query: Mapping[str, str]) -> float | None:
    raw = query.get("strength")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"strength: expected a number in [0, 1], got {raw!r}") from None
    if not 0 <= value <= 1:
        raise ApiError(422, "invalid_parameter", f"strength: must be in [0, 1], got {value:g}")
    return value


def parse_params(query: Mapping[str, str], limits: Limits, samplers: tuple[str, ...] | list[str]) -> DeblurParams:
    """Validate ``steps``, ``sampler``, ``strength``, ``seed``, ``tile``, ``format`` (422 on anything wrong).

    Runs before the body is read, so a bad parameter costs the server nothing.
    """
    unknown = sorted(set(query) - set(KNOWN_PARAMS))
    if unknown:
        raise ApiError(422, "invalid_parameter",
                       f"{unknown[0]}: unknown parameter (expected one of {', '.join(KNOWN_PARAMS)})")
    steps = _int_param(query, "steps", 1, limits.max_steps)
    sampler = query.get("sampler") or None
    if sampler is not None and sampler not in samplers:
        raise ApiError(422, "invalid_parameter",
                       f"sampler: expected one of {', '.join(samplers)}, got {sampler!r}")
    seed = _int_param(query, "seed", 0, _SEED_MAX)
    tile = _int_param(query, "tile", 64, limits.max_tile, " (pixels, a multiple of 64)")
    if tile is not None and tile % 64:
        raise ApiError(422, "invalid_parameter", f"tile: must be a multiple of 64, got {tile}")
    fmt = (query.get("format") or "png").lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise ApiError(422, "invalid_parameter",
                       f"format: expected one of {', '.join(OUTPUT_FORMATS)}, got {query.get('format')!r}")
    return DeblurParams(
        steps=steps if steps is not None else limits.default_steps,
        sampler=sampler,
        strength=_strength_param(query),
        # No seed given: draw one and report it (X-Deblur-Seed) so the result can be reproduced.
        seed=seed if seed is not None else random.randrange(2**31),
        tile=tile,
        format=fmt,
    )


def auto_tile(params: DeblurParams, pixels: int, limits: Limits) -> DeblurParams:
    """Large images go through tiled inference (bounded memory) unless the client chose a tile."""
    if params.tile is None and pixels > limits.tile_above_pixels:
        return replace(params, tile=limits.default_tile)
    return params
