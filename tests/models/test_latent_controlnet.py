"""Latent-hint ControlNet: copied from the UNet, hint at latent resolution, every injection starts at zero."""

import torch
from diffusers import UNet2DConditionModel

from deblurdiff.models import LatentControlNet, LatentHintEmbedding


def small_unet(c=3):
    torch.manual_seed(0)
    return UNet2DConditionModel(in_channels=c, out_channels=c, block_out_channels=(16, 32, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                                attention_head_dim=2, cross_attention_dim=8, norm_num_groups=8)


def test_from_unet_copies_encoder_and_hint_enters_at_latent_resolution():
    unet = small_unet()
    cn = LatentControlNet.from_unet(unet, conditioning_channels=6)
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(cn, name).state_dict(), getattr(unet, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert isinstance(cn.controlnet_cond_embedding, LatentHintEmbedding)
    hint = torch.randn(2, 6, 12, 16)
    assert cn.controlnet_cond_embedding(hint).shape == (2, 16, 12, 16)  # no downsampling: latent resolution
    assert torch.count_nonzero(cn.controlnet_cond_embedding.conv.weight) == 0


def test_residuals_zero_at_init_so_unet_output_unchanged():
    unet = small_unet()
    cn = LatentControlNet.from_unet(unet, conditioning_channels=6)
    x_t, t, ctx = torch.randn(2, 3, 12, 16), torch.tensor(500), torch.randn(2, 4, 8)
    down, mid = cn(x_t, t, encoder_hidden_states=ctx, controlnet_cond=torch.randn(2, 6, 12, 16), return_dict=False)
    # One residual per UNet skip (1 + levels·layers + (levels−1) = 6 here; 12 for SD-2.1) + the middle one.
    assert len(down) == 6
    assert all(torch.count_nonzero(r) == 0 for r in (*down, mid))
    plain = unet(x_t, t, encoder_hidden_states=ctx).sample
    steered = unet(x_t, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
    assert torch.equal(plain, steered)


def test_hint_changes_the_residuals_once_trained():
    cn = LatentControlNet.from_unet(small_unet(), conditioning_channels=6)
    for p in [cn.controlnet_cond_embedding.conv.weight, *cn.controlnet_down_blocks.parameters()]:
        torch.nn.init.normal_(p, std=0.1)
    x_t, t, ctx = torch.randn(1, 3, 12, 16), torch.tensor(500), torch.randn(1, 4, 8)
    a, _ = cn(x_t, t, encoder_hidden_states=ctx, controlnet_cond=torch.zeros(1, 6, 12, 16), return_dict=False)
    b, _ = cn(x_t, t, encoder_hidden_states=ctx, controlnet_cond=torch.ones(1, 6, 12, 16), return_dict=False)
    assert not torch.allclose(a[0], b[0])


def test_save_load_round_trip(tmp_path):
    cn = LatentControlNet.from_unet(small_unet(), conditioning_channels=6)
    torch.nn.init.normal_(cn.controlnet_cond_embedding.conv.weight)
    cn.save_pretrained(tmp_path)
    again = LatentControlNet.from_pretrained(tmp_path)
    assert isinstance(again.controlnet_cond_embedding, LatentHintEmbedding)
    ours, theirs = cn.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
