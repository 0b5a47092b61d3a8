"""The co-training loss and step: the terms, where gradients go, and that it learns."""

import pytest
import torch
import torch.nn.functional as F

from deblurdiff import DeblurDiffPipeline
from deblurdiff.models import CoTrainingModule, ddpm_scheduler, deblurdiff_loss, diffusion_target, training_step


def test_loss_terms():
    g = torch.Generator().manual_seed(0)
    eps_pred, eps, z_hat, z_0 = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    terms = deblurdiff_loss(eps_pred, eps, z_hat, z_0, latent_weight=0.5)
    assert terms.diffusion_loss.item() == pytest.approx(F.mse_loss(eps_pred, eps).item())
    assert terms.latent_loss.item() == pytest.approx(F.mse_loss(z_hat, z_0).item())
    assert terms.loss.item() == pytest.approx(terms.diffusion_loss.item() + 0.5 * terms.latent_loss.item())
    assert set(terms.as_floats()) == {"loss", "diffusion_loss", "latent_loss"}


def test_psnr_fidelity_weighs_each_sample_by_its_own_error():
    """fidelity="psnr": what is backpropagated is mean_i 10·log10 MSE_i, so a clean sample's small error
    pulls as hard as a noisy one's large error; the reported terms stay MSEs."""
    z_0 = torch.zeros(2, 3, 4, 4)
    z_hat = torch.cat([torch.full((1, 3, 4, 4), 0.01), torch.full((1, 3, 4, 4), 1.0)]).requires_grad_()
    eps = torch.zeros_like(z_0)
    terms = deblurdiff_loss(eps, eps, z_hat, z_0, latent_weight=1.0, fidelity="psnr")
    assert terms.latent_loss.item() == pytest.approx(F.mse_loss(z_hat, z_0).item())
    expected = 10 * torch.log10(torch.tensor([1e-4, 1.0]) + 1e-8).mean() + 10 * torch.log10(torch.tensor(1e-8))
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    terms.loss.backward()
    per_sample_pull = z_hat.grad.flatten(1).abs().sum(dim=1) * z_hat.detach().flatten(1).abs().mean(dim=1)
    torch.testing.assert_close(per_sample_pull[0], per_sample_pull[1], rtol=1e-3, atol=0)  # d log e = de / e
    with pytest.raises(ValueError, match="fidelity"):
        deblurdiff_loss(eps, eps, z_hat, z_0, fidelity="l1")


def test_diffusion_target_follows_the_scheduler():
    z_0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 990])
    assert torch.equal(diffusion_target(ddpm_scheduler(), z_0, noise, t), noise)  # sd21: eps
    v = diffusion_target(ddpm_scheduler("v_prediction"), z_0, noise, t)  # tiny: v = √ᾱ·eps − √(1−ᾱ)·z_0
    a = ddpm_scheduler().alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * z_0)
    assert DeblurDiffPipeline.from_preset("tiny").scheduler.config.prediction_type == "v_prediction"


