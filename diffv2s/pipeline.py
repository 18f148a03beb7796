"""`Synthesizer.synthesize_batch(requests) -> results`: the one entry used by the CLI, the worker and
the benchmarks.

Flow per batch: mouth ROI per item (a bad item fails alone) -> `diffv2s.sampling.generate_mels` (windows,
encoder + speaker, sampling with each item's resolved settings, cross-fade) -> `vocode` -> waveform
trimmed to the video's duration -> optional mp4 mux.

Every item draws its noise from its own seed, so its audio does not depend on the rest of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.checkpoints.store import Checkpoint, load_checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.config import ModelConfig
from diffv2s.engines.build import build_engines
from diffv2s.engines.spec import Engines, resolve_engine
from diffv2s.errors import DiffV2SError, InvalidParameter
from diffv2s.model import DiffV2S
from diffv2s.sampling import MelBatch, ProgressFn, generate_mels, vocode
from diffv2s.schemas import SynthesisParams, SynthesisRequest, SynthesisResult
from diffv2s.video.decode import DEFAULT_LIMITS, VideoLimits
from diffv2s.video.mouth_roi import MouthROI, extract_mouth_roi
from diffv2s.windows import OVERLAP_FRAMES, WINDOW_FRAMES

STAGES = ("preprocess", "encoder", "speaker", "sampling", "vocoder")
# Landmarks on every frame (the AV-HuBERT recipe) unless a caller asks for fewer (`extract_mouth_roi`).
LANDMARK_STRIDE = 1


class Synthesizer:
    """Holds a loaded model and its engines; `synthesize_batch` is thread-compatible but not
    re-entrant (the worker calls it from one model thread)."""

    def __init__(
        self,
        model: DiffV2S,
        engines: Engines,
        checkpoint: Checkpoint | None = None,
        device: str = "cpu",
        window_frames: int = WINDOW_FRAMES,
        overlap_frames: int = OVERLAP_FRAMES,
        landmark_stride: int = LANDMARK_STRIDE,
        overlap_decode: bool = True,
    ) -> None:
        """landmark_stride, overlap_decode: how `prepare` finds the mouth (`extract_mouth_roi`)."""
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.engines = engines
        self.device = torch.device(device)
        self.window_frames = window_frames
        self.overlap_frames = overlap_frames
        self.landmark_stride = landmark_stride
        self.overlap_decode = overlap_decode
        self.checkpoint_sha256 = checkpoint.sha256 if checkpoint else ""
        self.checkpoint_meta = checkpoint.meta if checkpoint else {}

    # ----------------------------------------------------------------------------------------- load
    @classmethod
    def load(
        cls,
        checkpoint: Path | None = None,
        engine: str | None = None,
        device: str = "cpu",
        engine_dir: Path | None = None,
        vocoder_engine: str | None = None,
        landmark_stride: int = LANDMARK_STRIDE,
        overlap_decode: bool = True,
    ) -> Synthesizer:
        """Load a checkpoint (default: the shipped one) and build the requested engine backend.

        engine: one of `diffv2s.engines.spec.ENGINE_NAMES`; None = "onnxruntime-cpu" on a CPU with onnxruntime
        installed (the networks traced in memory at load unless `engine_dir` holds exported files), else
        "torch" (`resolve_engine`). engine="torch" runs the PyTorch modules.
        vocoder_engine: one of `diffv2s.engines.spec.VOCODER_ENGINES`; None = ONNX Runtime for the torch
        engine on a CPU, else the engine's own vocoder (`resolve_vocoder_engine`)."""
        from diffv2s.nn.hifigan import make_vocoder

        ckpt = load_checkpoint(checkpoint)
        model = load_model(ckpt)
        dev = torch.device(device)
        engine = resolve_engine(engine, dev.type)
        vocoder = make_vocoder(ckpt.config.vocoder, ckpt.config.audio, device=dev)
        engines = build_engines(engine, model, vocoder, dev, engine_dir, ckpt, vocoder_engine=vocoder_engine)
        return cls(
            model,
            engines,
            ckpt,
            device=device,
            landmark_stride=landmark_stride,
            overlap_decode=overlap_decode,
        )

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
    def prepare(self, request: SynthesisRequest, limits: VideoLimits = DEFAULT_LIMITS) -> SynthesisRequest:
        """Validate a request and extract its mouth ROI (CPU work that needs no model). `limits`: the video
        bounds of the deployment (checked on the header, applied while decoding).

        Thread-safe: each thread uses its own face detector, so callers (the worker's task threads) can
        prepare items in parallel while a batch runs. Raises the typed input errors.
        """
        t0 = time.perf_counter()
        request.params.validate()
        if request.output == "mp4" and request.mp4_path is None:
            raise InvalidParameter("output 'mp4' needs an mp4_path to write to")
        request.prepared = extract_mouth_roi(
            Path(request.video),
            self.cfg.video,
            landmark_stride=self.landmark_stride,
            overlap_decode=self.overlap_decode,
            limits=limits,
        )
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
                wav, timings, sampling = out[j]
                res = results[i]
                res.sampling = sampling
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
    ) -> list[tuple[np.ndarray, dict[str, float], dict[str, Any]]]:
        batch = self.generate_mels(rois, params, progress)
        t0 = time.perf_counter()
        wavs = vocode(self.engines, self.cfg, batch.mels, self.device)
        timings = {**batch.timings, "vocoder": time.perf_counter() - t0}
        outs = []
        for roi, wav, settings in zip(rois, wavs, batch.sampling, strict=True):
            n_samples = int(round(roi.duration * self.cfg.audio.sample_rate))
            wav = wav[:n_samples]
            if len(wav) < n_samples:
                wav = np.pad(wav, (0, n_samples - len(wav)))
            outs.append((wav.astype(np.float32), dict(timings), settings.as_dict()))
        return outs

    def generate_mels(
        self, rois: Sequence[MouthROI], params: Sequence[SynthesisParams], progress: ProgressFn | None = None
    ) -> MelBatch:
        """Mouth ROIs -> one log-mel [n_mels, T_i] per item (CPU), seconds per stage, resolved settings:
        `diffv2s.sampling.generate_mels` on this synthesizer's engines and windows."""
        return generate_mels(
            self.engines,
            self.cfg,
            [roi.frames for roi in rois],
            params,
            self.device,
            self.window_frames,
            self.overlap_frames,
            progress,
        )
