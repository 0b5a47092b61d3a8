"""Presets: sd21's architecture matches the paper (counted on the meta device), loading from a base
model, clear errors, reproducible tiny init."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from deblurdiff import DeblurDiffPipeline
from deblurdiff.errors import UsageError


def n_params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_sd21_random_init_parameter_counts_match_the_paper():
    pipe = DeblurDiffPipeline.from_preset("sd21", random_init=True, device="meta")
    assert pipe.unet.device.type == "meta"  # shapes only, no memory
    assert n_params(pipe.unet) == pytest.approx(865.9, abs=0.1)
    assert n_params(pipe.vae) == pytest.approx(83.7, abs=0.1)
    assert n_params(pipe.controlnet) == pytest.approx(363, abs=2)
    assert n_params(pipe.lkpn) == pytest.approx(145, abs=1)
    assert pipe.lkpn.kernel_channels == 100  # C·k² = 4·5²
    assert len(pipe.controlnet.controlnet_down_blocks) == 12  # + the middle block = 13 residuals
    assert pipe.pad_multiple == 64
    assert set(pipe.trainable_modules()) == {"controlnet", "lkpn"}
    assert pipe.null_text_embedding(3).shape == (3, 77, 1024)
    assert pipe.config.preset == "sd21" and pipe.config.blurry_range == "unit"


@pytest.mark.parametrize("kwargs, match", [
    ({}, "base_model"),
    ({"base_model": "/nonexistent/sd21", "random_init": True}, "not both"),
    ({"base_model": "/nonexistent/dir/sd21"}, "neither a local diffusers directory nor a hub id"),
])
def test_sd21_needs_weights_or_explicit_random_init(kwargs, match):
    with pytest.raises(UsageError, match=match):
        DeblurDiffPipeline.from_preset("sd21", **kwargs)


def test_unknown_preset_and_tiny_base_model_rejected():
    with pytest.raises(UsageError, match="unknown preset 'sd15'"):
        DeblurDiffPipeline.from_preset("sd15")
    with pytest.raises(UsageError, match="no base_model"):
        DeblurDiffPipeline.from_preset("tiny", base_model="/somewhere")


def test_tiny_init_is_reproducible():
    a, b = DeblurDiffPipeline.from_preset("tiny"), DeblurDiffPipeline.from_preset("tiny")
    c = DeblurDiffPipeline.from_preset("tiny", seed=1)
    sa, sb, sc = a.unet.state_dict(), b.unet.state_dict(), c.unet.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _mini_stable_diffusion(root):
    """A Stable-Diffusion-layout directory with small parts: vae/, unet/, text_encoder/, tokenizer/."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(root / "vae")
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                                cross_attention_dim=16, norm_num_groups=8)
    unet.save_pretrained(root / "unet")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{c}</w>": i + 2 for i, c in enumerate("abc")}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77).save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=0,
                                 eos_token_id=1, pad_token_id=1)).save_pretrained(root / "text_encoder")
    return unet


def test_sd21_loads_frozen_parts_and_empty_prompt_from_base_model(tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = _mini_stable_diffusion(tmp_path)
    pipe = DeblurDiffPipeline.from_preset("sd21", base_model=str(tmp_path))
    ours = pipe.unet.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in unet.state_dict().items())
    # ControlNet starts as a copy of the loaded UNet's encoder, not of a random one.
    assert torch.equal(pipe.controlnet.conv_in.weight, unet.conv_in.weight)
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    expected = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")(ids)[0]
    torch.testing.assert_close(pipe.null_text_embedding(1), expected)
    assert pipe.lkpn.config.cross_attention_dim == 16  # LKPN reads the base model's context width
