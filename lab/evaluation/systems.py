"""The systems an evaluation compares, and how each one turns an utterance into a waveform.

- `ground_truth`: the corpus audio itself (the ceiling of every metric).
- `vocoder_ceiling`: ground-truth log-mel -> our HiFi-GAN (the best the model's mel could sound).
- `model`: DiffV2S as served, the speaker embedding s_v taken from the video.
- speaker ablations (the paper's Table 4): `gt_audio_speaker` puts the speaker extractor's *audio* embedding
  of the ground-truth speech, `embed_audio(mel_to_audio_features(gt_mel))`, in place of s_v;
  `no_speaker` gives the denoiser the learned null speaker vector that condition dropout trained (the visual
  features stay), or a zero vector for `speaker="zero"`.
- sampler ablations: the model with another sampler / step count.
- `visual_prior` (`denoiser="prior"`): the denoiser's visual prior mu alone — stage A's mel estimate from the
  encoder features, the mel the Transformer corrects — put through one DDIM step in place of the network's
  x0 prediction, so it is vocoded exactly as the model's mel is. What the diffusion adds is the gap to `model`.

Every synthesized system runs the served sampling path, `diffv2s.sampling.generate_mels` + `vocode`, on
mouth ROIs extracted once per utterance. An ablation hands that path engines of its own (the served ones
with the speaker or denoiser network wrapped), so the pipeline code is not duplicated, the sampling loop is
exactly the served one, and the synthesizer's engines are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffv2s.audio import mel_spectrogram
from diffv2s.engines.spec import Engines
from diffv2s.nn.denoiser import Denoiser
from diffv2s.nn.speaker import mel_to_audio_features
from diffv2s.pipeline import Synthesizer
from diffv2s.sampling import generate_mels, vocode
from diffv2s.schemas import MAX_CFG_SCALE, MAX_NOISE_SCALE, ResolvedSampling, SynthesisParams
from diffv2s.video.mouth_roi import MouthROI
from diffv2s.windows import plan_batch

SPEAKER_MODES = ("visual", "audio", "null", "zero")
DENOISER_MODES = ("model", "prior")


@dataclass(frozen=True)
class SystemSpec:
    """A synthesized system: how the speaker embedding is chosen and how the mel is sampled."""

    name: str
    description: str
    speaker: str = "visual"  # one of SPEAKER_MODES
    sampler: str = "dpmpp"
    steps: int = 10
    guidance: float = 0.0
    cfg_scale: float = 1.0
    noise_scale: float = 1.0
    denoiser: str = "model"  # one of DENOISER_MODES

    @classmethod
    def sampled_as(cls, name: str, description: str, sampling: ResolvedSampling, **modes: str) -> SystemSpec:
        """A system sampled with resolved settings (`diffv2s.schemas.resolve_sampling`); `modes`: speaker,
        denoiser."""
        return cls(
            name,
            description,
            sampler=sampling.sampler,
            steps=sampling.steps,
            guidance=sampling.guidance,
            cfg_scale=sampling.cfg_scale,
            noise_scale=sampling.noise_scale,
            **modes,
        )

    def params(self, seed: int) -> SynthesisParams:
        """The sampling parameters of one utterance of this system."""
        return SynthesisParams(
            sampler=self.sampler,
            steps=self.steps,
            seed=seed,
            guidance=self.guidance,
            cfg_scale=self.cfg_scale,
            noise_scale=self.noise_scale,
        ).validate()

    @property
    def sampling_key(self) -> tuple[str, str, int, float, float, float, str]:
        """Two systems with equal keys produce identical audio (same seeds)."""
        return (
            self.speaker,
            self.sampler,
            self.steps,
            self.guidance,
            self.cfg_scale,
            self.noise_scale,
            self.denoiser,
        )


def visual_prior_spec() -> SystemSpec:
    """The `visual_prior` ablation: mu alone, one deterministic step, no guidance (see the module doc)."""
    return SystemSpec(
        "visual_prior",
        "the denoiser's visual prior mu alone (stage A's mel estimate from the encoder), no diffusion",
        speaker="visual",
        sampler="ddim",
        steps=1,
        cfg_scale=1.0,
        noise_scale=0.0,
        denoiser="prior",
    )


# Optional "-<name><value>" parts of a sweep entry after sampler-steps, and each one's allowed range.
SWEEP_SCALES = {"cfg": MAX_CFG_SCALE, "noise": MAX_NOISE_SCALE}


@dataclass(frozen=True)
class SweepEntry:
    """One `--sweep` entry: a sampler and steps, and optionally its own CFG / starting-noise scale (None =
    the model system's)."""

    sampler: str
    steps: int
    cfg_scale: float | None = None
    noise_scale: float | None = None

    @property
    def name(self) -> str:
        name = f"{self.sampler}-{self.steps}"
        if self.cfg_scale is not None:
            name += f"-cfg{self.cfg_scale:g}"
        if self.noise_scale is not None:
            name += f"-noise{self.noise_scale:g}"
        return name

    @property
    def description(self) -> str:
        what = f"vision-guided, sampler {self.sampler} with {self.steps} steps"
        if self.cfg_scale is not None:
            what += f", classifier-free guidance {self.cfg_scale:g}"
        if self.noise_scale is not None:
            what += f", starting noise scaled by {self.noise_scale:g}"
        return what


def parse_sampler(spec: str) -> SweepEntry:
    """ "ddim-25" -> SweepEntry("ddim", 25); "ddim-10-cfg2" -> classifier-free guidance 2;
    "ddim-4-cfg1.5-noise1" -> also the starting-noise scale 1. Raises ValueError with the accepted form."""
    name, *parts = spec.strip().split("-")
    scales: dict[str, float] = {}
    ok = bool(name) and bool(parts) and parts[0].isdigit()
    for part in parts[1:] if ok else ():
        key = next((k for k in SWEEP_SCALES if part.startswith(k)), None)
        try:
            value = float(part[len(key) :]) if key is not None else -1.0
        except ValueError:
            value = -1.0
        if key is None or key in scales or not 0.0 <= value <= SWEEP_SCALES[key]:
            ok = False
            break
        scales[key] = value
    if not ok:
        raise ValueError(
            f"sweep entry {spec!r} must look like 'ddim-25' (sampler-steps), optionally followed by "
            f"'-cfgW' (classifier-free guidance, 0..20) and/or '-noiseS' (starting-noise scale, "
            f"0..{MAX_NOISE_SCALE:g}), e.g. 'ddim-4-cfg1.5-noise1'"
        )
    return SweepEntry(name, int(parts[0]), scales.get("cfg"), scales.get("noise"))


def ground_truth_mel(synth: Synthesizer, wav: np.ndarray) -> torch.Tensor:
    """wav: [N] at the model's sample rate -> log-mel [n_mels, N // hop] as the vocoder expects."""
    return mel_spectrogram(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), synth.cfg.audio)[0]


