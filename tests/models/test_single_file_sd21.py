"""`model.base_model` as a single SD-2.x file: a reduced-size `.ckpt` / `.safetensors` made here from the
fixture's UNet, VAE and text tower under SD's own key names, loaded through diffusers' from_single_file."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from deblurdiff import DeblurDiffPipeline
from deblurdiff.errors import UsageError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official-format"
SD_PREFIXES = {"unet.": "model.diffusion_model.", "vae.": "first_stage_model.", "clip.model.": "cond_stage_model.model."}


def max_rel(got, want):
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def write_sd_file(path: Path) -> Path:
    release = torch.load(FIXTURE / "model.pth", map_location="cpu", weights_only=True)
    sd = {new + k[len(old):]: v for k, v in release.items() for old, new in SD_PREFIXES.items() if k.startswith(old)}
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save({"state_dict": sd, "global_step": 0}, path)  # the layout of v2-1_512-ema-pruned.ckpt
    params = yaml.safe_load((FIXTURE / "config.yaml").read_text())["params"]
    # The LDM config beside the file (<name>.yaml), reduced; heads given since this tower's are not 64 wide.
    path.with_suffix(".yaml").write_text(yaml.safe_dump({"model": {"params": {
        "scale_factor": params["latent_scale_factor"], "unet_config": {"params": params["unet_cfg"]},
        "first_stage_config": {"params": params["vae_cfg"]},
        "cond_stage_config": {"params": {"layer": "penultimate", "heads": params["clip_cfg"]["text_cfg"]["heads"]}}}}}))
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_sd21_preset_from_a_single_file(tmp_path, suffix):
    path = write_sd_file(tmp_path / f"v2-1-reduced{suffix}")
    pipe = DeblurDiffPipeline.from_preset("sd21", base_model=str(path))
    cases = load_file(FIXTURE / "cases.safetensors")
    c = {k.split("/", 1)[1]: v for k, v in cases.items() if k.startswith("step_small/")}
    with torch.no_grad():  # the frozen UNet alone reproduces the release's UNet (same SD weights)
        eps = pipe.unet(c["x_t"], c["t"], encoder_hidden_states=c["context"]).sample
    assert max_rel(eps, c["eps_unet_only"]) <= 1e-4
    assert max_rel(pipe.null_text_embedding(1), cases["null_text/embedding"]) <= 1e-4
    with torch.no_grad():
        moments = pipe.vae.quant_conv(pipe.vae.encoder(cases["vae/image"]))
    assert max_rel(moments, cases["vae/moments"]) <= 1e-4
    assert pipe.config.trainable_components == ["controlnet", "lkpn"]


def test_a_file_that_is_not_sd_is_refused(tmp_path):
    bad = tmp_path / "lkpn-only.ckpt"
    torch.save({"kpn.unet.out.2.weight": torch.zeros(1)}, bad)
    with pytest.raises(UsageError, match="not a Stable Diffusion 2.x checkpoint"):
        DeblurDiffPipeline.from_preset("sd21", base_model=str(bad))
