"""Specification of the partial-noise latent diffusion (cicld.models.diffusion)."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from cicld.errors import CicldError
from cicld.models.diffusion import LatentDiffusion

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def diffusion():
    return LatentDiffusion(num_train_timesteps=1000, t_star=0.2)


def exact_noise_predictor(z0):
    """An ε_θ that knows z0: returns the exact noise in z_t under the DDPM schedule."""
    alphas = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).alphas_cumprod

    def predict(z_t, t):
        a = alphas[t].view(-1, 1, 1, 1)
        return (z_t - a.sqrt() * z0) / (1 - a).sqrt()

    return predict


def test_uses_diffusers_ddpm_for_training_and_ddim_for_inference_without_clipping(diffusion):
    assert isinstance(diffusion.train_scheduler, DDPMScheduler)
    assert isinstance(diffusion.inference_scheduler, DDIMScheduler)
    for scheduler in (diffusion.train_scheduler, diffusion.inference_scheduler):
        assert scheduler.config.num_train_timesteps == 1000
        assert scheduler.config.clip_sample is False
        assert scheduler.config.prediction_type == "epsilon"
    assert torch.equal(diffusion.train_scheduler.alphas_cumprod, diffusion.inference_scheduler.alphas_cumprod)


def test_t_star_is_a_fraction_of_the_training_timesteps(diffusion):
    assert diffusion.t_star_step == 200
    assert LatentDiffusion(t_star=0.3).t_star_step == 300


def test_training_timesteps_are_drawn_below_t_star_and_reach_both_ends(diffusion):
    t = diffusion.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long
    assert int(t.min()) == 0 and int(t.max()) == diffusion.t_star_step - 1


def test_training_timesteps_are_reproducible_with_a_seeded_generator(diffusion):
    a = diffusion.sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    b = diffusion.sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_add_noise_is_the_closed_form_forward_process(diffusion):
    z0, noise = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    t = torch.tensor([10, 150])
    alpha = diffusion.train_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise
    torch.testing.assert_close(diffusion.add_noise(z0, noise, t), expected)


def test_one_step_estimate_recovers_z0_when_the_noise_is_predicted_exactly(diffusion):
    z0, noise = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6)
    t = torch.tensor([0, 99, 199])
    z_t = diffusion.add_noise(z0, noise, t)
    torch.testing.assert_close(diffusion.predict_z0(z_t, noise, t), z0, atol=1e-5, rtol=1e-5)


def test_zero_inference_steps_return_the_clean_latent_without_calling_the_unet(diffusion):
    z0 = torch.randn(1, 4, 4, 4)

    def unet_must_not_run(z, t):
        raise AssertionError("ε_θ was called with S = 0")

    assert diffusion.denoise(z0, unet_must_not_run, steps=0) is z0


@pytest.mark.parametrize(
    "steps, expected", [(1, [199]), (2, [199, 99]), (4, [199, 149, 99, 49]), (10, list(range(199, 0, -20)))]
)
def test_inference_timesteps_start_just_below_t_star_and_step_evenly_to_zero(diffusion, steps, expected):
    assert diffusion.inference_timesteps(steps).tolist() == expected


def test_inference_timesteps_stay_on_the_ddim_stride_for_uneven_step_counts(diffusion):
    timesteps = diffusion.inference_timesteps(3)
    z0, seen = torch.zeros(1, 4, 2, 2), []
    diffusion.denoise(z0, lambda z, t: (seen.append(int(t[0])), torch.zeros_like(z))[1], 3, torch.zeros_like(z0))
    stride = 1000 // diffusion.inference_scheduler.num_inference_steps  # the grid DDIM stepped on
    assert seen == timesteps.tolist() == [3 * stride - 1, 2 * stride - 1, stride - 1]
    assert timesteps[0] < diffusion.t_star_step


def test_asking_for_the_inference_timesteps_changes_no_scheduler_state(diffusion):
    scheduler = diffusion.inference_scheduler
    assert diffusion.inference_timesteps(4).tolist() == diffusion.inference_timesteps(4).tolist()
    assert scheduler.num_inference_steps is None  # a getter: never set the grid
    z0 = torch.zeros(1, 4, 2, 2)
    diffusion.denoise(z0, lambda z, t: torch.zeros_like(z), 2, torch.zeros_like(z0))
    grid, timesteps = scheduler.num_inference_steps, scheduler.timesteps.clone()
    diffusion.inference_timesteps(3)
    diffusion.inference_timesteps(0)
    assert scheduler.num_inference_steps == grid and torch.equal(scheduler.timesteps, timesteps)


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_ddim_with_an_exact_noise_predictor_returns_z0(diffusion, steps):
    z0, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    out = diffusion.denoise(z0, exact_noise_predictor(z0), steps=steps, noise=noise)
    torch.testing.assert_close(out, z0, atol=1e-4, rtol=1e-4)


def test_one_ddim_step_equals_the_training_one_step_estimate_at_the_start_timestep(diffusion):
    z0, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    eps = torch.randn(2, 4, 4, 4)  # any prediction: both paths must use it identically
    out = diffusion.denoise(z0, lambda z, t: eps, steps=1, noise=noise)
    t = torch.full((2,), 199)
    torch.testing.assert_close(out, diffusion.predict_z0(diffusion.add_noise(z0, noise, t), eps, t))


def test_denoising_is_deterministic_given_the_noise(diffusion):
    z0, noise = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    fake_unet = lambda z, t: torch.tanh(z) * (t.view(-1, 1, 1, 1) / 1000.0)  # noqa: E731
    assert torch.equal(diffusion.denoise(z0, fake_unet, 4, noise), diffusion.denoise(z0, fake_unet, 4, noise))


def test_denoising_without_noise_is_an_error(diffusion):
    with pytest.raises(CicldError, match="noise"):
        diffusion.denoise(torch.zeros(1, 4, 2, 2), lambda z, t: z, steps=2)


def test_more_steps_than_t_star_timesteps_is_an_error():
    with pytest.raises(CicldError, match="between 0 and t"):
        LatentDiffusion(t_star=0.005).inference_timesteps(6)
