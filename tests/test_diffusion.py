"""DeblurDiffPipeline on the tiny preset: sizes, inputs, determinism, save/load, tiling, intermediates."""

import numpy as np
import PIL.Image
import pytest
import torch

from deblurdiff import DeblurDiffPipeline
from deblurdiff.diffusion import SAMPLERS, _latent_tiles, adain_colour_fix
from deblurdiff.models import COMPONENTS


@pytest.fixture(scope="module")
def pipe():
    # A trained-looking tiny pipeline: non-zero heads so ẑ, the hint and the residuals all matter.
    pipe = DeblurDiffPipeline.from_preset("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [pipe.lkpn.unet.conv_out.weight, pipe.controlnet.controlnet_cond_embedding.conv.weight,
                  *pipe.controlnet.controlnet_down_blocks.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(h, w, seed=0):
    from skimage import data

    img = data.astronaut()[100:100 + h, 150:150 + w]
    return np.ascontiguousarray(img)


def run(pipe, image, seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(image, generator=torch.Generator().manual_seed(seed), **kw)


def test_output_sizes_equal_input_sizes(pipe):
    assert pipe.pad_multiple == 4
    out = run(pipe, PIL.Image.fromarray(photo(37, 50)))
    assert [im.size for im in out.images] == [(50, 37)]
    # A batch of mixed sizes (none a multiple of the padding) keeps each size and the order.
    out = run(pipe, [photo(21, 30), photo(18, 13)], output_type="np", sampler="dpmpp")
    assert [a.shape for a in out.images] == [(21, 30, 3), (18, 13, 3)]


def test_input_kinds(pipe):
    arr = photo(20, 24)
    as_np = run(pipe, arr, output_type="np").images
    as_tensor = run(pipe, torch.from_numpy(arr).permute(2, 0, 1).float() / 255, output_type="pt").images
    as_batch = run(pipe, np.stack([arr, arr]), output_type="np").images
    assert as_np.shape == (1, 20, 24, 3) and as_tensor.shape == (1, 3, 20, 24) and as_batch.shape == (2, 20, 24, 3)
    np.testing.assert_allclose(as_np[0], as_tensor[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert 0 <= as_np.min() and as_np.max() <= 1


def test_deterministic_for_a_generator(pipe):
    a = run(pipe, photo(24, 24), seed=3, output_type="np").images
    b = run(pipe, photo(24, 24), seed=3, output_type="np").images
    c = run(pipe, photo(24, 24), seed=4, output_type="np").images
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_one_generator_per_image_is_independent_of_batch_mates(pipe):
    a, b = photo(20, 20), photo(20, 20)[::-1].copy()
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    batch = pipe([a, b], num_inference_steps=2, generator=gens, output_type="np").images
    alone = run(pipe, b, seed=6, output_type="np").images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-4)
    mixed = pipe([a, photo(12, 16)], num_inference_steps=2, output_type="np",
                 generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]).images
    np.testing.assert_allclose(mixed[0], batch[0], atol=1e-4)
    with pytest.raises(ValueError, match="one generator per image"):
        pipe([a, b], num_inference_steps=1, generator=gens[:1])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_save_load_round_trip(pipe, tmp_path, sampler):
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "lkpn" / "diffusion_pytorch_model.safetensors").is_file()
    again = DeblurDiffPipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert again.config.preset == "tiny" and list(again.config.trainable_components) == ["unet", "controlnet", "lkpn"]
    for name in COMPONENTS:
        ours, theirs = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.scheduler.config) == public(pipe.scheduler.config)
    image = photo(20, 28)
    # Weights are bit-identical (above); the outputs agree to float32 round-off (oneDNN may pick
    # another convolution algorithm for freshly loaded tensors).
    np.testing.assert_allclose(run(again, image, sampler=sampler, output_type="np").images,
                               run(pipe, image, sampler=sampler, output_type="np").images, rtol=0, atol=1e-5)


