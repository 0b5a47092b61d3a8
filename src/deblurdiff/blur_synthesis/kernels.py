"""Point-spread functions: camera shake, linear motion, defocus, Gaussian.

Sampling is apart from building: ``sample_psf(generator, blur_cfg)`` draws a JSON-able spec (every
drawn value, including the seed of the camera-shake random walk), and ``build_psf(spec)`` turns a spec
into a (K, K) float32 PSF, deterministically and always on CPU in float64 (so every device gets the
same kernel). So a kernel can be rebuilt from meta.json alone, and the kernel that was applied is the
kernel that is recorded.

Every PSF is odd-sized, non-negative and sums to 1; its centre pixel ``(K // 2, K // 2)`` is the
origin: ``blurry(y) = sum_u psf(K//2 + u) * sharp(y - u)`` (true convolution, as in
``scipy.signal.fftconvolve``; in ``F.conv2d`` terms, correlation with the flipped kernel).
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import torch

from deblurdiff.blur_synthesis.recipe import BlurCfg, DefocusCfg, GaussianCfg, LinearCfg, TrajectoryCfg

__all__ = [
    "sample_psf",
    "related_psf",
    "build_psf",
    "trajectory_path",
    "rasterize_path",
    "defocus_psf",
    "gaussian_psf",
    "kernels_to_array",
]

_B_AND_F_STEPS = 2000  # steps of Boracchi & Foi's createTrajectory.m; statistics are rescaled to it
_B_AND_F_LENGTH = 60.0  # their MaxTotalLength (px), the unit the recurrence runs in


# ----------------------------------------------------------------------------- random draws
def uniform(g: torch.Generator, low: float, high: float) -> float:
    """One draw from U[low, high) on a CPU generator, as a Python float (``low`` exactly when the
    range is a single value; the draw is still made, so later draws do not shift)."""
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    return float(low) if high == low else low + (high - low) * u


def log_uniform(g: torch.Generator, low: float, high: float) -> float:
    if low <= 0 or high == low:  # a range starting at 0 cannot be log-uniform; fall back to uniform
        return uniform(g, low, high)
    return math.exp(uniform(g, math.log(low), math.log(high)))


def randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(int(low), int(high) + 1, (), generator=g))


def choice(g: torch.Generator, weights: dict[str, float]) -> str:
    names = [k for k, w in weights.items() if w > 0]
    w = torch.tensor([weights[k] for k in names], dtype=torch.float64)
    return names[int(torch.multinomial(w, 1, generator=g))]


def bernoulli(g: torch.Generator, p: float) -> bool:
    # always draw (also for p = 0 or 1), so a probability never shifts the draws after it
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p


def _odd(x: float) -> int:
    return 2 * int(round((x - 1) / 2)) + 1


def _odd_in(g: torch.Generator, low: float, high: float) -> int:
    """Odd integer in [low, high], log-uniform (small blurs are more common than huge ones)."""
    lo, hi = 2 * math.ceil((low - 1) / 2) + 1, 2 * math.floor((high - 1) / 2) + 1
    return min(hi, max(lo, _odd(log_uniform(g, lo, hi))))


# ----------------------------------------------------------------------------- sampling
def sample_psf(g: torch.Generator, cfg: BlurCfg) -> dict:
    """Draw one PSF spec (JSON-able) from the recipe's family weights and ranges."""
    family = choice(g, cfg.families.model_dump())
    if family == "trajectory":
        return _sample_trajectory(g, cfg.trajectory)
    if family == "linear":
        return _sample_linear(g, cfg.linear)
    if family == "defocus":
        return _sample_defocus(g, cfg.defocus)
    return _sample_gaussian(g, cfg.gaussian)


def related_psf(g: torch.Generator, first: dict, rotation: tuple[float, float], scale: tuple[float, float], max_size: int) -> dict:
    """Another region's view of the same camera shake: ``first``'s path turned by a drawn angle and
    scaled by a drawn factor (size kept odd, within [5, max_size])."""
    turn, factor = uniform(g, *rotation), uniform(g, *scale)
    size = min(max_size, max(5, _odd(first["size"] * factor)))
    return {**first, "size": size, "rotation": first.get("rotation", 0.0) + turn}


def _sample_trajectory(g: torch.Generator, c: TrajectoryCfg) -> dict:
    return {
        "family": "trajectory",
        "size": _odd_in(g, *c.size),
        "steps": c.steps,
        "anxiety": uniform(g, *c.anxiety),
        "centripetal": uniform(g, *c.centripetal),
        "gaussian": uniform(g, *c.gaussian),
        "impulsive": uniform(g, *c.impulsive),
        "exposure": uniform(g, *c.exposure),
        "walk_seed": int(torch.randint(0, 2**62, (), generator=g)),
    }


