"""PSFs: valid (non-negative, sum 1, odd, centred), the sizes asked for, rebuildable from their spec."""

import json
import math

import numpy as np
import pytest
import torch
from kornia.filters import get_gaussian_kernel2d

from deblurdiff.blur_synthesis import build_psf, kernels_to_array, load_recipe, sample_psf
from deblurdiff.blur_synthesis.kernels import defocus_psf, gaussian_psf


def _centroid(k: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(k.shape[0], dtype=torch.float64), torch.arange(k.shape[1], dtype=torch.float64), indexing="ij")
    k = k.double()
    return float((k * xs).sum()), float((k * ys).sum())


@pytest.mark.parametrize("recipe", ["realistic", "defocus", "diffbir", "clean-motion"])
def test_sampled_psfs_are_valid_and_rebuildable(recipe):
    cfg = load_recipe(recipe).blur
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        spec = sample_psf(g, cfg)
        k = build_psf(spec)
        assert k.dtype == torch.float32 and k.dim() == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert k.shape[0] <= 127 or spec["family"] in ("defocus", "gaussian")
        assert (k >= 0).all() and abs(float(k.sum()) - 1) < 1e-5 and torch.isfinite(k).all()
        # the JSON record alone rebuilds the same kernel (meta.json -> kernel)
        assert torch.equal(build_psf(json.loads(json.dumps(spec))), k)


def test_trajectory_psfs_reach_127_px_and_are_thin_curves():
    spec = {"family": "trajectory", "size": 127, "steps": 384, "anxiety": 0.005, "centripetal": 0.3, "gaussian": 5.0,
            "impulsive": 0.1, "exposure": 1.0, "walk_seed": 7}
    k = build_psf(spec)
    assert k.shape == (127, 127)
    rows, cols = torch.nonzero(k, as_tuple=True)
    # the path spans the canvas along its longer side (extent = size - 3, +1 px of bilinear splat)
    span = max(int(rows.max() - rows.min()), int(cols.max() - cols.min()))
    assert 122 <= span <= 126
    # a 1-D curve, not a blob: it covers a small fraction of the canvas
    assert (k > 0).float().mean() < 0.15
    # sub-pixel rasterisation: no holes along the path (8-connected support)
    from scipy.ndimage import label

    _, n = label((k > 0).numpy(), structure=np.ones((3, 3)))
    assert n == 1


@pytest.mark.parametrize("walk_seed", range(8))
def test_the_smallest_trajectory_psf_still_blurs_and_stays_centred(walk_seed):
    # small-handheld draws 3-px shake PSFs for about a fifth of its pairs; a 0-px path made them a delta
    # (the "blurred" image equal to the sharp one), so a 3-px PSF holds a 1-px path.
    spec = {"family": "trajectory", "size": 3, "steps": 384, "anxiety": 0.004, "centripetal": 0.3, "gaussian": 5.0,
            "impulsive": 0.1, "exposure": 0.7, "walk_seed": walk_seed}
    k = build_psf(spec)
    assert k.shape == (3, 3) and float(k.max()) < 0.9 and int((k > 0.01).sum()) >= 2
    cx, cy = _centroid(k)
    assert abs(cx - 1) <= 0.5 and abs(cy - 1) <= 0.5
    recipe = load_recipe("small-handheld").blur
    g = torch.Generator().manual_seed(walk_seed)
    assert all(float(build_psf(sample_psf(g, recipe)).max()) < 0.999 for _ in range(40))  # no delta at all


def test_trajectory_depends_on_its_walk_seed_only():
    base = {"family": "trajectory", "size": 63, "steps": 256, "anxiety": 0.005, "centripetal": 0.3, "gaussian": 5.0,
            "impulsive": 0.1, "exposure": 0.8, "walk_seed": 1}
    assert torch.equal(build_psf(base), build_psf(dict(base)))
    assert not torch.equal(build_psf(base), build_psf({**base, "walk_seed": 2}))


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0])
def test_linear_motion_is_a_centred_segment_at_the_angle(angle):
    k = build_psf({"family": "linear", "length": 21.0, "angle": angle})
    c = (k.shape[0] - 1) / 2
    cx, cy = _centroid(k)
    assert abs(cx - c) < 0.05 and abs(cy - c) < 0.05
    # principal axis of the mass distribution = the motion direction (image y points down)
    ys, xs = torch.meshgrid(torch.arange(k.shape[0], dtype=torch.float64) - c, torch.arange(k.shape[1], dtype=torch.float64) - c, indexing="ij")
    kd = k.double()
    cov = torch.tensor([[(kd * xs * xs).sum(), (kd * xs * ys).sum()], [(kd * xs * ys).sum(), (kd * ys * ys).sum()]])
    evals, evecs = torch.linalg.eigh(cov)
    major = evecs[:, 1]
    measured = math.degrees(math.atan2(-float(major[1]), float(major[0]))) % 180
    assert min(abs(measured - angle), 180 - abs(measured - angle)) < 1.0
    # variance of a uniform segment of length L is L^2 / 12
    assert abs(float(evals[1]) - 21.0**2 / 12) / (21.0**2 / 12) < 0.08


