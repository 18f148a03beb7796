"""Discrete noise schedules (T steps), forward noising and the training loss.

Convention: timestep index t ∈ {0, …, T-1}; x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε with ᾱ = `alphas_cumprod[t]`,
decreasing in t (t = 0 is almost clean, t = T-1 almost pure noise). Masks are bool [B, T_frames], True on
real frames and False on padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffv2s.config import DiffusionConfig


@dataclass(frozen=True)
class NoiseSchedule:
    """alphas_cumprod: float64 [T], ᾱ_t of each timestep index, strictly decreasing in t."""

    alphas_cumprod: Tensor
    name: str = "custom"

    @property
    def timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float (float64 precision)."""
        return float(self.alphas_cumprod[t])


def cosine_schedule(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal (2021): ᾱ(u) = f(u)/f(0), f(u) = cos²(((u + s)/(1 + s))·π/2), u = (t + 1)/T.

    Built through β_t = 1 - ᾱ(t+1)/ᾱ(t) clipped at `max_beta`, as in the paper, so the last step stays finite.
    """

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = torch.tensor(
        [min(1 - f((i + 1) / timesteps) / f(i / timesteps), max_beta) for i in range(timesteps)],
        dtype=torch.float64,
    )
    return NoiseSchedule(torch.cumprod(1 - betas, dim=0), name="cosine")


def linear_schedule(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Ho et al. (2020): β linear from 1e-4 to 0.02 (values for T = 1000, rescaled for other T)."""
    scale = 1000 / timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)
    return NoiseSchedule(torch.cumprod(1 - betas, dim=0), name="linear")


def make_schedule(cfg: DiffusionConfig | str, timesteps: int | None = None) -> NoiseSchedule:
    """The schedule of a `DiffusionConfig`, or by name ("cosine" | "linear") with `timesteps` (default 1000)."""
    if isinstance(cfg, DiffusionConfig):
        name, steps = cfg.schedule, cfg.timesteps
    else:
        name, steps = cfg, timesteps or 1000
    if name == "cosine":
        return cosine_schedule(steps)
    if name == "linear":
        return linear_schedule(steps)
    raise ValueError(f"unknown schedule {name!r}; choose 'cosine' or 'linear'")


def log_snr(schedule: NoiseSchedule) -> Tensor:
    """λ_t = log(sqrt(ᾱ_t) / sqrt(1 - ᾱ_t)): float64 [T], decreasing in t."""
    abar = schedule.alphas_cumprod
    return 0.5 * torch.log(abar / (1 - abar))


# Below this log-SNR x_t is > 99.99 % noise (ᾱ < 4.5e-5): spending solver steps there buys nothing.
LOGSNR_FLOOR = -5.0


def sampling_timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "trailing") -> list[int]:
    """`steps` distinct timestep indices, strictly decreasing, ending at 0 (when steps > 1).

    spacing "trailing": evenly spaced in t from T-1 (the DDPM/DDIM choice).
    spacing "logsnr": evenly spaced in λ from max(λ_{T-1}, LOGSNR_FLOOR) to λ_0, rounded to the nearest
    index (DPM-Solver's choice; its error bounds are in λ). Rounding collisions are pushed one index down.
    A sampler calls the denoiser once per index; after the last one it returns the clean estimate.
    """
    n = schedule.timesteps
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be between 1 and {n}; got {steps}")
    if spacing == "trailing":
        if steps == 1:
            return [n - 1]
        return [round((n - 1) * (1 - i / (steps - 1))) for i in range(steps)]
    if spacing != "logsnr":
        raise ValueError(f"unknown spacing {spacing!r}; choose 'trailing' or 'logsnr'")
    lam = log_snr(schedule)
    start = max(float(lam[n - 1]), LOGSNR_FLOOR)
    targets = torch.linspace(start, float(lam[0]), steps, dtype=torch.float64) if steps > 1 else [start]
    out: list[int] = []
    for i, target in enumerate(targets):
        t = int(torch.argmin((lam - float(target)).abs()))
        if out:
            t = min(t, out[-1] - 1)
        out.append(max(t, steps - 1 - i))  # leave room for the remaining distinct indices
    return out


def expand_mask(mask: Tensor | None, x: Tensor) -> Tensor:
    """mask: bool [B, T] (or None = all real) → float [B, 1, T] on x's device and dtype."""
    if mask is None:
        return torch.ones(x.shape[0], 1, x.shape[-1], device=x.device, dtype=x.dtype)
    return mask.to(device=x.device, dtype=x.dtype).unsqueeze(1)


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Forward noising x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise.

    x0, noise: [B, C, T]; t: [B] integer timestep indices. Returns [B, C, T] in x0's dtype.
    """
    abar = schedule.alphas_cumprod.to(x0.device)[t.long()].view(-1, *([1] * (x0.dim() - 1)))
    return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)


def diffusion_loss(
    model: Callable[..., Tensor],
    x0: Tensor,
    mask: Tensor | None,
    schedule: NoiseSchedule,
    cond: tuple[object, ...] = (),
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Masked L1 between the predicted and the true x0 at uniformly random t (x0-prediction, as DiffV2S).

    model: called as `model(x_t, t, *cond)` with x_t: [B, C, T] and t: float [B] timestep indices; returns
    x0_hat: [B, C, T]. cond: the conditioning arguments, e.g. (visual_features, speaker, mask).
    x0: [B, C, T]; mask: bool [B, T] (True = real frame) or None. t, noise: override the random draws.
    Returns a scalar: mean |x0_hat - x0| over real frames and channels.
    """
    batch = x0.shape[0]
    draw_on = generator.device if generator is not None else x0.device
    if t is None:
        t = torch.randint(0, schedule.timesteps, (batch,), generator=generator, device=draw_on).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=draw_on, dtype=x0.dtype).to(x0.device)
    weight = expand_mask(mask, x0)
    x_t = q_sample(x0, t, noise, schedule) * weight
    x0_hat = model(x_t, t.to(x0.dtype), *cond)
    error = (x0_hat - x0).abs() * weight
    return error.sum() / (weight.sum() * x0.shape[1]).clamp(min=1.0)