def batch(pipe, b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sharp = torch.rand(b, 3, size, size, generator=g)
    blurry = F.avg_pool2d(F.pad(sharp, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    z_0, z_b = pipe.encode(sharp), pipe.encode(blurry, blurry=True)
    return z_0, z_b, torch.randn(z_0.shape, generator=g), torch.randint(0, 1000, (b,), generator=g)


def paper_like_tiny():
    """Tiny parts with the paper's split: only ControlNet + LKPN trainable."""
    parts = DeblurDiffPipeline.from_preset("tiny").components
    return DeblurDiffPipeline(**parts, preset="tiny", trainable_components=("controlnet", "lkpn"))


def test_gradients_reach_lkpn_and_controlnet_never_frozen_parts():
    pipe = paper_like_tiny()
    z_0, z_b, noise, t = batch(pipe)
    terms = training_step(pipe.unet, pipe.controlnet, pipe.lkpn, pipe.scheduler, z_0, z_b, noise, t,
                          pipe.null_text_embedding(2))
    terms.loss.backward()
    # LKPN's zero head learns from MSE(ẑ, z_0); the ControlNet's zero convs from the eps loss.
    assert pipe.lkpn.unet.conv_out.weight.grad.abs().sum() > 0
    assert pipe.controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in pipe.controlnet.controlnet_down_blocks.parameters())
    for frozen in (pipe.unet, pipe.vae, pipe.null_text):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


def test_cotraining_module_registers_only_trainable_parts():
    pipe = paper_like_tiny()
    module = CoTrainingModule(pipe)
    names = {n.split(".")[0] for n, _ in module.named_parameters()}
    assert names == {"controlnet", "lkpn"}
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == sum(p.numel() for m in pipe.trainable_modules().values() for p in m.parameters())
    assert module.part("unet") is pipe.unet  # called, not registered


def test_tiny_overfits_a_batch():
    pipe = DeblurDiffPipeline.from_preset("tiny")
    assert set(pipe.trainable_modules()) == {"unet", "controlnet", "lkpn"}
    module = CoTrainingModule(pipe).train()
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    z_0, z_b, noise, t = batch(pipe, b=4, size=16)
    ctx = pipe.null_text_embedding(4)
    losses = []
    for _ in range(15):
        terms = module(z_0, z_b, noise, t, ctx)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        losses.append(terms.as_floats())
    assert losses[-1]["loss"] < 0.7 * losses[0]["loss"]
    assert losses[-1]["latent_loss"] < losses[0]["latent_loss"]  # ẑ moved towards z_0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_output_for_x0_is_what_the_scheduler_turns_back_into_x0(prediction_type):
    from deblurdiff.models import output_for_x0

    scheduler = ddpm_scheduler(prediction_type)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    for t in (scheduler.timesteps[0], scheduler.timesteps[-1]):
        step = scheduler.step(output_for_x0(scheduler, x0, x_t, t), t, x_t, generator=g)
        torch.testing.assert_close(step.pred_original_sample, x0, rtol=1e-4, atol=1e-4)


def test_z_hat_anchor_makes_a_silent_unet_return_the_lkpn_estimate():
    """The tiny preset's anchor: a UNet that outputs zero leaves the scheduler's x0 estimate at ẑ (not at
    the noisy x_t), so an untrained diffusion branch returns the LKPN's deblurred latent."""
    from deblurdiff.models import predict_noise

    pipe = DeblurDiffPipeline.from_preset("tiny")
    assert pipe.config.z_hat_anchor and CoTrainingModule(pipe).z_hat_anchor
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    z_0, z_b, noise, _ = batch(pipe)
    t = torch.tensor([700, 700])
    x_t = pipe.scheduler.add_noise(z_0, noise, t)
    with torch.no_grad():
        anchored = predict_noise(pipe.unet, pipe.controlnet, pipe.lkpn, x_t, t, z_b, pipe.null_text_embedding(2),
                                 anchor_scheduler=pipe.scheduler)
        plain = predict_noise(pipe.unet, pipe.controlnet, pipe.lkpn, x_t, t, z_b, pipe.null_text_embedding(2))
    assert plain.model_output.abs().max() == 0  # the paper's output: all from the (silent) UNet
    x0 = pipe.scheduler.step(anchored.model_output[:1], 700, x_t[:1]).pred_original_sample
    torch.testing.assert_close(x0, anchored.z_hat[:1], rtol=1e-4, atol=1e-4)


def test_start_weight_adds_the_lkpn_estimate_from_z_b_alone():
    """μ · MSE(LKPN(z_b, x_t := z_b).ẑ, z_0): what the sampler starts from at strength < 1."""
    pipe = DeblurDiffPipeline.from_preset("tiny")
    torch.nn.init.normal_(pipe.lkpn.unet.conv_out.weight, std=0.01)  # ẑ ≠ z_b, so the two estimates differ
    z_0, z_b, noise, t = batch(pipe)
    context = pipe.null_text_embedding(2)
    args = (pipe.unet, pipe.controlnet, pipe.lkpn, pipe.scheduler, z_0, z_b, noise, t, context)
    plain = training_step(*args)
    with_start = training_step(*args, start_weight=0.5)
    assert plain.start_latent_loss is None and "start_latent_loss" not in plain.as_floats()
    expected = F.mse_loss(pipe.lkpn(z_b, z_b, t, context).z_hat, z_0)
    torch.testing.assert_close(with_start.start_latent_loss, expected)
    torch.testing.assert_close(with_start.loss, plain.loss + 0.5 * expected)
    assert with_start.as_floats()["start_latent_loss"] == pytest.approx(expected.item())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_from_output_inverts_output_for_x0(prediction_type):
    from deblurdiff.models import output_for_x0, x0_from_output

    scheduler = ddpm_scheduler(prediction_type)
    g = torch.Generator().manual_seed(2)
    x0, x_t, t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 640])
    torch.testing.assert_close(x0_from_output(scheduler, output_for_x0(scheduler, x0, x_t, t), x_t, t), x0,
                               rtol=1e-4, atol=1e-4)


def test_noise_from_estimate_trains_the_branch_on_noised_z_hat_in_x0_space():
    """noise_from="estimate": x_t is noised from ẑ (what the sampler starts from at strength < 1) and the
    diffusion loss is MSE(x0_pred, z_0). With the anchor, a silent UNet's x0 is ẑ itself, so the two
    losses agree; a UNet that does predict moves the diffusion loss away from the latent loss."""
    pipe = DeblurDiffPipeline.from_preset("tiny")
    torch.nn.init.normal_(pipe.lkpn.unet.conv_out.weight, std=0.01)  # ẑ ≠ z_b
    z_0, z_b, noise, _ = batch(pipe)
    t = torch.tensor([40, 250])
    context = pipe.null_text_embedding(2)
    args = (pipe.unet, pipe.controlnet, pipe.lkpn, pipe.scheduler, z_0, z_b, noise, t, context)
    predicting = training_step(*args, z_hat_anchor=True, noise_from="estimate")
    predicting.loss.backward()
    assert pipe.lkpn.unet.conv_out.weight.grad.abs().sum() > 0  # the latent loss trains the LKPN
    assert pipe.unet.conv_out.weight.grad.abs().sum() > 0  # the x0 loss trains the diffusion branch
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    with torch.no_grad():
        silent = training_step(*args, z_hat_anchor=True, noise_from="estimate")
        expected = F.mse_loss(pipe.lkpn(z_b, z_b, t, context).z_hat, z_0)
    torch.testing.assert_close(silent.latent_loss, expected)
    torch.testing.assert_close(silent.diffusion_loss, expected, rtol=1e-4, atol=1e-6)
    assert abs(predicting.diffusion_loss.item() - expected.item()) > 1e-4
    with pytest.raises(ValueError, match="noise_from"):
        training_step(*args, noise_from="blurry")