def test_tiled_equals_untiled_when_one_tile_covers(pipe):
    image = photo(30, 41)
    plain = run(pipe, image, output_type="np").images
    tiled = run(pipe, image, output_type="np", tile_size=64).images
    np.testing.assert_allclose(tiled, plain, atol=1e-5)


def test_tiling_covers_large_images(pipe):
    tiles = _latent_tiles((40, 72), 32, 16)
    covered = torch.zeros(40, 72)
    for y0, y1, x0, x1 in tiles:
        assert (y1 - y0, x1 - x0) == (32, 32)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and len(tiles) == 2 * 4
    out = run(pipe, photo(40, 70), output_type="np", tile_size=32, tile_stride=16).images
    assert out.shape == (1, 40, 70, 3) and np.isfinite(out).all()


def test_intermediates_per_step(pipe):
    steps = 3
    out = run(pipe, photo(22, 26), num_inference_steps=steps, sampler="dpmpp", return_intermediates=True)
    assert len(out.z_hat) == len(out.kernels) == len(out.timesteps) == steps
    assert out.z_hat[0].shape == (1, 3, 22, 26) and out.kernels[0].shape == (1, 75, 22, 26)
    assert out.timesteps[0] > out.timesteps[-1]
    # The tiny LKPN reads z_b alone (reads_x_t=False): its kernels are the same at every step.
    assert not pipe.lkpn.config.reads_x_t
    torch.testing.assert_close(out.kernels[0], out.kernels[-1], rtol=0, atol=0)
    # An LKPN that reads x_t (the paper's iterative refinement) changes them from step to step.
    pipe.lkpn.register_to_config(reads_x_t=True)
    try:
        refined = run(pipe, photo(22, 26), num_inference_steps=steps, sampler="dpmpp", return_intermediates=True)
    finally:
        pipe.lkpn.register_to_config(reads_x_t=False)
    assert not torch.allclose(refined.kernels[0], refined.kernels[-1])


def test_untrained_lkpn_gives_z_blur(tmp_path):
    fresh = DeblurDiffPipeline.from_preset("tiny")
    fresh.set_progress_bar_config(disable=True)
    image = photo(16, 20)
    out = run(fresh, image, return_intermediates=True)
    z_b = fresh.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, blurry=True)
    assert all(torch.allclose(z, z_b, atol=1e-6) for z in out.z_hat)


def test_encode_decode_and_null_text(pipe):
    x = torch.rand(2, 3, 12, 12)
    z = pipe.encode(x)
    assert z.shape == (2, 3, 12, 12)
    torch.testing.assert_close(pipe.decode(z), x, rtol=0, atol=1e-6)  # tiny carries images exactly
    assert torch.equal(pipe.encode(x, blurry=True), z)  # tiny: z_b and z_0 share one range
    ctx = pipe.null_text_embedding(3)
    assert ctx.shape == (3, 8, 32) and torch.equal(ctx[0], ctx[2])


def test_adain_colour_fix_matches_reference_statistics():
    g = torch.Generator().manual_seed(0)
    restored, reference = torch.rand(2, 3, 16, 16, generator=g) * 0.5, torch.rand(2, 3, 16, 16, generator=g)
    fixed = adain_colour_fix(restored, reference)
    torch.testing.assert_close(fixed.mean((2, 3)), reference.mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std((2, 3)), reference.std((2, 3)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampler": "euler"}, "sampler must be one of ddpm, dpmpp"),
    ({"tile_size": 30}, "tile_size must be a positive multiple of 4"),
    ({"tile_size": 32, "tile_stride": 40}, "tile_stride"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"output_type": "latent"}, "output_type"),
    ({"colour_fix": "wavelet"}, "colour_fix"),
    ({"strength": -0.1}, r"strength must be a number in \[0, 1\]"),
    ({"strength": 1.5}, "strength"),
    ({"num_inference_steps": 4, "strength": 0.2}, "leaves no denoising step"),
])
def test_bad_arguments_raise_clear_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(pipe, photo(8, 8), **kwargs)


