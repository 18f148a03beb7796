"""Guidance: wrappers that turn denoisers into a guided denoiser with the same signature.

`denoise(x_t: [B, C, T], t: [B] float timestep index) -> x0_hat: [B, C, T]` (see `samplers`), so any sampler
runs guided sampling unchanged.

Speaker guidance (DiffV2S) is classifier guidance (Dhariwal & Nichol 2021) with the "classifier"
log p(s | x_t) := -(1 - cos(s_v, speaker(x0_hat(x_t)))). Classifier guidance shifts the noise prediction,
    ε̃ = ε̂ - sqrt(1 - ᾱ_t) · w · ∇_{x_t} log p,
and since x0 = (x_t - sqrt(1 - ᾱ_t)·ε)/sqrt(ᾱ_t) for an x0-predicting model, the same shift in x0 is
    x̃0 = x0_hat + w · (1 - ᾱ_t)/sqrt(ᾱ_t) · ∇_{x_t} log p = x0_hat - w · (1 - ᾱ_t)/sqrt(ᾱ_t) · g,
with g = ∇_{x_t} (1 - cos) (equivalently: adding w·∇ log p to the score in Tweedie's formula).
Each item's loss depends only on that item, so g is per item; it is masked so padding stays 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffv2s.diffusion.samplers import Denoiser
from diffv2s.diffusion.schedule import NoiseSchedule, expand_mask


def classifier_free(denoise_cond: Denoiser, denoise_uncond: Denoiser, scale: float) -> Denoiser:
    """Classifier-free guidance on x0: x0 = uncond + scale·(cond - uncond). scale = 1 is the conditional
    model alone (and costs one call); scale = 0 the unconditional one."""
    if scale == 1.0:
        return denoise_cond

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        cond = denoise_cond(x_t, t)
        uncond = denoise_uncond(x_t, t)
        return uncond + scale * (cond - uncond)

    return guided


def speaker_loss(embedding: Tensor, target: Tensor) -> Tensor:
    """1 - cos(target, embedding) per item: embedding, target: [B, D] → [B]."""
    return 1.0 - F.cosine_similarity(embedding, target.to(embedding), dim=-1)


def speaker_guided(
    denoise: Denoiser,
    speaker_fn: Callable[[Tensor], Tensor],
    target: Tensor,
    scale: float,
    schedule: NoiseSchedule,
    mask: Tensor | None = None,
) -> Denoiser:
    """The paper's speaker guidance: x̃0 = x0_hat - scale·(1 - ᾱ_t)/sqrt(ᾱ_t)·∇_{x_t}(1 - cos(target, s(x0_hat))).

    denoise: must be differentiable (a torch module, not an exported engine); the guided denoiser enables
    grad itself, so it runs inside `torch.no_grad()` (as the samplers do) but not inside `torch.inference_mode()`
    (tensors made there cannot enter autograd).
    speaker_fn: x0 mel [B, C, T] → speaker embedding [B, D], differentiable, per item (it captures the mask
    for its pooling). target: [B, D], e.g. the visual speaker embedding s_v. mask: bool [B, T] or None.
    scale = 0 returns `denoise` unchanged.
    """
    if scale == 0.0:
        return denoise

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            x0 = denoise(x, t)
            loss = speaker_loss(speaker_fn(x0), target)
            # Summing the per-item losses leaves each item's gradient its own.
            (grad,) = torch.autograd.grad(loss.sum(), x)
        abar = schedule.alphas_cumprod.to(x_t.device)[t.round().long()].view(-1, 1, 1)
        factor = ((1 - abar) / abar.sqrt()).to(x_t.dtype)
        return (x0.detach() - scale * factor * grad * expand_mask(mask, x_t)).detach()

    return guided
