"""Noise schedules, step subsequences, forward noising and the masked x0 L1 loss."""

from __future__ import annotations

import math

import pytest
import torch

from diffv2s.config import DiffusionConfig
from diffv2s.diffusion.schedule import (
    cosine_schedule,
    diffusion_loss,
    linear_schedule,
    log_snr,
    make_schedule,
    q_sample,
    sampling_timesteps,
)

torch.set_num_threads(2)


def test_cosine_schedule_follows_nichol_dhariwal() -> None:
    sch = cosine_schedule(1000)
    s = 0.008

    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2

    # Away from the clipped end, ᾱ at index t is the closed form at u = (t + 1) / T.
    for t in (0, 10, 250, 500, 750, 950):
        assert sch.alpha_bar(t) == pytest.approx(abar((t + 1) / 1000), rel=1e-9)
    betas = 1 - sch.alphas_cumprod[1:] / sch.alphas_cumprod[:-1]
    assert float(betas.max()) <= 0.999 + 1e-12
    assert torch.all(sch.alphas_cumprod[1:] < sch.alphas_cumprod[:-1])
    assert sch.alpha_bar(999) < 1e-6 and sch.alpha_bar(0) > 0.9999


def test_linear_schedule_is_ho_et_al() -> None:
    sch = linear_schedule(1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    expected = math.prod(1 - b for b in betas.tolist()[:501])
    assert sch.alpha_bar(500) == pytest.approx(expected, rel=1e-10)
    assert sch.alpha_bar(0) == pytest.approx(1 - 1e-4)
    assert make_schedule(DiffusionConfig(schedule="linear")).name == "linear"
    assert make_schedule(DiffusionConfig()).timesteps == 1000
    torch.testing.assert_close(
        make_schedule("cosine", 500).alphas_cumprod, cosine_schedule(500).alphas_cumprod
    )
    with pytest.raises(ValueError):
        make_schedule(DiffusionConfig(schedule="sigmoid"))


@pytest.mark.parametrize("spacing", ["trailing", "logsnr"])
def test_sampling_timesteps_are_distinct_decreasing_and_end_clean(spacing: str) -> None:
    for sch in (cosine_schedule(), linear_schedule()):
        for steps in (2, 3, 10, 25, 100, 1000):
            ts = sampling_timesteps(sch, steps, spacing)
            assert len(ts) == steps and len(set(ts)) == steps
            assert ts == sorted(ts, reverse=True) and ts[-1] == 0 and ts[0] <= 999
        assert len(sampling_timesteps(sch, 1, spacing)) == 1
    with pytest.raises(ValueError):
        sampling_timesteps(cosine_schedule(), 0, spacing)
    with pytest.raises(ValueError):
        sampling_timesteps(cosine_schedule(), 1001, spacing)


def test_logsnr_spacing_is_even_in_logsnr() -> None:
    sch = linear_schedule()
    lam = log_snr(sch)
    gaps = [
        float(lam[b] - lam[a])
        for a, b in zip(
            sampling_timesteps(sch, 10, "logsnr")[:-1], sampling_timesteps(sch, 10, "logsnr")[1:], strict=True
        )
    ]
    assert max(gaps) / min(gaps) < 1.3  # only index rounding breaks equality
    trailing = sampling_timesteps(sch, 10, "trailing")
    assert trailing == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_q_sample_marginals() -> None:
    sch = cosine_schedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 2, 20000), 0.5)
    t = torch.tensor([0, 300, 600, 999])
    xt = q_sample(x0, t, torch.randn(x0.shape, generator=gen), sch)
    for i, step in enumerate(t.tolist()):
        ab = sch.alpha_bar(step)
        assert float(xt[i].mean()) == pytest.approx(math.sqrt(ab) * 0.5, abs=0.01)
        assert float(xt[i].std()) == pytest.approx(math.sqrt(1 - ab), abs=0.01)


def test_diffusion_loss_is_masked_l1_on_x0() -> None:
    sch = cosine_schedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 10, generator=gen)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    seen: dict[str, torch.Tensor] = {}

    def off_by_one(x_t: torch.Tensor, t: torch.Tensor, tag: str) -> torch.Tensor:
        seen["x_t"], seen["t"] = x_t, t
        # Exact on real frames + 1, garbage on padding: padding must not count.
        out = x0 + 1.0
        return torch.where(mask.unsqueeze(1), out, torch.full_like(out, 1e6))

    loss = diffusion_loss(off_by_one, x0, mask, sch, cond=("tag",), generator=gen)
    assert float(loss) == pytest.approx(1.0, abs=1e-6)
    assert seen["t"].dtype == x0.dtype and seen["t"].shape == (3,)
    assert torch.all(seen["x_t"][2, :, 3:] == 0)  # padded frames of x_t are zero, as at sampling time

    # The loss sees the noised input at the requested t, and gradients reach the model.
    weight = torch.zeros(1, requires_grad=True)
    t = torch.tensor([5, 500, 995])
    noise = torch.randn(x0.shape, generator=gen)

    def model(x_t: torch.Tensor, t_f: torch.Tensor) -> torch.Tensor:
        torch.testing.assert_close(x_t, q_sample(x0, t, noise, sch) * mask.unsqueeze(1))
        return x_t * weight

    loss = diffusion_loss(model, x0, mask, sch, t=t, noise=noise)
    loss.backward()
    assert weight.grad is not None and float(weight.grad.abs()) > 0
    expected = (x0.abs() * mask.unsqueeze(1)).sum() / (mask.sum() * 4)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
