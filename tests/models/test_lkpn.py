"""LKPN: identity at init, C·k² kernel channels, EAC applied with the released layout."""

import pytest
import torch

from deblurdiff.models import LKPN
from deblurdiff.ops.reference import eac_reference


def small_lkpn(latent_channels=3, kernel_size=5, **options):
    torch.manual_seed(0)
    return LKPN(latent_channels=latent_channels, kernel_size=kernel_size, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                attention_heads=2, cross_attention_dim=8, norm_num_groups=8, **options)


def inputs(b=2, c=3, h=12, w=16):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g),
            torch.tensor([10, 900]), torch.randn(b, 5, 8, generator=g))


@pytest.mark.parametrize("c,k", [(3, 5), (4, 3)])
def test_identity_at_init_and_kernel_channels(c, k):
    lkpn = small_lkpn(c, k)
    z_b, x_t, t, ctx = inputs(c=c)
    out = lkpn(z_b, x_t, t, ctx)
    assert out.kernels.shape == (2, c * k * k, 12, 16)
    assert lkpn.kernel_channels == c * k * k
    assert torch.count_nonzero(out.kernels) == 0
    assert torch.equal(out.z_hat, z_b)  # ẑ == z_b exactly: training starts from the identity


def test_z_hat_is_eac_of_z_blur_plus_residual():
    lkpn = small_lkpn()
    torch.nn.init.normal_(lkpn.unet.conv_out.weight, std=0.05)  # a trained-looking head
    z_b, x_t, t, ctx = inputs()
    out = lkpn(z_b, x_t, t, ctx)
    assert torch.count_nonzero(out.kernels) > 0
    torch.testing.assert_close(out.z_hat, eac_reference(z_b, out.kernels, 5) + z_b, rtol=1e-5, atol=1e-5)
    # The kernels depend on x_t (iterative refinement), EAC always reads z_b.
    assert not torch.allclose(lkpn(z_b, x_t + 1, t, ctx).kernels, out.kernels)


def test_even_kernel_size_rejected():
    with pytest.raises(ValueError, match="odd"):
        LKPN(latent_channels=3, kernel_size=4)


def test_save_load_round_trip(tmp_path):
    lkpn = small_lkpn()
    torch.nn.init.normal_(lkpn.unet.conv_out.weight, std=0.05)
    lkpn.save_pretrained(tmp_path)
    again = LKPN.from_pretrained(tmp_path)
    assert again.config.kernel_size == 5
    z_b, x_t, t, ctx = inputs()
    assert torch.equal(lkpn(z_b, x_t, t, ctx).z_hat, again(z_b, x_t, t, ctx).z_hat)


def test_zero_sum_kernels_only_sharpen():
    lkpn = LKPN(latent_channels=3, kernel_size=5, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                attention_heads=2, cross_attention_dim=8, norm_num_groups=8, zero_sum_kernels=True)
    torch.nn.init.normal_(lkpn.unet.conv_out.weight, std=0.05)
    torch.nn.init.normal_(lkpn.unet.conv_out.bias, std=0.5)
    _, x_t, t, ctx = inputs()
    flat = torch.full((2, 3, 12, 16), 0.7)
    out = lkpn(flat, x_t, t, ctx)
    torch.testing.assert_close(out.kernels.view(2, 3, 25, 12, 16).sum(2), torch.zeros(2, 3, 12, 16),
                               rtol=0, atol=1e-5)
    # Away from the zero-padded border a flat latent stays exactly as bright as it was.
    torch.testing.assert_close(out.z_hat[..., 2:-2, 2:-2], flat[..., 2:-2, 2:-2], rtol=0, atol=1e-5)


def test_an_lkpn_that_does_not_read_x_t_deblurs_z_b_alone_the_same_at_every_step(tmp_path):
    """``reads_x_t=False`` (the tiny preset): ẑ depends on z_b only, so the sampler's noisy x_t and its
    timestep cannot change it; the option survives save/load."""
    lkpn = small_lkpn(reads_x_t=False)
    torch.nn.init.normal_(lkpn.unet.conv_out.weight, std=0.05)
    z_b, x_t, t, ctx = inputs()
    out = lkpn(z_b, x_t, t, ctx)
    assert not torch.equal(out.z_hat, z_b)  # it does deblur (a trained-looking head)
    torch.testing.assert_close(lkpn(z_b, torch.randn_like(x_t), torch.tensor([999, 0]), ctx).z_hat, out.z_hat,
                               rtol=0, atol=0)
    # What it reads instead: z_b in x_t's place, at t = 0.
    lkpn.register_to_config(reads_x_t=True)
    torch.testing.assert_close(lkpn(z_b, z_b, torch.tensor([0, 0]), ctx).z_hat, out.z_hat, rtol=0, atol=0)
    lkpn.register_to_config(reads_x_t=False)
    lkpn.save_pretrained(tmp_path)
    assert LKPN.from_pretrained(tmp_path).config.reads_x_t is False