def test_defocus_disk_and_polygon():
    disk = defocus_psf(6.0)
    assert torch.allclose(disk, disk.flip(0)) and torch.allclose(disk, disk.T)
    area = float(disk.sum())
    assert abs(area - math.pi * 36) / (math.pi * 36) < 0.03  # anti-aliased edge keeps the area
    hexagon = defocus_psf(6.0, blades=6, rotation=0.0)
    expected = 3 * math.sqrt(3) / 2 * 36  # area of a regular hexagon of circumradius 6
    assert abs(float(hexagon.sum()) - expected) / expected < 0.04
    assert float(hexagon.sum()) < area  # a polygon inscribed in the disk


def test_gaussian_isotropic_matches_kornia_and_anisotropic_has_its_sigmas():
    k = gaussian_psf(2.0, 2.0, 0.0)
    k = k / k.sum()
    ref = get_gaussian_kernel2d((k.shape[0], k.shape[1]), (2.0, 2.0), dtype=torch.float64)[0]
    assert torch.allclose(k, ref / ref.sum(), atol=1e-6)
    a = build_psf({"family": "gaussian", "sigma_x": 4.0, "sigma_y": 1.0, "angle": 90.0}).double()
    c = (a.shape[0] - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(a.shape[0], dtype=torch.float64) - c, torch.arange(a.shape[1], dtype=torch.float64) - c, indexing="ij")
    # angle 90 degrees: the long axis is vertical
    assert abs(math.sqrt(float((a * ys * ys).sum())) - 4.0) < 0.1
    assert abs(math.sqrt(float((a * xs * xs).sum())) - 1.0) < 0.05


def test_kernels_to_array_pads_centred_to_one_float32_array():
    small, big = build_psf({"family": "linear", "length": 5.0, "angle": 0.0}), build_psf({"family": "linear", "length": 30.0, "angle": 45.0})
    arr = kernels_to_array([small, big])
    assert arr.dtype == np.float32 and arr.shape == (2, big.shape[0], big.shape[0])
    assert np.allclose(arr.sum((1, 2)), 1, atol=1e-6)
    cx, cy = _centroid(torch.from_numpy(arr[0]))
    assert abs(cx - (big.shape[0] - 1) / 2) < 1e-3 and abs(cy - (big.shape[0] - 1) / 2) < 1e-3
    assert kernels_to_array(big).shape == (1, *big.shape)  # a single 2-D kernel


def test_rotated_trajectory_is_the_same_shake_turned():
    spec = {"family": "trajectory", "size": 41, "steps": 256, "anxiety": 0.005, "centripetal": 0.3, "gaussian": 5.0,
            "impulsive": 0.1, "exposure": 0.9, "walk_seed": 3}
    k0 = build_psf(spec)
    k90 = build_psf({**spec, "rotation": 90.0})
    # a quarter turn of the path is a quarter turn of the PSF, counter-clockwise as displayed
    assert torch.allclose(k90, torch.rot90(k0, k=1, dims=(0, 1)), atol=1e-6)
    assert not torch.allclose(k90, k0, atol=1e-3)


def test_shared_shake_regions_reuse_the_path():
    from deblurdiff.blur_synthesis import Recipe, sample_params

    d = load_recipe("realistic").to_dict()
    d["blur"]["families"] = {"trajectory": 1.0, "linear": 0.0, "defocus": 0.0, "gaussian": 0.0}
    d["blur"]["spatially_varying"].update(prob=1.0, shared_shake=1.0, regions=[3, 3])
    r = Recipe.from_dict(d)
    for seed in range(5):
        psfs = sample_params(r, seed)["blur"]["psfs"]
        assert len(psfs) == 3 and len({p["walk_seed"] for p in psfs}) == 1
        assert all(-25 <= p.get("rotation", 0.0) <= 25 and 5 <= p["size"] <= 127 and p["size"] % 2 for p in psfs)
