"""Partial-noise latent diffusion: noising for training, a few deterministic DDIM steps for inference.

CICLD never generates a latent from pure noise. The image's own latent z0 is noised only up to
the partial-noise start t* (a fraction of the T = 1000 training timesteps), and the UNet ε_θ
denoises it back:

- training draws t uniformly in [0, t*), forms z_t with diffusers' :class:`DDPMScheduler`
  and hands the segmentation path the one-step estimate ẑ0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t;
- inference adds seeded noise to reach z_{t_S} ≈ z_{t*} and runs S deterministic (η = 0) steps
  of diffusers' :class:`DDIMScheduler` back to t = 0. S = 0 skips the UNet: ẑ0 = z0.

This object holds no parameters; the network calls it with a closure over ε_θ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from cicld.errors import CicldError

#: ε_θ as the diffusion sees it: (z_t, timesteps of shape (B,)) -> predicted noise.
NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LatentDiffusion:
    """Schedules and update rules shared by training and inference (no learnable state)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        t_star: float = 0.2,
    ):
        schedule = dict(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            clip_sample=False,
            prediction_type="epsilon",
        )
        self.train_scheduler = DDPMScheduler(**schedule)
        # set_alpha_to_one: the last DDIM step lands exactly on ẑ0 (ᾱ_prev = 1).
        self.inference_scheduler = DDIMScheduler(
            **schedule, set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing"
        )
        self.num_train_timesteps = num_train_timesteps
        self.t_star_step = max(1, min(num_train_timesteps, round(t_star * num_train_timesteps)))

    @classmethod
    def from_config(cls, config) -> LatentDiffusion:
        return cls(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            t_star=config.t_star,
        )

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training timesteps, uniform in [0, t*)."""
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.t_star_step, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε (Eq. 6's network input)."""
        return self.train_scheduler.add_noise(z0, noise, timesteps.to(z0.device))

    def predict_z0(self, z_t: torch.Tensor, noise_pred: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """One-step estimate ẑ0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, per sample."""
        alphas = self.train_scheduler.alphas_cumprod.to(device=z_t.device, dtype=torch.float32)
        alpha = alphas[timesteps.to(z_t.device).long()].to(z_t.dtype).view(-1, *([1] * (z_t.dim() - 1)))
        return (z_t - (1 - alpha).sqrt() * noise_pred) / alpha.sqrt()

    # ------------------------------------------------------------------ inference
    def inference_timesteps(self, steps: int) -> torch.Tensor:
        """The S DDIM timesteps from ≈t* down to the last one before 0 (empty for S = 0).

        Like diffusers' img2img "strength", the DDIM grid is chosen so that its last S points
        span [0, t*): N = round(S·T/t*) grid steps of stride ⌊T/N⌋, which is exactly the stride
        ``DDIMScheduler.step`` uses to find the previous timestep. The first timestep is
        S·⌊T/N⌋ − 1, i.e. t* − 1 whenever t* divides evenly (200, 199..99 for S = 2, t* = 200).

        Pure: it changes no scheduler state (:meth:`denoise` sets the scheduler's grid itself).
        """
        if steps == 0:
            self._inference_grid(steps)  # the range check
            return torch.zeros(0, dtype=torch.long, device="cpu")
        stride = self.num_train_timesteps // self._inference_grid(steps)
        return torch.arange(steps, 0, -1, dtype=torch.long, device="cpu") * stride - 1

    def _inference_grid(self, steps: int) -> int:
        """N, the number of DDIM grid steps over [0, T) whose last ``steps`` span [0, t*)."""
        if steps < 0 or steps > self.t_star_step:
            raise CicldError(f"inference steps must be between 0 and t* = {self.t_star_step}, got {steps}")
        return min(self.num_train_timesteps, max(steps, round(steps * self.num_train_timesteps / self.t_star_step)))

    def draw_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype
    ) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)

    def denoise(
        self, z0: torch.Tensor, predict_noise: NoisePredictor, steps: int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ẑ0 after S deterministic DDIM steps from z_{t_S}; ``noise`` is the ε that reaches z_{t_S}."""
        timesteps = self.inference_timesteps(steps)
        if steps == 0:
            return z0
        # DDIMScheduler.step finds the previous timestep from the grid size set here.
        self.inference_scheduler.set_timesteps(self._inference_grid(steps))
        if noise is None or noise.shape != z0.shape:
            raise CicldError(f"denoising needs noise shaped like the latent {tuple(z0.shape)}")
        batch = z0.shape[0]
        sample = self.train_scheduler.add_noise(z0, noise.to(z0), timesteps[:1].expand(batch).to(z0.device))
        for t in timesteps.tolist():
            t_batch = torch.full((batch,), t, dtype=torch.long, device=z0.device)
            noise_pred = predict_noise(sample, t_batch)
            sample = self.inference_scheduler.step(noise_pred, t, sample, eta=0.0).prev_sample
        return sample
