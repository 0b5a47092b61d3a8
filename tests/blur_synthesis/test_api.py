"""The public contract (DESIGN §2): shapes, ranges, clean-motion == convolution, determinism."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deblurdiff.blur_synthesis import kernels_to_array, load_recipe, synthesize


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    imgs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = [torch.from_numpy(np.ascontiguousarray(im[:160, :192])).permute(2, 0, 1).float() / 255 for im in imgs]
    return torch.stack(crops)  # (4, 3, 160, 192)


@pytest.mark.parametrize("recipe", ["realistic", "clean-motion", "defocus", "diffbir"])
def test_shapes_ranges_and_records(photos, recipe):
    out = synthesize(photos, recipe, seeds=[3, 4, 5, 6])
    assert out.blurry.shape == photos.shape and out.blurry.dtype == photos.dtype
    assert out.blurry.min() >= 0 and out.blurry.max() <= 1
    assert len(out.kernels) == len(out.params) == 4
    for k, p in zip(out.kernels, out.params):
        arr = kernels_to_array(k)
        assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[0] == len(p["blur"]["psfs"])
        assert (arr >= 0).all() and np.allclose(arr.sum((1, 2)), 1, atol=1e-5)
        assert json.loads(json.dumps(p)) == p  # JSON-able, round-trips exactly
        assert p["recipe"] == recipe and p["recipe_hash"] == load_recipe(recipe).hash


def test_clean_motion_is_convolution_away_from_border(photos):
    out = synthesize(photos, "clean-motion", seeds=[10, 11, 12, 13])
    h, w = photos.shape[-2:]
    for i in range(4):
        k = out.kernels[i]
        assert k.shape[0] == 1
        size = k.shape[-1]
        m = size // 2
        # a 16x16 window of interior outputs (any pixel at least K//2 from the border), checked against
        # F.conv2d in valid mode: true convolution = correlation with the flipped kernel
        for y0, x0 in ((m, m), (h - m - 16, w - m - 16)):
            if y0 < m or x0 < m:
                continue
            patch = photos[i : i + 1, :, y0 - m : y0 + 16 + m, x0 - m : x0 + 16 + m].transpose(0, 1)  # (3, 1, ., .)
            ref = F.conv2d(patch, k.flip(-2, -1)[None]).transpose(0, 1)  # (1, 3, 16, 16)
            torch.testing.assert_close(out.blurry[i : i + 1, :, y0 : y0 + 16, x0 : x0 + 16], ref, atol=2e-5, rtol=0)
        # and it is blurred: not the sharp image
        assert (out.blurry[i] - photos[i]).abs().mean() > 1e-3


def test_same_seed_same_result_whatever_the_batch(photos):
    seeds = [101, 102, 103, 104]
    batch = synthesize(photos, "realistic", seeds=seeds)
    for i in range(4):
        alone = synthesize(photos[i : i + 1], "realistic", seeds=[seeds[i]])
        assert torch.equal(alone.blurry[0], batch.blurry[i])
        assert torch.equal(alone.kernels[0], batch.kernels[i])
        assert alone.params[0] == batch.params[i]
    # reversed order: each sample follows its seed, not its position
    rev = synthesize(photos.flip(0), "realistic", seeds=seeds[::-1])
    assert torch.equal(rev.blurry.flip(0), batch.blurry)
    # a different seed gives a different degradation
    other = synthesize(photos[:1], "realistic", seeds=[999])
    assert not torch.equal(other.blurry[0], batch.blurry[0])


@pytest.mark.parametrize("recipe", ["realistic", "clean-motion"])
def test_odd_sizes_float64_and_non_contiguous(recipe):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 97, 131, 3, generator=g, dtype=torch.float64).permute(0, 3, 1, 2)  # non-contiguous
    out = synthesize(x, recipe, seeds=[5, 6])
    assert out.blurry.shape == (2, 3, 97, 131) and out.blurry.dtype == torch.float64
    assert torch.isfinite(out.blurry).all() and out.blurry.min() >= 0 and out.blurry.max() <= 1
    same = synthesize(x.contiguous(), recipe, seeds=[5, 6])
    torch.testing.assert_close(out.blurry, same.blurry, atol=1e-12, rtol=0)


def test_kernels_and_masks_rebuild_from_the_json_record(photos):
    from deblurdiff.blur_synthesis import build_kernels, build_masks

    out = synthesize(photos, "realistic", seeds=[40, 41, 42, 43])
    for k, p in zip(out.kernels, out.params):
        record = json.loads(json.dumps(p))
        assert torch.equal(build_kernels(record), k)
        masks = build_masks(record, 160, 192)
        assert (masks is None) == (k.shape[0] == 1)


def test_every_stage_of_realistic_is_exercised_and_recorded():
    from deblurdiff.blur_synthesis import sample_params

    r = load_recipe("realistic")
    ps = [sample_params(r, s) for s in range(300)]
    for stage, prob in (("linear_light", 0.9), ("saturation", 0.5), ("noise", 0.9), ("bayer", 0.3), ("jpeg", 0.7)):
        rate = np.mean([p[stage]["applied"] for p in ps])
        assert abs(rate - prob) < 0.1, (stage, rate)
    families = {spec["family"] for p in ps for spec in p["blur"]["psfs"]}
    assert families == {"trajectory", "linear", "defocus", "gaussian"}
    assert 0.2 < np.mean([len(p["blur"]["psfs"]) > 1 for p in ps]) < 0.4
    assert max(spec["size"] for p in ps for spec in p["blur"]["psfs"] if spec["family"] == "trajectory") == 127
    assert all(60 <= p["jpeg"]["quality"] <= 95 for p in ps)


def test_bad_inputs_raise_clear_errors(photos):
    with pytest.raises(ValueError, match=r"one int per sample, got 2 for a batch of 4"):
        synthesize(photos, "realistic", seeds=[1, 2])
    with pytest.raises(ValueError, match=r"float tensor \(B, 3, H, W\)"):
        synthesize(photos[:, :1], "realistic", seeds=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"float tensor .* or uint8, got .*torch.int64"):
        synthesize((photos * 255).long(), "realistic", seeds=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"unknown name"):
        synthesize(photos, "no-such-recipe", seeds=[1, 2, 3, 4])


@pytest.mark.gpu
def test_cpu_and_cuda_agree(photos):
    """Same draws and kernels on both devices; pixels agree to float rounding before JPEG and to a
    few 8-bit levels after it (rounding can flip a value feeding the codec)."""
    d = load_recipe("realistic").to_dict()
    d["jpeg"]["prob"] = 0.0
    from deblurdiff.blur_synthesis import Recipe

    no_jpeg = Recipe.from_dict(d)
    seeds = [7, 8, 9, 10]
    cpu = synthesize(photos, no_jpeg, seeds=seeds)
    gpu = synthesize(photos.cuda(), no_jpeg, seeds=seeds)
    assert gpu.blurry.device.type == "cuda"
    assert cpu.params == gpu.params
    for a, b in zip(cpu.kernels, gpu.kernels):
        assert torch.equal(a, b)
    torch.testing.assert_close(gpu.blurry.cpu(), cpu.blurry, atol=2e-4, rtol=0)
    full_cpu = synthesize(photos, "realistic", seeds=seeds)
    full_gpu = synthesize(photos.cuda(), "realistic", seeds=seeds)
    assert (full_gpu.blurry.cpu() - full_cpu.blurry).abs().mean() < 1 / 255


def test_each_stage_draws_from_its_own_stream():
    """Changing how one stage draws (more regions, other PSF families) leaves the others' draws alone."""
    from deblurdiff.blur_synthesis import Recipe, sample_params

    base = load_recipe("realistic")
    d = base.to_dict()
    d["blur"]["spatially_varying"].update(prob=1.0, regions=[3, 4])
    d["blur"]["families"] = {"trajectory": 0.0, "linear": 0.0, "defocus": 1.0, "gaussian": 1.0}
    other = Recipe.from_dict(d)
    for seed in range(10):
        a, b = sample_params(base, seed), sample_params(other, seed)
        assert a["blur"] != b["blur"]
        for stage in ("linear_light", "saturation", "bayer", "noise", "jpeg"):
            assert a[stage] == b[stage]


