"""The converted fixture model reproduces the release's own outputs (tests/fixtures/official-format/README.md).

Tolerance (the README's): max|got − want| / max|want| ≤ 1e-4 in float32; a correct conversion lands
near 1e-6, every conversion mistake tried lands above 1e-1.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deblurdiff.convert import load_release_checkpoint, released_params
from deblurdiff.convert.checkpoint import check_release_layout
from deblurdiff.convert.components import COMPONENTS, build_component, check_fits, component_state_dict, text_tower
from deblurdiff.models import predict_noise
from deblurdiff.models.windows import set_attention_windows

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official-format"
TOLERANCE = 1e-4
STEP_OUTPUTS = ["z_hat", "eps", "control_00", "control_01", "control_02", "control_03", "control_04"]


def max_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.fixture(scope="module")
def pipe():
    return load_release_checkpoint(FIXTURE / "model.pth", FIXTURE / "config.yaml")


@pytest.fixture(scope="module")
def cases():
    return load_file(FIXTURE / "cases.safetensors")


def case(cases, name):
    return {k.split("/", 1)[1]: v for k, v in cases.items() if k.startswith(f"{name}/")}


@torch.no_grad()
def run_step(pipe, c):
    """LKPN + EAC, ControlNet residuals and eps, exactly as the sampler calls them (predict_noise)."""
    residuals = []
    hook = pipe.controlnet.register_forward_hook(lambda m, i, out: residuals.extend([*out[0], out[1]]))
    try:
        pred = predict_noise(pipe.unet, pipe.controlnet, pipe.lkpn, c["x_t"], c["t"], c["z_b"], c["context"])
    finally:
        hook.remove()
    got = {"z_hat": pred.z_hat, "kernels": pred.kernels, "eps": pred.model_output}
    got.update({f"control_{i:02d}": r for i, r in enumerate(residuals)})
    got["eps_unet_only"] = pipe.unet(c["x_t"], c["t"], encoder_hidden_states=c["context"]).sample
    return got


@pytest.mark.parametrize("name", ["step_small", "step_windowed"])
def test_denoising_step_matches_the_release(pipe, cases, name):
    c = case(cases, name)
    got = run_step(pipe, c)
    wanted = [k for k in (*STEP_OUTPUTS, "kernels", "eps_unet_only") if k in c]
    errors = {k: max_rel(got[k], c[k]) for k in wanted}
    assert all(e <= TOLERANCE for e in errors.values()), errors


def test_empty_prompt_context_matches_the_release(pipe, cases):
    c = case(cases, "null_text")
    assert c["tokens"][0, :3].tolist() == [49406, 49407, 0]
    assert max_rel(pipe.null_text_embedding(1), c["embedding"]) <= TOLERANCE


@torch.no_grad()
def test_vae_matches_the_release(pipe, cases):
    c = case(cases, "vae")
    vae, s = pipe.vae, pipe.vae.config.scaling_factor
    posterior = vae.encode(c["image"]).latent_dist  # image as stored, in [0, 1] (the release's z_b quirk)
    got = {"moments": vae.quant_conv(vae.encoder(c["image"])), "mean_scaled": posterior.mean * s,
           "std_scaled": posterior.std * s, "sample_scaled": (posterior.mean + posterior.std * c["noise"]) * s,
           "decoded": vae.decode(c["decode_latent"] / s).sample}
    errors = {k: max_rel(v, c[k]) for k, v in got.items()}
    assert all(e <= TOLERANCE for e in errors.values()), errors


@torch.no_grad()
def test_windowed_case_needs_the_windows(pipe, cases):
    """With global attention (diffusers' default) the 80×136 step misses the release by design."""
    c = case(cases, "step_windowed")
    for model, shrink in ((pipe.unet, True), (pipe.lkpn.unet, True), (pipe.controlnet, False)):
        set_attention_windows(model, None, shrink)
    try:
        got = run_step(pipe, c)
    finally:
        for model, shrink in ((pipe.unet, True), (pipe.lkpn.unet, True), (pipe.controlnet, False)):
            set_attention_windows(model, 64, shrink)
    assert max_rel(got["eps"], c["eps"]) > 1e-2


@torch.no_grad()
def test_windowed_attention_works_per_sample_in_a_batch(pipe, cases):
    """The release asserts batch 1; here a batch of two gives each sample its own single result."""
    c = case(cases, "step_windowed")
    x_t = torch.cat([c["x_t"], c["z_b"]])
    z_b = torch.cat([c["z_b"], c["x_t"].flip(-1)])
    t, ctx = torch.tensor([510, 979]), c["context"].expand(2, -1, -1)
    both = predict_noise(pipe.unet, pipe.controlnet, pipe.lkpn, x_t, t, z_b, ctx).model_output
    for i in range(2):
        alone = predict_noise(pipe.unet, pipe.controlnet, pipe.lkpn, x_t[i:i + 1], t[i:i + 1], z_b[i:i + 1],
                              ctx[i:i + 1]).model_output
        assert max_rel(both[i:i + 1], alone) <= 1e-5
    assert max_rel(both[:1], c["eps"]) <= TOLERANCE


def test_converted_pipeline_records_its_origin_and_windows(pipe):
    origin = pipe.config.origin
    assert origin["checkpoint"] == "model.pth" and origin["config"] == "config.yaml"
    assert "kkkls/DeblurDiff" in origin["format"]
    assert pipe.config.trainable_components == ["controlnet", "lkpn"] and pipe.config.blurry_range == "unit"
    assert pipe.unet.config.attention_window == pipe.controlnet.config.attention_window == 64
    assert pipe.lkpn.config.attention_window == 64 and pipe.lkpn.config.zero_sum_kernels is False


def test_full_size_release_maps_on_the_meta_device():
    """Every key and shape of the full-size release (manifest.json) has its place, none left over."""
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    params = released_params()
    assert {k: params[k] for k in manifest["config_params"]} == manifest["config_params"]
    assert params["lkpn_cfg"] == manifest["lkpn_cfg"]
    state_dict = {k: torch.empty(shape, device="meta") for k, shape in manifest["keys"].items()}
    check_release_layout(state_dict, "manifest")
    total = 0
    for name in COMPONENTS:
        model = build_component(name, params)
        converted = component_state_dict(name, state_dict, params, "manifest")
        check_fits(model, converted, name, state_dict, "manifest")  # raises on missing/unexpected/mis-shaped
        total += sum(p.numel() for p in model.parameters())
    text_model, _ = text_tower(state_dict, params, "manifest")
    assert text_model.config.num_hidden_layers == 23  # "penultimate" of 24
    # Every release parameter except the text tower (only its empty-prompt output is kept).
    assert total == manifest["num_params"] - manifest["prefixes"]["clip.model."]["params"]


def test_release_compat_post_processing(pipe):
    """release_compat: zero padding and truncating quantisation (docs/released-model.md)."""
    from deblurdiff.pixels import to_uint8

    assert to_uint8(torch.tensor([0.999, 0.5]), truncate=True).tolist() == [254, 127]
    assert to_uint8(torch.tensor([0.999, 0.5])).tolist() == [255, 128]
    image = torch.rand(3, 21, 30)  # not a multiple of the pad size: padding matters at the border

    def run(**kw):
        return pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kw).images

    released = run(output_type="np", release_compat=True)[0]
    assert (np.asarray(run(release_compat=True)[0]) == np.floor(np.clip(released, 0, 1) * 255)).all()
    assert not np.allclose(released, run(output_type="np")[0])  # reflect padding + early clamp differ
