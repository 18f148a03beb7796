"""Classifier-free guidance and the paper's speaker guidance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffv2s.diffusion.guidance import classifier_free, speaker_guided, speaker_loss
from diffv2s.diffusion.samplers import initial_noise, sample_ddim, sample_dpmpp_2m
from diffv2s.diffusion.schedule import cosine_schedule

torch.set_num_threads(2)
SCH = cosine_schedule()


def test_classifier_free_formula() -> None:
    calls = {"cond": 0, "uncond": 0}
    gen = torch.Generator().manual_seed(0)
    cond_out, uncond_out = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)

    def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls["cond"] += 1
        return cond_out

    def uncond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls["uncond"] += 1
        return uncond_out

    x, t = torch.zeros(2, 3, 4), torch.zeros(2)
    for scale in (0.0, 2.5, 7.0):
        out = classifier_free(cond, uncond, scale)(x, t)
        torch.testing.assert_close(out, uncond_out + scale * (cond_out - uncond_out))
    torch.testing.assert_close(classifier_free(cond, uncond, 0.0)(x, t), uncond_out)
    calls.update(cond=0, uncond=0)
    assert classifier_free(cond, uncond, 1.0)(x, t) is cond_out
    assert calls == {"cond": 1, "uncond": 0}  # scale 1 costs one call


def _toy_world(n_channels: int = 8, dim: int = 16):
    """A differentiable 'speaker encoder' (masked mean-pool + linear + normalise) and a differentiable
    denoiser (the Gaussian posterior mean, x0 ~ N(0, 1))."""
    gen = torch.Generator().manual_seed(3)
    proj = torch.randn(dim, n_channels, generator=gen)

    def make_speaker_fn(mask: torch.Tensor):
        def speaker_fn(x0: torch.Tensor) -> torch.Tensor:
            m = mask.to(x0).unsqueeze(1)
            pooled = (x0 * m).sum(-1) / m.sum(-1)
            return F.normalize(pooled @ proj.T.to(pooled), dim=-1)

        return speaker_fn

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCH.alphas_cumprod[t.round().long()].to(x_t).view(-1, 1, 1)
        return a.sqrt() / (a + 1 - a) * x_t

    return make_speaker_fn, denoise


def test_speaker_guidance_update_matches_finite_differences() -> None:
    """x̃0 = x0_hat - w·(1 - ᾱ_t)/sqrt(ᾱ_t)·∇_{x_t}(1 - cos), gradient checked by central differences."""
    make_speaker_fn, denoise = _toy_world(n_channels=3, dim=4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    speaker_fn = make_speaker_fn(mask)
    target = F.normalize(
        torch.randn(1, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=-1
    )
    x_t = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([600.0], dtype=torch.float64)
    scale = 2.0

    def loss_at(x: torch.Tensor) -> float:
        return float(speaker_loss(speaker_fn(denoise(x, t)), target)[0])

    grad = torch.zeros_like(x_t)
    eps = 1e-6
    for idx in range(x_t.numel()):
        bump = torch.zeros(x_t.numel(), dtype=torch.float64)
        bump[idx] = eps
        bump = bump.view_as(x_t)
        grad.view(-1)[idx] = (loss_at(x_t + bump) - loss_at(x_t - bump)) / (2 * eps)
    ab = SCH.alpha_bar(600)
    expected = denoise(x_t, t) - scale * (1 - ab) / ab**0.5 * grad
    out = speaker_guided(denoise, speaker_fn, target, scale, SCH, mask)(x_t, t)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-6)
    assert speaker_guided(denoise, speaker_fn, target, 0.0, SCH, mask) is denoise


def test_speaker_guidance_moves_samples_towards_the_target_speaker() -> None:
    make_speaker_fn, denoise = _toy_world()
    lengths = [40, 25, 33]
    mask = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    speaker_fn = make_speaker_fn(mask)
    target = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    noise = initial_noise(lengths, 8, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])

    plain = sample_ddim(denoise, noise, SCH, 20, mask)
    guided_fn = speaker_guided(denoise, speaker_fn, target, 3.0, SCH, mask)
    guided = sample_ddim(guided_fn, noise, SCH, 20, mask)
    loss_plain = speaker_loss(speaker_fn(plain), target)
    loss_guided = speaker_loss(speaker_fn(guided), target)
    assert torch.all(loss_guided < loss_plain - 0.05), (loss_plain, loss_guided)
    assert float(loss_guided.mean()) < 0.7 * float(loss_plain.mean())
    for i, n in enumerate(lengths):  # padding stays zero under guidance
        assert torch.all(guided[i, :, n:] == 0)

    # Per item: item 0 guided alone equals item 0 guided in the batch (DPM++ as a second sampler).
    batched = sample_dpmpp_2m(guided_fn, noise, SCH, 10, mask)
    mask0 = mask[:1, :40]
    alone_fn = speaker_guided(denoise, make_speaker_fn(mask0), target[:1], 3.0, SCH, mask0)
    alone = sample_dpmpp_2m(alone_fn, noise[:1], SCH, 10, mask0)
    assert float((batched[0] - alone[0]).abs().max()) <= 1e-4


def test_guidance_runs_inside_no_grad_samplers() -> None:
    make_speaker_fn, denoise = _toy_world()
    mask = torch.ones(1, 12, dtype=torch.bool)
    target = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    guided_fn = speaker_guided(denoise, make_speaker_fn(mask), target, 1.0, SCH, mask)
    with torch.no_grad():
        out = guided_fn(torch.randn(1, 8, 12), torch.tensor([500.0]))
    assert not out.requires_grad
