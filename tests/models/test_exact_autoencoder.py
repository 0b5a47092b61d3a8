"""The tiny preset's autoencoder carries an image exactly, and blur commutes with it (EAC can undo it)."""

import torch
import torch.nn.functional as F

from deblurdiff.models import ExactAutoencoder


def test_exact_round_trip_and_orthonormal():
    vae = ExactAutoencoder()
    x = torch.rand(2, 3, 17, 23) * 2 - 1
    z = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(0))
    assert z.shape == x.shape
    torch.testing.assert_close(vae.decode(z).sample, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(vae.basis @ vae.basis.T, torch.eye(3), rtol=0, atol=1e-6)
    assert torch.equal(vae.encode(x).latent_dist.mode(), z)  # deterministic


def test_blur_commutes_with_the_latent_map():
    # z_b = M·blur(x) = blur(M·x): a per-channel k×k kernel on the latent can undo a blur of the image.
    vae = ExactAutoencoder()
    x = torch.rand(1, 3, 20, 20) * 2 - 1
    kernel = torch.rand(1, 1, 5, 5).repeat(3, 1, 1, 1)
    blur = lambda t: F.conv2d(t, kernel, padding=2, groups=3)  # noqa: E731
    torch.testing.assert_close(vae.encode(blur(x)).latent_dist.mean, blur(vae.encode(x).latent_dist.mean),
                               rtol=1e-5, atol=1e-5)
