"""Samplers for an x0-predicting denoiser: small pure functions in the style of k-diffusion's `sampling.py`.

A sampler sees only a denoiser callable

    denoise(x_t: Tensor [B, C, T], t: Tensor [B] float timestep index) -> x0_hat: Tensor [B, C, T]

The caller captures the conditioning and the padding mask in a closure, e.g.
`lambda x_t, t: model(x_t, t, features, speaker, mask)`; no sampler knows about networks, engines or
batching. All items of a batch share the same timestep at each call.

Batches hold items of different lengths: `mask` is bool [B, T], True on real frames. Padded frames are 0 in
the noise, after every step and in the output. Randomness is per item: the caller passes one
`torch.Generator` per item, and item i's noise ([C, T_i], its own length) is drawn from generator i only,
so an item's output does not depend on what else is in its batch.

Timestep convention and schedules: see `diffv2s.diffusion.schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffv2s.diffusion.schedule import NoiseSchedule, expand_mask, log_snr, sampling_timesteps

Denoiser = Callable[[Tensor, Tensor], Tensor]
DenoiseFn = Denoiser  # alias used by callers
Callback = Callable[[int, int], None]


def initial_noise(
    lengths: Sequence[int],
    n_channels: int,
    generators: Sequence[torch.Generator],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Padded standard normal noise [B, n_channels, max(lengths)]; item i is drawn as [C, T_i] from
    generators[i] (on that generator's device) and zero-padded."""
    if len(lengths) != len(generators):
        raise ValueError(f"need one generator per item: {len(lengths)} lengths, {len(generators)} generators")
    t_max = max(lengths, default=0)
    out = torch.zeros(len(lengths), n_channels, t_max, device=device, dtype=dtype)
    for i, (length, gen) in enumerate(zip(lengths, generators, strict=True)):
        item = torch.randn(n_channels, int(length), generator=gen, device=gen.device, dtype=torch.float32)
        out[i, :, : int(length)] = item.to(device=out.device, dtype=dtype)
    return out


def lengths_of(mask: Tensor | None, x: Tensor) -> list[int]:
    """Real length of each item: mask: bool [B, T] (real frames first) or None (all full length)."""
    if mask is None:
        return [x.shape[-1]] * x.shape[0]
    return [int(n) for n in mask.sum(dim=1).tolist()]


def _step_noise(x: Tensor, mask: Tensor | None, generators: Sequence[torch.Generator] | None) -> Tensor:
    if generators is None:
        raise ValueError("a stochastic sampler needs one torch.Generator per item (generators=...)")
    return initial_noise(lengths_of(mask, x), x.shape[1], generators, device=x.device, dtype=x.dtype)


def _timestep(x: Tensor, t: int) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_ddpm(
    denoise: Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    mask: Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020) on `steps` evenly spaced timesteps.

    Each step draws x_s ~ q(x_s | x_t, x0_hat), the Gaussian posterior between the visited timesteps t > s:
    mean = sqrt(ᾱ_s)(1 - ᾱ_t/ᾱ_s)/(1 - ᾱ_t)·x0_hat + sqrt(ᾱ_t/ᾱ_s)(1 - ᾱ_s)/(1 - ᾱ_t)·x_t,
    variance = (1 - ᾱ_s)/(1 - ᾱ_t)·(1 - ᾱ_t/ᾱ_s). The last step returns x0_hat.
    noise: [B, C, T] (see `initial_noise`); generators: one per item, for the per-step noise.
    """
    m = expand_mask(mask, noise)
    x = noise * m
    timesteps = sampling_timesteps(schedule, steps)
    for i, t in enumerate(timesteps):
        x0 = denoise(x, _timestep(x, t)) * m
        if i + 1 == len(timesteps):
            x = x0
        else:
            ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(timesteps[i + 1])
            ratio = ab_t / ab_s
            coef_x0 = math.sqrt(ab_s) * (1 - ratio) / (1 - ab_t)
            coef_xt = math.sqrt(ratio) * (1 - ab_s) / (1 - ab_t)
            std = math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ratio))
            x = (coef_x0 * x0 + coef_xt * x + std * _step_noise(x, mask, generators)) * m
        if callback is not None:
            callback(i + 1, len(timesteps))
    return x


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    mask: Tensor | None = None,
    eta: float = 0.0,
    callback: Callback | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021). eta = 0: deterministic; eta = 1: the DDPM posterior (needs generators).

    With ε_hat = (x_t - sqrt(ᾱ_t)·x0_hat)/sqrt(1 - ᾱ_t) and σ = eta·sqrt((1 - ᾱ_s)/(1 - ᾱ_t)·(1 - ᾱ_t/ᾱ_s)):
    x_s = sqrt(ᾱ_s)·x0_hat + sqrt(1 - ᾱ_s - σ²)·ε_hat + σ·z. The last step returns x0_hat.
    """
    m = expand_mask(mask, noise)
    x = noise * m
    timesteps = sampling_timesteps(schedule, steps)
    for i, t in enumerate(timesteps):
        x0 = denoise(x, _timestep(x, t)) * m
        if i + 1 == len(timesteps):
            x = x0
        else:
            ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(timesteps[i + 1])
            eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _step_noise(x, mask, generators)
            x = x * m
        if callback is not None:
            callback(i + 1, len(timesteps))
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    mask: Tensor | None = None,
    callback: Callback | None = None,
    spacing: str = "logsnr",
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep second order in the data-prediction form; good at 10-20 steps.

    With α = sqrt(ᾱ), σ = sqrt(1 - ᾱ), λ = log(α/σ) and h_i = λ_{i+1} - λ_i:
    x_{i+1} = (σ_{i+1}/σ_i)·x_i - α_{i+1}·(e^{-h_i} - 1)·D_i, where D_0 = x0_hat_0 and
    D_i = (1 + 1/(2 r_i))·x0_hat_i - 1/(2 r_i)·x0_hat_{i-1}, r_i = h_{i-1}/h_i.
    The last step (to the clean signal, λ = ∞) is first order, i.e. returns x0_hat, as k-diffusion does.
    Timesteps are evenly spaced in λ by default (see `sampling_timesteps`); the noise is taken as x at the
    first of them.
    """
    m = expand_mask(mask, noise)
    x = noise * m
    timesteps = sampling_timesteps(schedule, steps, spacing)

    lam = log_snr(schedule).tolist()
    previous: Tensor | None = None
    h_previous = 0.0
    for i, t in enumerate(timesteps):
        x0 = denoise(x, _timestep(x, t)) * m
        if i + 1 == len(timesteps):
            x = x0
        else:
            s = timesteps[i + 1]
            ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
            h = lam[s] - lam[t]
            if previous is None:
                d = x0
            else:
                r = h_previous / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous
            x = (math.sqrt((1 - ab_s) / (1 - ab_t)) * x - math.sqrt(ab_s) * math.expm1(-h) * d) * m
            previous, h_previous = x0, h
        if callback is not None:
            callback(i + 1, len(timesteps))
    return x


def sample(
    sampler: str,
    denoise: Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    mask: Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run the sampler named as in the API ("ddpm" | "ddim" | "dpmpp"). Returns x0: [B, C, T]."""
    if sampler == "ddpm":
        return sample_ddpm(denoise, noise, schedule, steps, mask, generators, callback)
    if sampler == "ddim":
        return sample_ddim(denoise, noise, schedule, steps, mask, callback=callback)
    if sampler == "dpmpp":
        return sample_dpmpp_2m(denoise, noise, schedule, steps, mask, callback)
    raise ValueError(f"unknown sampler {sampler!r}; choose 'ddpm', 'ddim' or 'dpmpp'")
