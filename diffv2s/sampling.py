"""The one sampling path: mouth-ROI frames -> log-mels, as the service, `diffv2s export verify` and the
evaluation all run it (each passes its own `Engines`; nothing is patched in).

Composed once, k-diffusion style: the engine's denoiser -> classifier-free guidance -> speaker guidance is
one `Denoiser` callable (`production_denoiser`), and the sampler (`diffv2s.diffusion.samplers`) sees only
that callable. Settings come from `diffv2s.schemas.resolve_sampling` (a request's parameters, the
checkpoint's defaults filled in).

    generate_mels  frames of each video -> windows -> encoder + speaker -> one speaker embedding per video
                   -> `sample` per group of equal settings -> windows cross-faded -> one mel per video
    sample         conditioning of a batch of windows + settings + noise generators -> mels
    vocode         mels -> waveforms
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from diffv2s.config import DiffusionConfig, ModelConfig
from diffv2s.diffusion import guidance, samplers
from diffv2s.diffusion.schedule import NoiseSchedule, make_schedule
from diffv2s.engines.spec import Engines
from diffv2s.errors import InvalidParameter
from diffv2s.schemas import SAMPLERS, ResolvedSampling, SynthesisParams, resolve_sampling
from diffv2s.windows import (
    OVERLAP_FRAMES,
    WINDOW_FRAMES,
    Window,
    crossfade,
    mel_frames,
    plan_batch,
    window_seed,
)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Conditioning:
    """What the denoiser is conditioned on, for a batch of B windows.

    visual: [B, Tv, D] encoder features; visual_mask: [B, Tv] True = real frame; speaker: [B, S] speaker
    embeddings; mask: [B, T] True = real mel frame (the length of each window's mel).
    """

    visual: torch.Tensor
    visual_mask: torch.Tensor
    speaker: torch.Tensor
    mask: torch.Tensor


def production_denoiser(
    engines: Engines,
    cond: Conditioning,
    settings: ResolvedSampling,
    diffusion: DiffusionConfig,
    schedule: NoiseSchedule,
) -> samplers.Denoiser:
    """The denoiser the sampler calls: the engine's network, with classifier-free guidance at
    `settings.cfg_scale` (1 = off: one call per step) and speaker guidance at `settings.guidance`
    (0 = off). Both work in the diffusion's normalised space; the speaker extractor hears the de-normalised
    log-mel, as it was trained on."""
    n = cond.mask.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=cond.mask.device)
    drop = torch.ones(n, dtype=torch.bool, device=cond.mask.device)

    def conditional(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return engines.denoiser(x_t, t, cond.visual, cond.visual_mask, cond.speaker, cond.mask, keep)

    def unconditional(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return engines.denoiser(x_t, t, cond.visual, cond.visual_mask, cond.speaker, cond.mask, drop)

    denoise = guidance.classifier_free(conditional, unconditional, settings.cfg_scale)
    if settings.guidance > 0:
        speaker_from_mel = engines.speaker_from_mel
        if speaker_from_mel is None:
            raise InvalidParameter(
                f"speaker guidance needs a differentiable speaker extractor; engine {engines.name!r} has none. "
                "Use guidance=0 or the torch engine."
            )

        def speaker_of(x0: torch.Tensor) -> torch.Tensor:
            return speaker_from_mel(diffusion.denormalise(x0), cond.mask)

        denoise = guidance.speaker_guided(
            denoise, speaker_of, cond.speaker, settings.guidance, schedule, cond.mask
        )
    return denoise


def sample(
    engines: Engines,
    cfg: ModelConfig,
    cond: Conditioning,
    settings: ResolvedSampling,
    generators: Sequence[torch.Generator],
    progress: ProgressFn | None = None,
    schedule: NoiseSchedule | None = None,
) -> list[torch.Tensor]:
    """Sample the log-mel of each window of a batch that shares `settings` (its `seed` is not read: row b's
    noise, the start and every stochastic step, comes from generators[b] alone).

    Returns one log-mel [n_mels, L_b] per row on the CPU, L_b = cond.mask[b].sum().
    """
    if settings.sampler not in SAMPLERS:
        raise InvalidParameter(f"unknown sampler {settings.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    diffusion = cfg.diffusion
    schedule = schedule if schedule is not None else make_schedule(diffusion)
    lengths = [int(n) for n in cond.mask.sum(dim=1).tolist()]
    noise = samplers.initial_noise(lengths, cfg.audio.n_mels, generators) * settings.noise_scale
    denoise = production_denoiser(engines, cond, settings, diffusion, schedule)
    x0 = samplers.sample(
        settings.sampler,
        denoise,
        noise.to(cond.mask.device),
        schedule,
        settings.steps,
        cond.mask,
        generators,
        progress,
    )
    # The samples live in the normalised space.
    mel = diffusion.denormalise(x0.detach().float()).cpu()
    return [mel[b, :, :n] for b, n in enumerate(lengths)]


@dataclass
class MelBatch:
    """What `generate_mels` returns. mels: one log-mel [n_mels, T_i] per video (CPU); timings: seconds of
    the encoder, speaker and sampling stages; sampling: the settings each video ran with."""

    mels: list[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    sampling: list[ResolvedSampling] = field(default_factory=list)


def generate_mels(
    engines: Engines,
    cfg: ModelConfig,
    clips: Sequence[np.ndarray],
    params: Sequence[SynthesisParams],
    device: torch.device | str = "cpu",
    window_frames: int = WINDOW_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
    progress: ProgressFn | None = None,
) -> MelBatch:
    """Mouth-ROI frames of each video (clips[i]: [T_i, 88, 88] float, normalised as `extract_mouth_roi`
    gives them) -> one log-mel [n_mels, round(T_i * mel_rate / fps)] per video.

    params[i]: video i's sampling parameters (None fields = the checkpoint's defaults, from `cfg`).
    Long videos are sampled in overlapping windows that share the video's speaker embedding (the
    length-weighted mean of its windows') and are cross-faded back together. Every window draws its noise
    from its own seed (`window_seed`), so a video's mel does not depend on the rest of the batch.
    progress(step, total) counts sampler steps over the whole batch.
    """
    device = torch.device(device)
    settings = [resolve_sampling(p, cfg) for p in params]
    ratio = cfg.audio.mel_rate / cfg.video.fps
    windows = plan_batch([len(c) for c in clips], ratio, window_frames, overlap_frames)
    timings: dict[str, float] = {}

    # Encoder + speaker on all windows at once (padded; masks keep items independent).
    video, vmask = _pad_video([clips[w.item][w.v0 : w.v1] for w in windows], device)
    t0 = time.perf_counter()
    feats = engines.encoder(video, ~vmask)
    timings["encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_window = engines.speaker(video, ~vmask)
    timings["speaker"] = time.perf_counter() - t0
    speakers = torch.zeros(len(clips), per_window.shape[1])
    for w, s in zip(windows, per_window, strict=True):
        speakers[w.item] += s.float().cpu() * (w.v1 - w.v0)
    speakers = torch.nn.functional.normalize(speakers, dim=1)

    # Sampling, one run per group of windows with equal settings.
    t0 = time.perf_counter()
    groups: dict[tuple[object, ...], list[int]] = {}
    for j, w in enumerate(windows):
        groups.setdefault(settings[w.item].group_key, []).append(j)
    total_steps = sum(settings[windows[idx[0]].item].steps for idx in groups.values())
    done_steps = 0
    mels: list[torch.Tensor | None] = [None] * len(windows)
    for idx in groups.values():
        group = [windows[j] for j in idx]
        shared = settings[group[0].item]

        def group_progress(step: int, total: int, base: int = done_steps) -> None:
            if progress is not None:
                progress(base + step, total_steps)

        cond = Conditioning(
            visual=feats[idx].to(device),
            visual_mask=vmask[idx],
            speaker=speakers[[w.item for w in group]].to(device),
            mask=_mel_mask(group, device),
        )
        generators = [
            torch.Generator().manual_seed(window_seed(settings[w.item].seed, w.index)) for w in group
        ]
        for j, mel in zip(idx, sample(engines, cfg, cond, shared, generators, group_progress), strict=True):
            mels[j] = mel
        done_steps += shared.steps
    timings["sampling"] = time.perf_counter() - t0

    full = []
    for i, clip in enumerate(clips):
        pieces = [(w.m0, mels[j]) for j, w in enumerate(windows) if w.item == i]
        full.append(crossfade(pieces, mel_frames(len(clip), ratio)))  # type: ignore[arg-type]
    return MelBatch(full, timings, settings)


def vocode(
    engines: Engines, cfg: ModelConfig, mels: Sequence[torch.Tensor], device: torch.device | str = "cpu"
) -> list[np.ndarray]:
    """Each log-mel [n_mels, T_i] -> waveform [T_i * hop] (float32 numpy in [-1, 1]), in one vocoder call
    (shorter mels padded with silence)."""
    hop = cfg.audio.hop_length
    silence = float(np.log(cfg.audio.log_clamp))
    t_max = max(m.shape[1] for m in mels)
    batch = torch.full((len(mels), mels[0].shape[0], t_max), silence)
    for b, m in enumerate(mels):
        batch[b, :, : m.shape[1]] = m
    with torch.inference_mode():
        wav = engines.vocoder(batch.to(device)).float().cpu().numpy()
    return [np.clip(wav[b, : m.shape[1] * hop], -1.0, 1.0) for b, m in enumerate(mels)]


def _pad_video(clips: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """clips: [T_i, H, W] -> video [B, 1, T, H, W], valid mask [B, T] (True = real frame)."""
    t_max = max(c.shape[0] for c in clips)
    h, w = clips[0].shape[1:]
    video = torch.zeros(len(clips), 1, t_max, h, w)
    mask = torch.zeros(len(clips), t_max, dtype=torch.bool)
    for b, c in enumerate(clips):
        video[b, 0, : c.shape[0]] = torch.from_numpy(np.ascontiguousarray(c))
        mask[b, : c.shape[0]] = True
    return video.to(device), mask.to(device)


def _mel_mask(windows: Sequence[Window], device: torch.device) -> torch.Tensor:
    """[B, max L] True on each window's L = m1 - m0 mel frames."""
    lengths = torch.tensor([w.m1 - w.m0 for w in windows])
    return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).to(device)