@pytest.mark.parametrize("image, match", [
    (np.zeros((8, 8)), r"\(H, W, 3\)"),
    (torch.full((3, 8, 8), 2.0), r"\[0, 1\]"),
    ([], "at least one image"),
    ("blurry.png", "PIL image, numpy array or torch tensor"),
])
def test_bad_images_raise_clear_errors(pipe, image, match):
    with pytest.raises(ValueError, match=match):
        run(pipe, image)


@pytest.mark.gpu
def test_tiny_on_cuda_matches_cpu(pipe, tmp_path):
    image = photo(24, 28)
    cpu = run(pipe, image, output_type="np", sampler="dpmpp").images
    pipe.save_pretrained(tmp_path)
    gpu = DeblurDiffPipeline.from_pretrained(tmp_path).to("cuda")
    gpu.set_progress_bar_config(disable=True)
    out = run(gpu, image, output_type="np", sampler="dpmpp").images  # CPU generator: same draws
    np.testing.assert_allclose(out, cpu, atol=2e-3)


@pytest.mark.gpu
def test_sd21_architecture_runs_on_cuda_in_bf16():
    pipe = DeblurDiffPipeline.from_preset("sd21", random_init=True, device="cuda", torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(photo(100, 130), num_inference_steps=2, sampler="dpmpp", output_type="np",
               generator=torch.Generator().manual_seed(0), tile_size=64, return_intermediates=True)
    assert out.images.shape == (1, 100, 130, 3) and np.isfinite(out.images).all()
    assert out.kernels[0].shape == (1, 100, 13, 17)  # C·k² = 100 kernel channels at latent resolution


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_runs_the_last_steps_from_the_noised_blurry_latent(pipe, sampler):
    image = photo(16, 20)
    full = run(pipe, image, num_inference_steps=10, sampler=sampler, strength=1.0, return_intermediates=True)
    part = run(pipe, image, num_inference_steps=10, sampler=sampler, strength=0.3, return_intermediates=True)
    assert part.timesteps == full.timesteps[-3:]  # int(10 · 0.3) steps, the schedule's last ones
    # From z_b the result stays close to the input; from pure noise (2 steps) the untrained-ish model does not
    # (without the tiny preset's anchor on ẑ: the paper's UNet output, as converted models run).
    paper = DeblurDiffPipeline(**pipe.components, preset="tiny", trainable_components=pipe.config.trainable_components,
                               blurry_range=pipe.config.blurry_range, z_hat_anchor=False)
    paper.set_progress_bar_config(disable=True)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    low = run(paper, image, num_inference_steps=10, sampler=sampler, strength=0.1, output_type="pt").images
    noise = run(paper, image, num_inference_steps=2, sampler=sampler, output_type="pt").images
    assert (low - x).abs().mean() < 0.5 * (noise - x).abs().mean()
    # With the anchor, what the untrained UNet adds to ẑ is small even from pure noise.
    anchored = run(pipe, image, num_inference_steps=2, sampler=sampler, output_type="pt").images
    assert (anchored - x).abs().mean() < 0.5 * (noise - x).abs().mean()


@pytest.mark.parametrize("tile", [None, 32])  # 32: one tile covers the 24×28 photo, through the tiled path
def test_strength_zero_decodes_the_lkpn_estimate_without_a_denoising_step(pipe, tile):
    from deblurdiff.diffusion import adain_colour_fix

    image = photo(24, 28)
    out = run(pipe, image, num_inference_steps=10, sampler="dpmpp", strength=0.0, tile_size=tile,
              output_type="pt", return_intermediates=True)
    assert out.timesteps == [] and len(out.z_hat) == len(out.kernels) == 1  # ẑ once, no UNet / ControlNet call
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        z_b = pipe.encode(x, blurry=True)
        z_hat = pipe.lkpn(z_b, z_b, torch.zeros(1, dtype=torch.long), pipe.null_text_embedding(1)).z_hat
        expected = adain_colour_fix(pipe.decode(z_hat), x).clamp(0, 1)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.z_hat[0], z_hat, atol=1e-5, rtol=0)
    assert (out.images - x).abs().max() > 1e-3  # the trained-looking LKPN changed the image