def _sample_linear(g: torch.Generator, c: LinearCfg) -> dict:
    return {"family": "linear", "length": uniform(g, *c.length), "angle": uniform(g, *c.angle)}


def _sample_defocus(g: torch.Generator, c: DefocusCfg) -> dict:
    radius = uniform(g, *c.radius)
    polygon = bernoulli(g, c.polygon_prob)
    blades = randint(g, *c.blades)
    rotation = uniform(g, 0.0, 360.0)
    spec = {"family": "defocus", "radius": radius, "aperture": "polygon" if polygon else "disk"}
    if polygon:
        spec.update(blades=blades, rotation=rotation)
    return spec


def _sample_gaussian(g: torch.Generator, c: GaussianCfg) -> dict:
    sigma = uniform(g, *c.sigma)
    anisotropic = bernoulli(g, c.anisotropic_prob)
    ratio = uniform(g, *c.ratio)
    angle = uniform(g, *c.angle)
    if not anisotropic:
        ratio, angle = 1.0, 0.0
    return {"family": "gaussian", "sigma_x": sigma, "sigma_y": sigma * ratio, "angle": angle}


# ----------------------------------------------------------------------------- building
def build_psf(spec: dict) -> torch.Tensor:
    """(K, K) float32 PSF on CPU from a spec drawn by ``sample_psf`` (or read back from meta.json)."""
    family = spec["family"]
    if family == "trajectory":
        size = int(spec["size"])
        path = trajectory_path(
            spec["walk_seed"], spec["steps"], spec["anxiety"], spec["centripetal"], spec["gaussian"], spec["impulsive"]
        )
        exposed = path[: max(2, int(round(spec["exposure"] * len(path))))]
        # a region of a rotating camera; degrees counter-clockwise as displayed (like `linear.angle`)
        turn = math.radians(spec.get("rotation", 0.0))
        if turn:
            c, s = math.cos(turn), math.sin(turn)
            exposed = exposed @ torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        # The path spans size - 3 px (bilinear splats need the margin); a 3-px PSF gets a 1-px path, the
        # longest that fits, not a 0-px one: a single point would be a delta, a "blur" that changes nothing.
        psf = rasterize_path(_fit_to_canvas(exposed, max(size - 3, 1), size), size)
    elif family == "linear":
        half = spec["length"] / 2
        angle = math.radians(spec["angle"])
        ends = torch.tensor([[-half * math.cos(angle), half * math.sin(angle)], [half * math.cos(angle), -half * math.sin(angle)]], dtype=torch.float64)
        size = max(3, _odd(math.ceil(spec["length"]) + 3))
        psf = rasterize_path(ends + (size - 1) / 2, size)
    elif family == "defocus":
        psf = defocus_psf(spec["radius"], spec.get("blades", 0), spec.get("rotation", 0.0))
    elif family == "gaussian":
        psf = gaussian_psf(spec["sigma_x"], spec["sigma_y"], spec["angle"])
    else:
        raise ValueError(f"unknown PSF family {family!r}")
    psf = psf.clamp_min(0)
    return (psf / psf.sum()).to(torch.float32)


def trajectory_path(seed: int, steps: int, anxiety: float, centripetal: float, gaussian: float, impulsive: float) -> torch.Tensor:
    """Camera-shake trajectory (steps, 2) as (x, y), after Boracchi & Foi, "Modeling the performance
    of image restoration from motion blur", IEEE TIP 2012 (``createTrajectory.m``).

    The camera moves at constant speed; each step its velocity gets a Gaussian shake, a pull back
    towards the start (``centripetal``) and, rarely, an impulsive shake that reverses it. Their script
    runs 2000 steps; we run ``steps`` and rescale the per-step terms (shake std by sqrt(r), pull and
    impulse rate by r, r = 2000 / steps) so that the shape statistics stay those of the original.
    """
    g = torch.Generator().manual_seed(int(seed))
    r = _B_AND_F_STEPS / steps
    step = _B_AND_F_LENGTH / (steps - 1)  # constant speed, B&F units (px of a 64-px canvas)
    init_angle = float(torch.rand((), generator=g, dtype=torch.float64)) * 2 * math.pi
    u_jump = torch.rand(steps, generator=g, dtype=torch.float64).tolist()
    u_dir = torch.rand(steps, generator=g, dtype=torch.float64).tolist()
    n = torch.randn(steps, 2, generator=g, dtype=torch.float64).tolist()
    p_jump, shake, pull = impulsive * anxiety * r, anxiety * gaussian * math.sqrt(r), anxiety * centripetal * r

    v = cmath.exp(1j * init_angle) * step
    x = 0j
    xs = [x]
    for t in range(steps - 1):  # a sequential recurrence (normalised velocity): a plain loop is clearest
        jump = 2 * v * cmath.exp(1j * (math.pi + (u_dir[t] - 0.5))) if u_jump[t] < p_jump else 0
        v = v + jump + (shake * complex(n[t][0], n[t][1]) - pull * x) * step
        v = v / abs(v) * step if v != 0 else cmath.exp(1j * init_angle) * step
        x = x + v
        xs.append(x)
    # complex128 viewed as (real, imag) float64 pairs: the same numbers as a list of [x, y], ~10x faster
    return torch.from_numpy(np.array(xs, dtype=np.complex128).view(np.float64).reshape(-1, 2))


