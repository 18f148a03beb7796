"""`Synthesizer.synthesize_batch(requests) -> results`: the one entry used by the CLI, the worker and
the benchmarks.

Flow per batch: mouth ROI per item (a bad item fails alone) -> split long videos into overlapping
windows -> encoder + speaker extractor on all windows -> one speaker embedding per video (the
length-weighted mean of its windows) -> diffusion sampling, grouped by sampling parameters -> windows
cross-faded back into one mel per video -> vocoder -> waveform trimmed to the video's duration.

Every item draws its noise from its own seed, so its audio does not depend on the rest of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.checkpoints.store import Checkpoint, load_checkpoint
from diffv2s.config import ModelConfig
from diffv2s.diffusion import guidance, samplers
from diffv2s.diffusion.schedule import make_schedule
from diffv2s.engines import Engines, torch_engines
from diffv2s.errors import CheckpointError, DiffV2SError, InvalidParameter
from diffv2s.model import DiffV2S
from diffv2s.schemas import SynthesisParams, SynthesisRequest, SynthesisResult
from diffv2s.video.mouth_roi import MouthROI, extract_mouth_roi

ProgressFn = Callable[[int, int], None]
STAGES = ("preprocess", "encoder", "speaker", "sampling", "vocoder")


@dataclass
class _Window:
    """One window of one item: video frames [v0, v1) and mel frames [m0, m1)."""

    item: int
    index: int
    v0: int
    v1: int
    m0: int
    m1: int


def plan_windows(
    n_frames: int, n_mel: int, ratio: float, window: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """Split [0, n_frames) into windows of `window` video frames overlapping by `overlap`.

    Returns (v0, v1, m0, m1) per window; the mel range is the video range times `ratio` (mel frames
    per video frame), the last window ends exactly at `n_mel`.
    """
    if n_frames <= window:
        return [(0, n_frames, 0, n_mel)]
    step = window - overlap
    starts = list(range(0, n_frames - window + 1, step))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    out = []
    for s in starts:
        e = min(s + window, n_frames)
        m0 = int(round(s * ratio))
        m1 = n_mel if e == n_frames else min(n_mel, int(round(e * ratio)))
        out.append((s, e, m0, m1))
    return out


def crossfade(pieces: Sequence[tuple[int, torch.Tensor]], n_mel: int) -> torch.Tensor:
    """Overlap-add mel windows with linear cross-fades. pieces: (m0, mel [C, L]) -> [C, n_mel]."""
    channels = pieces[0][1].shape[0]
    acc = torch.zeros(channels, n_mel)
    weight = torch.zeros(n_mel)
    for m0, mel in pieces:
        length = mel.shape[1]
        ramp = torch.ones(length)
        # Triangular-ish weights: ramps at both ends so overlaps blend smoothly.
        edge = max(1, min(length // 4, 32))
        fade = torch.linspace(0.0, 1.0, edge + 2)[1:-1]
        if m0 > 0:
            ramp[:edge] = fade
        if m0 + length < n_mel:
            ramp[-edge:] = torch.minimum(ramp[-edge:], fade.flip(0))
        acc[:, m0 : m0 + length] += mel * ramp
        weight[m0 : m0 + length] += ramp
    return acc / weight.clamp(min=1e-6)


def _item_seed(seed: int, window: int) -> int:
    # Different windows of one video need different noise; keep it a pure function of (seed, window).
    return (seed * 1_000_003 + window * 7919) % (2**63 - 1)


class Synthesizer:
    """Holds a loaded model and its engines; `synthesize_batch` is thread-compatible but not
    re-entrant (the worker calls it from one model thread)."""

    def __init__(
        self,
        model: DiffV2S,
        engines: Engines,
        checkpoint: Checkpoint | None = None,
        device: str = "cpu",
        window_frames: int = 250,
        overlap_frames: int = 25,
    ) -> None:
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.engines = engines
        self.device = torch.device(device)
        self.schedule = make_schedule(self.cfg.diffusion.schedule, self.cfg.diffusion.timesteps)
        self.window_frames = window_frames
        self.overlap_frames = overlap_frames
        self.checkpoint_sha256 = checkpoint.sha256 if checkpoint else ""
        self.checkpoint_meta = checkpoint.meta if checkpoint else {}

    # ----------------------------------------------------------------------------------------- load
    @classmethod
    def load(
        cls,
        checkpoint: Path | None = None,
        engine: str = "torch",
        device: str = "cpu",
        engine_dir: Path | None = None,
    ) -> Synthesizer:
        """Load a checkpoint (default: the shipped one) and build the requested engine backend."""
        from diffv2s.nn.hifigan import make_vocoder

        ckpt = load_checkpoint(checkpoint)
        model = DiffV2S(ckpt.config)
        missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
        # speaker.encoder is the same module as encoder; files store its weights once.
        missing = [k for k in missing if not k.startswith("speaker.encoder.")]
        if missing or unexpected:
            raise CheckpointError(
                f"Checkpoint {ckpt.path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        dev = torch.device(device)
        vocoder = make_vocoder(ckpt.config.vocoder, device=dev)
        if engine == "torch":
            engines = torch_engines(model, vocoder, dev)
        else:
            from diffv2s.engines_onnx import build_engines

            engines = build_engines(engine, model, vocoder, dev, engine_dir, ckpt)
        return cls(model, engines, ckpt, device=device)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "preset": self.cfg.preset,
            "engine": self.engines.name,
            "engine_details": dict(self.engines.details),
            "sample_rate": self.cfg.audio.sample_rate,
            "trained": bool(self.checkpoint_meta.get("trained", False)),
        }

    def warmup(self, n_frames: int = 25) -> None:
        """Run every stage once on a synthetic ROI so the first real request does not pay for it."""
        cfg = self.cfg
        roi = MouthROI(
            frames=np.zeros((n_frames, cfg.video.roi_size, cfg.video.roi_size), np.float32),
            face_ratio=1.0,
            fps=cfg.video.fps,
            duration=n_frames / cfg.video.fps,
            n_frames=n_frames,
            transforms=np.zeros((n_frames, 2, 3)),
            landmarks=np.zeros((n_frames, 68, 2), np.float32),
        )
        self._run([roi], [SynthesisParams(steps=2)], None)

    # ------------------------------------------------------------------------------------ synthesis
    def prepare(self, request: SynthesisRequest) -> SynthesisRequest:
        """Validate a request and extract its mouth ROI (CPU work that needs no model).

        Thread-safe: each thread uses its own face detector, so callers (the worker's task threads) can
        prepare items in parallel while a batch runs. Raises the typed input errors.
        """
        t0 = time.perf_counter()
        request.params.validate()
        if request.output == "mp4" and request.mp4_path is None:
            raise InvalidParameter("output 'mp4' needs an mp4_path to write to")
        request.prepared = extract_mouth_roi(Path(request.video), self.cfg.video)
        request.preprocess_seconds = time.perf_counter() - t0
        return request

    def synthesize_batch(
        self, requests: Sequence[SynthesisRequest], progress: ProgressFn | None = None
    ) -> list[SynthesisResult]:
        """Synthesize speech for every request. A bad item gets `result.error`; the others go on."""
        results = [SynthesisResult(request_id=r.request_id) for r in requests]
        rois: list[MouthROI] = []
        params: list[SynthesisParams] = []
        live: list[int] = []
        for i, req in enumerate(requests):
            try:
                if req.prepared is None:
                    self.prepare(req)
            except DiffV2SError as exc:
                results[i].error = exc
                continue
            roi = req.prepared
            results[i].timings["preprocess"] = req.preprocess_seconds
            results[i].video_seconds = roi.duration
            rois.append(roi)
            params.append(req.params)
            live.append(i)
        if live:
            out = self._run(rois, params, progress)
            for j, i in enumerate(live):
                wav, timings = out[j]
                res = results[i]
                res.waveform = wav
                res.sample_rate = self.cfg.audio.sample_rate
                res.batch_size = len(live)
                res.timings.update(timings)
                req = requests[i]
                if req.output == "mp4" and req.mp4_path is not None:
                    from diffv2s.video.mux import mux_audio

                    t0 = time.perf_counter()
                    try:
                        res.mp4_path = mux_audio(Path(req.video), wav, res.sample_rate, Path(req.mp4_path))
                    except DiffV2SError as exc:
                        res.error = exc
                    res.timings["mux"] = time.perf_counter() - t0
        for res in results:
            res.timings["total"] = sum(v for k, v in res.timings.items() if k != "total")
        return results

    def _run(
        self, rois: Sequence[MouthROI], params: Sequence[SynthesisParams], progress: ProgressFn | None
    ) -> list[tuple[np.ndarray, dict[str, float]]]:
        mels, timings = self.generate_mels(rois, params, progress)
        t0 = time.perf_counter()
        wavs = self._vocode(mels)
        timings["vocoder"] = time.perf_counter() - t0
        outs = []
        for roi, wav in zip(rois, wavs, strict=True):
            n_samples = int(round(roi.duration * self.cfg.audio.sample_rate))
            wav = wav[:n_samples]
            if len(wav) < n_samples:
                wav = np.pad(wav, (0, n_samples - len(wav)))
            outs.append((wav.astype(np.float32), dict(timings)))
        return outs

    def generate_mels(
        self, rois: Sequence[MouthROI], params: Sequence[SynthesisParams], progress: ProgressFn | None = None
    ) -> tuple[list[torch.Tensor], dict[str, float]]:
        """Mouth ROIs -> one log-mel [n_mels, T_i] per item (CPU), plus seconds per stage.

        T_i = round(n_frames_i * mel_rate / fps). Long videos are sampled in overlapping windows that
        share the video's speaker embedding and are cross-faded back together.
        """
        cfg = self.cfg
        ratio = cfg.audio.mel_rate / cfg.video.fps
        windows: list[_Window] = []
        n_mels_total: list[int] = []
        for i, roi in enumerate(rois):
            n_mel = max(1, int(round(roi.n_frames * ratio)))
            n_mels_total.append(n_mel)
            for k, (v0, v1, m0, m1) in enumerate(
                plan_windows(roi.n_frames, n_mel, ratio, self.window_frames, self.overlap_frames)
            ):
                windows.append(_Window(i, k, v0, v1, m0, m1))

        timings = dict.fromkeys(STAGES[1:], 0.0)
        # Encoder + speaker on all windows at once (padded; masks keep items independent).
        video, vmask = self._pad_video([rois[w.item].frames[w.v0 : w.v1] for w in windows])
        t0 = time.perf_counter()
        feats = self.engines.encoder(video, ~vmask)
        timings["encoder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s_win = self.engines.speaker(video, ~vmask)
        timings["speaker"] = time.perf_counter() - t0
        # One speaker embedding per video: length-weighted mean of its windows, renormalised.
        speakers = torch.zeros(len(rois), s_win.shape[1])
        for w, s in zip(windows, s_win, strict=True):
            speakers[w.item] += s.float().cpu() * (w.v1 - w.v0)
        speakers = torch.nn.functional.normalize(speakers, dim=1)

        # Sampling, grouped by identical sampling parameters.
        t0 = time.perf_counter()
        mels: list[torch.Tensor | None] = [None] * len(windows)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for j, w in enumerate(windows):
            p = params[w.item]
            steps = p.steps or cfg.diffusion.default_steps
            sampler = p.sampler or cfg.diffusion.default_sampler
            cfg_scale = cfg.diffusion.default_cfg_scale if p.cfg_scale is None else p.cfg_scale
            noise_scale = cfg.diffusion.default_noise_scale if p.noise_scale is None else p.noise_scale
            groups.setdefault((sampler, steps, p.guidance, cfg_scale, noise_scale), []).append(j)
        done_steps = 0
        total_steps = sum(k[1] for k in groups)
        for (sampler, steps, g_scale, cfg_scale, noise_scale), idx in groups.items():

            def group_progress(step: int, total: int, base: int = done_steps) -> None:
                if progress is not None:
                    progress(base + step, total_steps)

            out = self._sample(
                [windows[j] for j in idx],
                feats[idx],
                vmask[idx],
                speakers[[windows[j].item for j in idx]],
                [params[windows[j].item].seed for j in idx],
                sampler,
                steps,
                g_scale,
                cfg_scale,
                noise_scale,
                group_progress,
            )
            for j, mel in zip(idx, out, strict=True):
                mels[j] = mel
            done_steps += steps
        timings["sampling"] = time.perf_counter() - t0

        full: list[torch.Tensor] = []
        for i in range(len(rois)):
            pieces = [(w.m0, mels[j]) for j, w in enumerate(windows) if w.item == i]
            full.append(crossfade(pieces, n_mels_total[i]))  # type: ignore[arg-type]
        return full, timings

    def _pad_video(self, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """clips: [T_i, H, W] -> video [B, 1, T, H, W], valid mask [B, T] (True = real frame)."""
        t_max = max(c.shape[0] for c in clips)
        h, w = clips[0].shape[1:]
        video = torch.zeros(len(clips), 1, t_max, h, w)
        mask = torch.zeros(len(clips), t_max, dtype=torch.bool)
        for b, c in enumerate(clips):
            video[b, 0, : c.shape[0]] = torch.from_numpy(np.ascontiguousarray(c))
            mask[b, : c.shape[0]] = True
        return video.to(self.device), mask.to(self.device)

    def _sample(
        self,
        windows: Sequence[_Window],
        feats: torch.Tensor,
        vmask: torch.Tensor,
        speakers: torch.Tensor,
        seeds: Sequence[int],
        sampler: str,
        steps: int,
        g_scale: float,
        cfg_scale: float,
        noise_scale: float,
        progress: ProgressFn,
    ) -> list[torch.Tensor]:
        """Sample the mel of each window: list of [n_mels, L_i] on CPU."""
        n_mels = self.cfg.audio.n_mels
        lengths = [w.m1 - w.m0 for w in windows]
        t_max = max(lengths)
        mask = torch.zeros(len(windows), t_max, dtype=torch.bool, device=self.device)
        for b, n in enumerate(lengths):
            mask[b, :n] = True
        gens = [
            torch.Generator().manual_seed(_item_seed(s, w.index)) for s, w in zip(seeds, windows, strict=True)
        ]
        noise = (samplers.initial_noise(lengths, n_mels, gens) * noise_scale).to(self.device)
        speakers = speakers.to(self.device)
        feats = feats.to(self.device)
        norm = self.cfg.diffusion  # samples live in the normalised space; denormalised at the end
        keep = torch.zeros(len(windows), dtype=torch.bool, device=self.device)
        drop = torch.ones(len(windows), dtype=torch.bool, device=self.device)
        engine = self.engines

        def cond(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return engine.denoiser(x_t, t, feats, vmask, speakers, mask, keep)

        def uncond(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return engine.denoiser(x_t, t, feats, vmask, speakers, mask, drop)

        denoise: samplers.DenoiseFn = cond
        if cfg_scale != 1.0:
            denoise = guidance.classifier_free(cond, uncond, cfg_scale)
        if g_scale > 0:
            if engine.speaker_from_mel is None:
                raise InvalidParameter(
                    f"speaker guidance needs a differentiable speaker extractor; engine {engine.name!r} has none. "
                    "Use guidance=0 or the torch engine."
                )
            speaker_from_mel = engine.speaker_from_mel

            def speaker_fn(x0: torch.Tensor) -> torch.Tensor:
                return speaker_from_mel(norm.denormalise(x0), mask)

            denoise = guidance.speaker_guided(denoise, speaker_fn, speakers, g_scale, self.schedule, mask)

        callback = progress
        if sampler == "ddpm":
            x0 = samplers.sample_ddpm(denoise, noise, self.schedule, steps, mask, gens, callback)
        elif sampler == "ddim":
            x0 = samplers.sample_ddim(denoise, noise, self.schedule, steps, mask, callback=callback)
        elif sampler == "dpmpp":
            x0 = samplers.sample_dpmpp_2m(denoise, noise, self.schedule, steps, mask, callback=callback)
        else:
            raise InvalidParameter(f"unknown sampler {sampler!r}")
        x0 = norm.denormalise(x0.detach().float()).cpu()
        return [x0[b, :, :n] for b, n in enumerate(lengths)]

    def _vocode(self, mels: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Vocode each item's mel [n_mels, T_i] -> waveform [T_i * hop] (float32 numpy)."""
        hop = self.cfg.audio.hop_length
        silence = float(np.log(self.cfg.audio.log_clamp))
        t_max = max(m.shape[1] for m in mels)
        batch = torch.full((len(mels), mels[0].shape[0], t_max), silence)
        for b, m in enumerate(mels):
            batch[b, :, : m.shape[1]] = m
        with torch.inference_mode():
            wav = self.engines.vocoder(batch.to(self.device)).float().cpu().numpy()
        return [np.clip(wav[b, : m.shape[1] * hop], -1.0, 1.0) for b, m in enumerate(mels)]
