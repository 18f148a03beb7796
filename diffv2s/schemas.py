"""Plain request/result types of the synthesizer. No torch import: the gateway uses these.

The sampling parameters are declared here once: `SynthesisParams` (what a request asks for; None = the
checkpoint's default), their bounds (the constants below), `SynthesisParams.validate()` (the one place they
are checked, so the gateway, the CLI and the worker reject the same things with the same message) and
`resolve_sampling` (a request's parameters with the checkpoint's defaults filled in: what really runs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from diffv2s.config import DiffusionConfig, ModelConfig
from diffv2s.errors import DiffV2SError, InvalidParameter

SAMPLERS = ("ddpm", "ddim", "dpmpp")
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0
MAX_CFG_SCALE = 20.0
MAX_NOISE_SCALE = 2.0


@dataclass(frozen=True)
class SynthesisParams:
    """Sampling options of one request.

    sampler: "ddpm" | "ddim" | "dpmpp" (DPM-Solver++ 2M, few-step); None = the checkpoint's default.
    steps: number of denoiser calls (1..1000); None = the checkpoint's default.
    seed: the item's own noise seed (same seed => same audio, alone or batched).
    guidance: speaker-guidance scale (the paper's gradient of 1 - cos(s_v, s(x0))); 0 = off.
    cfg_scale: classifier-free guidance scale (1 = off); None = the checkpoint's default.
    noise_scale: scale of the sampler's starting noise (1 = the diffusion's N(0, I); below 1 samples
        nearer the most likely mel, as Glow-TTS's noise scale and Grad-TTS's temperature do); None = the
        checkpoint's default.
    """

    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    guidance: float = 0.0
    cfg_scale: float | None = None
    noise_scale: float | None = None

    def validate(self) -> SynthesisParams:
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise InvalidParameter(f"sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.steps is not None and not (1 <= self.steps <= MAX_STEPS):
            raise InvalidParameter(f"steps must be between 1 and {MAX_STEPS}; got {self.steps}")
        if not (0 <= self.seed <= MAX_SEED):
            raise InvalidParameter(f"seed must be between 0 and 2**63-1; got {self.seed}")
        if not (0.0 <= self.guidance <= MAX_GUIDANCE):
            raise InvalidParameter(f"guidance must be between 0 and {MAX_GUIDANCE:g}; got {self.guidance}")
        if self.cfg_scale is not None and not (0.0 <= self.cfg_scale <= MAX_CFG_SCALE):
            raise InvalidParameter(f"cfg_scale must be between 0 and {MAX_CFG_SCALE:g}; got {self.cfg_scale}")
        if self.noise_scale is not None and not (0.0 <= self.noise_scale <= MAX_NOISE_SCALE):
            raise InvalidParameter(
                f"noise_scale must be between 0 and {MAX_NOISE_SCALE:g}; got {self.noise_scale}"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (None where the checkpoint's default applies)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthesisParams:
        """The inverse of `as_dict`; absent keys take the field's default, unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameter(f"unknown sampling parameters {unknown}; known: {sorted(names)}")
        return cls(**data)


@dataclass(frozen=True)
class ResolvedSampling:
    """The sampling settings one item really runs with: a request's parameters with every default filled
    in from the checkpoint (see `resolve_sampling`). Same fields as `SynthesisParams`, none of them None."""

    sampler: str
    steps: int
    seed: int
    guidance: float
    cfg_scale: float
    noise_scale: float

    @property
    def group_key(self) -> tuple[str, int, float, float, float]:
        """Items with equal keys can share one sampler run (the seed is per item)."""
        return (self.sampler, self.steps, self.guidance, self.cfg_scale, self.noise_scale)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_sampling(params: SynthesisParams, defaults: ModelConfig | DiffusionConfig) -> ResolvedSampling:
    """`params` with each unset (None) field replaced by the checkpoint's default: `defaults` is the
    checkpoint's config (`Checkpoint.config`, `Synthesizer.cfg`) or its `diffusion` part. Validates."""
    params.validate()
    d = defaults.diffusion if isinstance(defaults, ModelConfig) else defaults
    return ResolvedSampling(
        sampler=params.sampler if params.sampler is not None else d.default_sampler,
        steps=params.steps if params.steps is not None else d.default_steps,
        seed=params.seed,
        guidance=params.guidance,
        cfg_scale=params.cfg_scale if params.cfg_scale is not None else d.default_cfg_scale,
        noise_scale=params.noise_scale if params.noise_scale is not None else d.default_noise_scale,
    )


@dataclass
class SynthesisRequest:
    """One item of a batch.

    video: path of the input video.
    output: "wav" only, or also "mp4" (the original video with the new audio track) written to mp4_path.
    """

    video: Path
    params: SynthesisParams = field(default_factory=SynthesisParams)
    output: Literal["wav", "mp4"] = "wav"
    mp4_path: Path | None = None
    request_id: str = ""
    # Filled by `Synthesizer.prepare` (mouth ROI + its preprocessing seconds) so callers can run the
    # per-item preprocessing in their own threads; `synthesize_batch` then skips it.
    prepared: Any = None
    preprocess_seconds: float = 0.0


@dataclass
class SynthesisResult:
    """The outcome of one item: a waveform, or an error that failed this item only.

    waveform: float32 numpy array [n_samples] in [-1, 1] at `sample_rate`.
    timings: seconds per stage: preprocess, encoder, speaker, sampling, vocoder, mux, total.
    sampling: the settings the item really ran with (`ResolvedSampling.as_dict()`: sampler, steps, seed,
        guidance, cfg_scale, noise_scale; the checkpoint's defaults filled in); empty if it failed first.
    """

    request_id: str
    waveform: Any = None
    sample_rate: int = 0
    video_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    mp4_path: Path | None = None
    error: DiffV2SError | None = None
    batch_size: int = 1
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.waveform is None else len(self.waveform) / self.sample_rate