def _no_jpeg(name: str = "realistic", **stage_probs):
    from deblurdiff.blur_synthesis import Recipe

    d = load_recipe(name).to_dict()
    d["jpeg"]["prob"] = 0.0
    for stage, prob in stage_probs.items():
        d[stage]["prob"] = prob
    return Recipe.from_dict(d)


def test_batched_path_same_draws_and_psfs_pixels_to_rounding(photos):
    """The batched (GPU) path, run on CPU: same parameters and PSFs as one sample at a time, pixels equal
    to float rounding (PSFs zero-padded to the batch's largest change the FFT size, not the result)."""
    from deblurdiff.blur_synthesis.synthesis import signature

    seeds = list(range(40, 48))
    sharp = photos[..., :96, :96].repeat(2, 1, 1, 1)  # (8, 3, 96, 96)
    # every stage on or off for all samples, so signatures repeat and batches hold several samples
    recipe = _no_jpeg(linear_light=1.0, saturation=1.0, noise=1.0, bayer=0.0)
    one = synthesize(sharp, recipe, seeds=seeds)
    batch = synthesize(sharp, recipe, seeds=seeds, batched=True)
    sigs = [signature(p, k) for p, k in zip(one.params, one.kernels)]
    assert len(set(sigs)) < len(sigs)  # some batches hold more than one sample
    assert batch.params == one.params
    assert all(torch.equal(a, b) for a, b in zip(batch.kernels, one.kernels))
    torch.testing.assert_close(batch.blurry, one.blurry, atol=1e-5, rtol=0)
    # the full realistic recipe, JPEG included: at most a few 8-bit levels where rounding flips a value
    full_one = synthesize(sharp, "realistic", seeds=seeds)
    full_batch = synthesize(sharp, "realistic", seeds=seeds, batched=True)
    assert full_batch.params == full_one.params
    assert (full_batch.blurry - full_one.blurry).abs().mean() < 0.5 / 255


