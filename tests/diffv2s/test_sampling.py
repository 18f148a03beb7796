"""The sampling assembly on stand-in engines: the production denoiser is the engine's network, then
classifier-free guidance, then speaker guidance on the de-normalised mel, and the sampler sees only it."""

from __future__ import annotations

import pytest
import torch

from diffv2s.config import DiffusionConfig
from diffv2s.diffusion.schedule import make_schedule
from diffv2s.engines.spec import Engines
from diffv2s.errors import InvalidParameter
from diffv2s.sampling import Conditioning, production_denoiser
from diffv2s.schemas import ResolvedSampling

DIFFUSION = DiffusionConfig(mel_mean=-5.0, mel_std=2.0)
SCHEDULE = make_schedule(DIFFUSION)


class StandIn:
    """Engines whose denoiser gives 0.5 x_t + 5 with the condition and 0.5 x_t + 2 without it, and whose
    speaker extractor averages the mel over time; both record what they were called with."""

    def __init__(self, differentiable: bool = True) -> None:
        self.drops: list[list[bool]] = []
        self.heard: list[torch.Tensor] = []
        self.differentiable = differentiable

    def denoiser(self, x_t, t, visual, visual_mask, speaker, mask, drop_cond):  # type: ignore[no-untyped-def]
        self.drops.append(drop_cond.tolist())
        return 0.5 * x_t + torch.where(drop_cond, 2.0, 5.0)[:, None, None]

    def speaker_from_mel(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.heard.append(mel.detach().clone())
        return mel.mean(dim=2)

    def engines(self) -> Engines:
        def unused(*args: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the sampling assembly calls the denoiser (and speaker_from_mel) only")

        return Engines(
            name="stand-in",
            encoder=unused,
            speaker=unused,
            denoiser=self.denoiser,
            vocoder=unused,
            speaker_from_mel=self.speaker_from_mel if self.differentiable else None,
        )


def _cond(batch: int = 2, n_mels: int = 4, frames: int = 6) -> Conditioning:
    return Conditioning(
        visual=torch.zeros(batch, 3, 8),
        visual_mask=torch.ones(batch, 3, dtype=torch.bool),
        speaker=torch.nn.functional.normalize(torch.ones(batch, n_mels), dim=1),
        mask=torch.ones(batch, frames, dtype=torch.bool),
    )


def _settings(cfg_scale: float, guidance: float = 0.0) -> ResolvedSampling:
    return ResolvedSampling("ddim", 4, 0, guidance, cfg_scale, 1.0)


def test_without_guidance_the_denoiser_is_the_conditional_network_alone() -> None:
    standin = StandIn()
    denoise = production_denoiser(standin.engines(), _cond(), _settings(1.0), DIFFUSION, SCHEDULE)
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(denoise(x, torch.full((2,), 500.0)), 0.5 * x + 5.0)
    assert standin.drops == [[False, False]]  # one call per step


def test_classifier_free_guidance_extrapolates_from_the_unconditional_call() -> None:
    standin = StandIn()
    denoise = production_denoiser(standin.engines(), _cond(), _settings(1.5), DIFFUSION, SCHEDULE)
    x = torch.randn(2, 4, 6)
    # uncond + 1.5 (cond - uncond) = (0.5 x + 2) + 1.5 * 3
    torch.testing.assert_close(denoise(x, torch.full((2,), 500.0)), 0.5 * x + 6.5)
    assert sorted(standin.drops) == [[False, False], [True, True]]


def test_speaker_guidance_wraps_the_guided_denoiser_and_hears_the_denormalised_mel() -> None:
    standin = StandIn()
    cond = _cond()
    settings = _settings(1.5, guidance=3.0)
    denoise = production_denoiser(standin.engines(), cond, settings, DIFFUSION, SCHEDULE)
    x, t = torch.randn(2, 4, 6), torch.full((2,), 500.0)
    out = denoise(x, t)
    x0 = 0.5 * x + 6.5  # what classifier-free guidance gives: speaker guidance starts from it
    (heard,) = standin.heard
    torch.testing.assert_close(heard, x0 * DIFFUSION.mel_std + DIFFUSION.mel_mean)
    assert (out - x0).abs().max() > 1e-4  # the gradient step moved it
    unguided = production_denoiser(standin.engines(), cond, _settings(1.5), DIFFUSION, SCHEDULE)
    torch.testing.assert_close(unguided(x, t), x0)


def test_speaker_guidance_on_an_engine_without_a_gradient_path_is_refused() -> None:
    engines = StandIn(differentiable=False).engines()
    production_denoiser(engines, _cond(), _settings(1.5), DIFFUSION, SCHEDULE)  # unguided: fine
    with pytest.raises(InvalidParameter, match="speaker guidance needs a differentiable"):
        production_denoiser(engines, _cond(), _settings(1.5, guidance=1.0), DIFFUSION, SCHEDULE)