def test_images_above_the_auto_tile_size_are_restored_in_tiles(pipe, monkeypatch):
    import deblurdiff.diffusion as diffusion

    image = photo(24, 28)
    whole = run(pipe, image, num_inference_steps=4, strength=0.5, sampler="dpmpp", output_type="pt").images
    monkeypatch.setattr(diffusion, "AUTO_TILE_ABOVE_PIXELS", 24 * 28 - 1)  # scaled down: this photo is "large"
    monkeypatch.setattr(diffusion, "AUTO_TILE", 16)
    monkeypatch.setattr(diffusion, "AUTO_TILE_STRIDE", 12)
    auto = run(pipe, image, num_inference_steps=4, strength=0.5, sampler="dpmpp", output_type="pt").images
    tiled = run(pipe, image, num_inference_steps=4, strength=0.5, sampler="dpmpp", output_type="pt",
                tile_size=16, tile_stride=12).images
    torch.testing.assert_close(auto, tiled, atol=0, rtol=0)
    assert (auto - whole).abs().max() > 0  # it did tile
    small = run(pipe, photo(20, 20), num_inference_steps=4, strength=0.5, sampler="dpmpp", output_type="pt").images
    monkeypatch.setattr(diffusion, "AUTO_TILE_ABOVE_PIXELS", 10**9)
    torch.testing.assert_close(small, run(pipe, photo(20, 20), num_inference_steps=4, strength=0.5, sampler="dpmpp",
                                          output_type="pt").images, atol=0, rtol=0)  # at or below: one pass


def test_recorded_sampling_is_the_default_and_arguments_override_it(tmp_path):
    from deblurdiff.diffusion import RELEASED_SAMPLING
    from deblurdiff.model_dir import record_sampling

    fresh = DeblurDiffPipeline.from_preset("tiny")
    assert fresh.default_sampling() == RELEASED_SAMPLING == {"sampler": "ddpm", "steps": 50, "strength": 1.0}
    fresh.save_pretrained(tmp_path)
    record_sampling(tmp_path, {"sampler": "dpmpp", "steps": 5, "strength": 0.4})
    loaded = DeblurDiffPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.default_sampling() == {"sampler": "dpmpp", "steps": 5, "strength": 0.4}
    assert run(loaded, photo(8, 8), num_inference_steps=None, return_intermediates=True).timesteps == \
        run(loaded, photo(8, 8), num_inference_steps=5, sampler="dpmpp", strength=0.4,
            return_intermediates=True).timesteps
    assert len(run(loaded, photo(8, 8), num_inference_steps=None, strength=1.0,
                   return_intermediates=True).timesteps) == 5
    with pytest.raises(ValueError, match="sampling.steps"):
        record_sampling(tmp_path, {"sampler": "dpmpp", "steps": 0, "strength": 0.4})


@pytest.mark.parametrize("strength", [0.0, 0.5])  # the LKPN estimate alone, and every sampling step
def test_tiles_on_several_threads_give_the_same_bits_as_one_at_a_time(pipe, strength):
    # How `deblurdiff deblur` uses all cores on a large photo while staying byte-identical to its
    # one-thread Ray actors: several tiles at once, each on one torch thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw = dict(num_inference_steps=4, sampler="dpmpp", strength=strength, output_type="pt", tile_size=16,
                  tile_stride=12, return_intermediates=True)
        one = run(pipe, photo(40, 44), **kw)
        pipe.set_tile_workers(3)
        several = run(pipe, photo(40, 44), **kw)
    finally:
        pipe.set_tile_workers(1)
        torch.set_num_threads(threads)
    assert torch.equal(several.images, one.images)
    assert all(torch.equal(a, b) for a, b in zip(several.z_hat, one.z_hat))
    assert all(torch.equal(a, b) for a, b in zip(several.kernels, one.kernels))
    with pytest.raises(ValueError, match="tile workers"):
        pipe.set_tile_workers(0)