def test_uint8_sharp_gives_the_float_result_quantised_bit_for_bit(photos):
    # synth and the training stream hand over decoded uint8 crops: same bytes as the float API, rounded
    from deblurdiff.pixels import to_uint8

    levels = to_uint8(photos)  # (4, 3, 160, 192)
    seeds = list(range(40, 52))
    sharp = levels[[i % 4 for i in range(12)]]
    for batched in (False, True):  # one at a time (CPU default), and one batch per signature (GPU default)
        ours = synthesize(sharp, "realistic", seeds=seeds, batched=batched)
        ref = synthesize(sharp.float() / 255, "realistic", seeds=seeds, batched=batched)
        assert ours.blurry.dtype == torch.uint8 and ours.params == ref.params
        assert torch.equal(ours.blurry, to_uint8(ref.blurry))
    drawn = ours.params  # the seeds cover both curves, JPEG on and off, Bayer on and off
    assert {p["linear_light"]["curve"] for p in drawn if p["linear_light"]["applied"]} == {"srgb", "gamma"}
    for stage in ("jpeg", "bayer"):
        assert {p[stage]["applied"] for p in drawn} == {True, False}


def test_degrade_refuses_a_batch_with_mixed_choices(photos):
    from deblurdiff.blur_synthesis import build_kernels, degrade, sample_params

    from deblurdiff.blur_synthesis.synthesis import signature

    recipe = load_recipe("realistic")
    drawn = ((p, build_kernels(p)) for p in (sample_params(recipe, s) for s in range(100)))
    first = next(drawn)
    other = next(d for d in drawn if signature(*d) != signature(*first))  # another on/off choice
    with pytest.raises(ValueError, match="one signature"):
        degrade(photos[:2], [first[0], other[0]], [first[1], other[1]])


def test_planning_a_synth_run_does_not_import_torch(tmp_path):
    """The synth driver only reads recipes and lists files: torch and kornia (~2 s of a command's start-up)
    load in the actors, not in the driver. A fresh interpreter, as `deblurdiff synth` starts."""
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (96, 80), (90, 120, 30)).save(tmp_path / "photo.png")
    script = ("import sys; from deblurdiff.pipelines.synth import plan_synth; "
              f"job = plan_synth([{str(tmp_path)!r}], {str(tmp_path / 'out')!r}, recipe='realistic', crop=64); "
              "print(len(job.plans), sorted(m for m in ('torch', 'kornia') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "[]"]


def test_the_public_names_stay_the_functions_after_a_submodule_is_imported():
    import importlib

    import deblurdiff.blur_synthesis as package

    importlib.import_module("deblurdiff.blur_synthesis.synthesis")  # binds package.synthesis, not .synthesize
    from deblurdiff.blur_synthesis import synthesize as again

    assert again is synthesize and callable(again)
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        package.nonexistent  # noqa: B018