@torch.inference_mode()
def audio_speaker_embedding(synth: Synthesizer, mel: torch.Tensor) -> torch.Tensor:
    """The speaker extractor's audio-path embedding s_a of a log-mel [n_mels, T] -> [256] unit vector."""
    cfg = synth.cfg
    feats = mel_to_audio_features(
        mel[None].float(),
        cfg.audio.mel_rate,
        fmin=cfg.audio.fmin,
        fmax=cfg.audio.fmax,
        video_fps=cfg.video.fps,
    )
    speaker = synth.model.speaker
    param = next(speaker.parameters())
    return speaker.embed_audio(feats.to(device=param.device, dtype=param.dtype))[0].float().cpu()


def _window_counts(synth: Synthesizer, rois: Sequence[MouthROI]) -> list[int]:
    """How many windows the sampling path splits each video into (its speaker engine sees them in order)."""
    ratio = synth.cfg.audio.mel_rate / synth.cfg.video.fps
    windows = plan_batch([roi.n_frames for roi in rois], ratio, synth.window_frames, synth.overlap_frames)
    return [sum(1 for w in windows if w.item == i) for i in range(len(rois))]


def _speaker_override(engines: Engines, per_window: torch.Tensor) -> Engines:
    """Engines whose speaker extractor returns the given rows ([n_windows, 256]) whatever the video."""

    def speaker(video: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        if video.shape[0] != per_window.shape[0]:
            raise RuntimeError(
                f"speaker override: the pipeline asked for {video.shape[0]} windows, {per_window.shape[0]} "
                "were prepared (did the pipeline's windowing change?)"
            )
        return per_window.to(video.device)

    return dataclasses.replace(engines, speaker=speaker)


def _null_speaker_override(engines: Engines, null: torch.Tensor) -> Engines:
    """Engines whose denoiser always gets `null` ([256]) as the speaker embedding."""
    base = engines.denoiser

    def denoiser(x_t, t, visual, visual_mask, speaker, mask, drop_cond):  # type: ignore[no-untyped-def]
        rows = null.to(device=speaker.device, dtype=speaker.dtype).expand_as(speaker)
        return base(x_t, t, visual, visual_mask, rows, mask, drop_cond)

    return dataclasses.replace(engines, denoiser=denoiser)


def _prior_override(engines: Engines, module: Denoiser) -> Engines:
    """Engines whose denoiser returns its visual prior mu [B, n_mels, T] instead of its x0 prediction."""

    def denoiser(x_t, t, visual, visual_mask, speaker, mask, drop_cond):  # type: ignore[no-untyped-def]
        if drop_cond is not None:
            null = module.null_visual.to(device=visual.device, dtype=visual.dtype)
            visual = torch.where(drop_cond.to(torch.bool)[:, None, None], null, visual)
        with torch.no_grad():
            mu = module.prior_mel(visual, visual_mask, x_t.shape[2])  # [B, T, n_mels]
        return (mu * mask[..., None].to(mu.dtype)).transpose(1, 2).to(x_t.dtype)

    return dataclasses.replace(engines, denoiser=denoiser)


def system_engines(
    synth: Synthesizer,
    spec: SystemSpec,
    rois: Sequence[MouthROI],
    gt_mels: Sequence[torch.Tensor] | None = None,
    engines: Engines | None = None,
) -> Engines:
    """The engines a system runs on `rois`: `engines` (default: the synthesizer's) with the speaker or
    denoiser network replaced as the system's modes say. gt_mels: needed by `speaker="audio"` only."""
    if spec.speaker not in SPEAKER_MODES:
        raise ValueError(f"speaker mode must be one of {SPEAKER_MODES}; got {spec.speaker!r}")
    if spec.denoiser not in DENOISER_MODES:
        raise ValueError(f"denoiser mode must be one of {DENOISER_MODES}; got {spec.denoiser!r}")
    engines = engines if engines is not None else synth.engines
    if spec.speaker == "audio":
        if gt_mels is None:
            raise ValueError("speaker='audio' needs the ground-truth mels")
        embeddings = [audio_speaker_embedding(synth, m) for m in gt_mels]
        rows = [e for e, n in zip(embeddings, _window_counts(synth, rois), strict=True) for _ in range(n)]
        engines = _speaker_override(engines, torch.stack(rows))
    elif spec.speaker == "zero":
        n = sum(_window_counts(synth, rois))
        engines = _speaker_override(engines, torch.zeros(n, synth.cfg.speaker.embed_dim))
    elif spec.speaker == "null":
        engines = _null_speaker_override(engines, synth.model.denoiser.null_speaker.detach().float().cpu())
    if spec.denoiser == "prior":
        if synth.model.denoiser.prior is None:
            raise ValueError("this checkpoint's denoiser has no visual prior (prior_subframes = 0)")
        engines = _prior_override(engines, synth.model.denoiser)
    return engines


def system_mels(
    synth: Synthesizer,
    spec: SystemSpec,
    rois: Sequence[MouthROI],
    seeds: Sequence[int],
    gt_mels: Sequence[torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    engines: Engines | None = None,
) -> list[torch.Tensor]:
    """The log-mel [n_mels, T_i] of one system for a batch of mouth ROIs: the served sampling path on the
    system's engines (`system_engines`), with the synthesizer's windows and device."""
    run_on = system_engines(synth, spec, rois, gt_mels, engines)
    return generate_mels(
        run_on,
        synth.cfg,
        [roi.frames for roi in rois],
        [spec.params(s) for s in seeds],
        synth.device,
        synth.window_frames,
        synth.overlap_frames,
        progress,
    ).mels


def synthesize_system(
    synth: Synthesizer,
    spec: SystemSpec,
    rois: Sequence[MouthROI],
    seeds: Sequence[int],
    gt_mels: Sequence[torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    engines: Engines | None = None,
) -> list[np.ndarray]:
    """Waveforms [round(duration * sr)] float32 of one system for a batch of mouth ROIs (`system_mels`,
    then the vocoder of `engines`, default the synthesizer's)."""
    mels = system_mels(synth, spec, rois, seeds, gt_mels, progress, engines)
    wavs = vocode(engines if engines is not None else synth.engines, synth.cfg, mels, synth.device)
    return [_fit(w, roi.duration, synth.cfg.audio.sample_rate) for w, roi in zip(wavs, rois, strict=True)]


def vocode_ground_truth(synth: Synthesizer, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The vocoder ceiling: ground-truth waveforms -> log-mel -> HiFi-GAN -> waveforms of the same length."""
    mels = [ground_truth_mel(synth, w) for w in wavs]
    out = vocode(synth.engines, synth.cfg, mels, synth.device)
    return [_fit_samples(o, len(w)) for o, w in zip(out, wavs, strict=True)]


def _fit(wav: np.ndarray, duration: float, sample_rate: int) -> np.ndarray:
    return _fit_samples(wav, int(round(duration * sample_rate)))


def _fit_samples(wav: np.ndarray, n: int) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)[:n]
    return np.pad(wav, (0, n - len(wav))) if len(wav) < n else wav