def _fit_to_canvas(points: torch.Tensor, extent: float, size: int) -> torch.Tensor:
    """Scale a path so its bounding box's longer side is ``extent`` px and centre the box on the centre
    pixel ``(size - 1) / 2`` of a ``size``-px canvas (``extent`` <= ``size`` - 2 keeps every bilinear
    splat inside it)."""
    lo, hi = points.min(0).values, points.max(0).values
    span = float((hi - lo).max())
    scale = extent / span if span > 1e-9 else 0.0
    return (points - (lo + hi) / 2) * scale + (size - 1) / 2


def rasterize_path(points: torch.Tensor, size: int, spacing: float = 0.25) -> torch.Tensor:
    """Sub-pixel rasterisation of a constant-speed polyline (N, 2) (x, y in px) into a (size, size)
    float64 map: resample uniformly in arc length every ``spacing`` px (equal time per sample) and
    splat each sample bilinearly onto its 4 neighbouring pixels."""
    seg = (points[1:] - points[:-1]).norm(dim=1)
    arc = torch.cat([torch.zeros(1, dtype=points.dtype), seg.cumsum(0)])
    total = float(arc[-1])
    count = max(2, math.ceil(total / spacing) + 1)
    s = torch.linspace(0, total, count, dtype=points.dtype)
    idx = torch.searchsorted(arc, s, right=True).clamp(1, len(points) - 1)
    t = ((s - arc[idx - 1]) / seg[idx - 1].clamp_min(1e-12)).clamp(0, 1)[:, None]
    pts = points[idx - 1] + t * (points[idx] - points[idx - 1])  # (count, 2)

    x0, y0 = pts[:, 0].floor(), pts[:, 1].floor()
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    canvas = torch.zeros(size * size, dtype=points.dtype)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        canvas.index_add_(0, (yi * size + xi)[inside], w[inside])
    return canvas.view(size, size)


def defocus_psf(radius: float, blades: int = 0, rotation: float = 0.0) -> torch.Tensor:
    """Uniform disk (``blades`` = 0) or regular ``blades``-gon aperture of circumradius ``radius`` px,
    anti-aliased by a 1-px linear ramp at the edge; (K, K) float64, K = 2 ceil(radius) + 3."""
    half = math.ceil(radius) + 1
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1, dtype=torch.float64), torch.arange(-half, half + 1, dtype=torch.float64), indexing="ij")
    dist = torch.hypot(xx, yy)
    edge = torch.full_like(dist, radius)
    if blades >= 3:  # distance from the centre to a regular polygon's edge along each pixel's direction
        sector = 2 * math.pi / blades
        theta = torch.remainder(torch.atan2(yy, xx) - math.radians(rotation), sector) - sector / 2
        edge = radius * math.cos(math.pi / blades) / torch.cos(theta)
    return (edge + 0.5 - dist).clamp(0, 1)


def gaussian_psf(sigma_x: float, sigma_y: float, angle: float) -> torch.Tensor:
    """Anisotropic Gaussian with std ``sigma_x`` along direction ``angle`` (degrees) and ``sigma_y``
    across it; (K, K) float64 with K = 2 ceil(3 max sigma) + 1 (isotropic when the sigmas agree)."""
    half = max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1, dtype=torch.float64), torch.arange(-half, half + 1, dtype=torch.float64), indexing="ij")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u, v = c * xx + s * yy, -s * xx + c * yy
    return torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))


# ----------------------------------------------------------------------------- serialisation
def pad_to(psf: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an odd (K, K) PSF symmetrically to (size, size): the centre stays the origin, so the
    convolution it describes is unchanged."""
    p = (size - psf.shape[-1]) // 2
    return torch.nn.functional.pad(psf, (p, p, p, p)) if p > 0 else psf


def kernels_to_array(kernels) -> np.ndarray:
    """One sample's PSFs as one float32 array (n_psf, K, K), each zero-padded (centred) to the largest
    size — the ``kernel.npy`` layout. Accepts ``SynthesisResult.kernels[i]`` (an (n, K, K) tensor) or a
    list of (K_j, K_j) tensors/arrays. Convention: true convolution about the centre pixel (module doc)."""
    items = [torch.as_tensor(k) for k in (kernels if not torch.is_tensor(kernels) or kernels.dim() == 3 else [kernels])]
    size = max(k.shape[-1] for k in items)
    return torch.stack([pad_to(k.detach().cpu().float(), size) for k in items]).numpy()
