"""The three training stages wired to the run folder: what each reads from earlier stages, how it starts
(fresh or from `--init-from`), its budget, and the features it leaves for the next stage.

    encoder (A) -> encoder features -> speaker (B) -> speaker embeddings -> denoiser (C)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffv2s.config import ModelConfig
from diffv2s.errors import InputError
from diffv2s.model import build_initial_model
from lab.training import data as corpus_data
from lab.training import warm_start
from lab.training.budgets import plan_budgets
from lab.training.cache import CacheSet
from lab.training.devices import Placement
from lab.training.loop import Budget, LoopSettings, StopFlag, load_state, run_stage
from lab.training.options import TrainOptions
from lab.training.run_folder import Run, model_with_stages


def _require(run: Run, stage: str) -> None:
    if not run.stage_done(stage):
        raise InputError(
            f"stage {stage!r} has not finished in {run.dir}; run it first (--stage {stage}) or --stage all."
        )


def with_mel_norm(run: Run, cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the diffusion's log-mel normalisation (one mean and std over all bands and frames of the
    train cache), measured once per run and kept in run.json so a resumed run and its export agree."""
    _require(run, "cache")
    if "mel_norm" not in run.info:
        train, _ = _sets(run, cfg)
        band_mean, band_std = (a.astype(np.float64) for a in train.mel_stats())
        mean = float(band_mean.mean())
        std = float(np.sqrt(np.mean(band_std**2 + (band_mean - mean) ** 2)))
        run.info["mel_norm"] = {"mean": round(mean, 4), "std": round(std, 4)}
        run.save()
    norm = run.info["mel_norm"]
    return dataclasses.replace(
        cfg, diffusion=dataclasses.replace(cfg.diffusion, mel_mean=norm["mean"], mel_std=norm["std"])
    )


def _sets(run: Run, cfg: ModelConfig) -> tuple[CacheSet, CacheSet | None]:
    train = CacheSet(run.dir / "cache" / "train", cfg.video)
    val_dir = run.dir / "cache" / "val"
    val = CacheSet(val_dir, cfg.video) if val_dir.exists() and any(val_dir.glob("shard-*")) else None
    return train, val


def train_encoder(
    run: Run,
    opts: TrainOptions,
    cfg: ModelConfig,
    stop: StopFlag,
    settings: LoopSettings,
    log: Callable[[str], None],
    place: Placement | None = None,
) -> None:
    """Stage A: the encoder and its mel (+ phone) head on the cache, then the frozen encoder's features
    of every cached clip. On the paper's path (`--avhubert`) the official encoder does not train: this
    step computes its features only, every process a share of the shards."""
    from lab.training.encoder_stage import EncoderStage
    from lab.training.features import compute_encoder_features

    _require(run, "cache")
    place = place or Placement()
    if run.info.get("avhubert"):
        _official_features(run, cfg, place, log)
        return
    budgets = plan_budgets(run, opts)
    train, val = _sets(run, cfg)
    if not run.stage_done("encoder"):
        mean, std = train.mel_stats()
        model = build_initial_model(cfg, opts.seed)
        init = _init_checkpoint(run, cfg)
        if init is not None:
            model.encoder.load_state_dict(warm_start.part(init, "encoder"))
        stage = EncoderStage(
            model,
            train,
            val,
            mean,
            std,
            batch_clips=opts.encoder_batch,
            phone_weight=opts.phone_weight,
            seed=opts.seed,
            frozen_steps=opts.head_warmup_steps if init is not None else 0,
        )
        if stage.phone_weight == 0 and opts.phone_weight > 0:
            log("[encoder] the training set has no phone timings: mel targets only")
        if init is not None and not run.state("encoder").exists():
            head = warm_start.head_from_prior(init, mean, std)
            if head is not None and head["weight"].shape == stage.head.weight.shape:
                stage.head.load_state_dict(head)
            log(
                f"[encoder] starts from {init.path.name if init.path else '?'} (sha256 {init.sha256[:12]}); "
                f"its first {stage.frozen_steps} steps train the heads only"
            )
        budget = Budget(budgets["encoder"], opts.encoder_steps, lr=opts.encoder_lr)
        run_stage(stage, run.state("encoder"), budget, stop, settings, log)
        if stop.requested:
            return
    if not run.info.get("features", {}).get("encoder"):
        t0 = time.perf_counter()
        model = model_with_stages(run, cfg, opts.seed, ("encoder",))
        for name, data in (("train", train), ("val", val)):
            if data is not None:
                compute_encoder_features(model.encoder, data, run.dir / "features" / name)
        run.info.setdefault("features", {})["encoder"] = True
        run.save()
        log(f"[features] encoder features cached in {time.perf_counter() - t0:.0f} s")


def _official_features(run: Run, cfg: ModelConfig, place: Placement, log: Callable[[str], None]) -> None:
    from lab.training.features import compute_encoder_features, features_complete
    from lab.training.official_encoder import load_official

    if run.info.get("features", {}).get("encoder"):
        return
    t0 = time.perf_counter()
    encoder = load_official(run.info["avhubert"])
    train, val = _sets(run, cfg)
    frames = 0
    for name, data in (("train", train), ("val", val)):
        if data is not None:
            out = run.dir / "features" / name
            compute_encoder_features(encoder, data, out, place.device, place.precision, place.dist)
            frames += int(data.n_frames.sum())
    place.dist.barrier()
    sets = [(d, run.dir / "features" / n) for n, d in (("train", train), ("val", val)) if d is not None]
    if place.dist.is_main and all(features_complete(d, out) for d, out in sets):
        seconds = time.perf_counter() - t0
        clips = sum(len(d) for d, _ in sets)
        run.info.setdefault("features", {})["encoder"] = True
        run.info["features"]["official_seconds"] = round(seconds, 1)
        run.save()
        log(
            f"[features] official AV-HuBERT features of {clips} clips ({frames} frames) in {seconds:.0f} s "
            f"({clips / max(seconds, 1e-9):.2f} clips/s on {place.dist.world} x {place.device.type})"
        )


def train_speaker(
    run: Run,
    opts: TrainOptions,
    cfg: ModelConfig,
    stop: StopFlag,
    settings: LoopSettings,
    log: Callable[[str], None],
    place: Placement | None = None,
) -> None:
    """Stage B: the speaker prompts and projection on the encoder features, then every clip's speaker
    embedding."""
    from lab.training.features import FeatureSet, compute_speaker_embeddings
    from lab.training.speaker_stage import SpeakerStage

    _require(run, "encoder")
    budgets = plan_budgets(run, opts)
    train, val = _sets(run, cfg)
    feats = run.dir / "features"
    if not run.stage_done("speaker"):
        model = model_with_stages(run, cfg, opts.seed, ("encoder",))
        train_f = FeatureSet(train, feats / "train", with_speaker=False)
        val_f = FeatureSet(val, feats / "val", with_speaker=False) if val is not None else None
        place = place or Placement()
        stage = SpeakerStage(
            model, train_f, val_f, batch_size=opts.speaker_batch, seed=opts.seed, device=place.device
        )
        if not run.state("speaker").exists():
            stage.initialise()
        budget = Budget(budgets["speaker"], opts.speaker_steps, lr=opts.speaker_lr)
        # The least-squares `initialise` is often as good as the InfoNCE steps on validation: keep whichever
        # state aligns s_v with GE2E best, where validation is held out of training (never on a test split).
        held_out = run.info["splits"].get("val") == corpus_data.HOLDOUT
        select = ("val_cos_v_g", "max") if held_out else None
        run_stage(stage, run.state("speaker"), budget, stop, settings, log, select=select)
        if stop.requested:
            return
    if not run.info.get("features", {}).get("speaker"):
        # On the CPU: the embeddings run the Transformer once per clip on cached tokens.
        model = model_with_stages(run, cfg, opts.seed, ("encoder", "speaker"))
        for name, data in (("train", train), ("val", val)):
            if data is not None:
                compute_speaker_embeddings(model, data, feats / name)
        run.info.setdefault("features", {})["speaker"] = True
        run.save()
        log("[features] speaker embeddings cached")


def train_denoiser(
    run: Run,
    opts: TrainOptions,
    cfg: ModelConfig,
    stop: StopFlag,
    settings: LoopSettings,
    log: Callable[[str], None],
    place: Placement | None = None,
) -> None:
    """Stage C: the denoiser on the cached features and speaker embeddings (its prior from stage A's head,
    or the `--init-from` checkpoint's denoiser)."""
    from lab.training.denoiser_stage import DenoiserStage
    from lab.training.features import FeatureSet

    _require(run, "speaker")
    if run.stage_done("denoiser"):
        return
    place = place or Placement()
    budgets = plan_budgets(run, opts)
    train, val = _sets(run, cfg)
    feats = run.dir / "features"
    model = build_initial_model(cfg, opts.seed)
    train_f = FeatureSet(train, feats / "train")
    val_f = FeatureSet(val, feats / "val") if val is not None else None
    mean, std = train.mel_stats()
    prior_init = None
    fresh = not run.state("denoiser").exists()
    if model.denoiser.prior is not None and fresh:
        prior_init = prior_from_encoder(run, cfg, mean, std, log)
    init = _init_checkpoint(run, cfg) if fresh else None
    if init is not None:
        model.denoiser.load_state_dict(warm_start.part(init, "denoiser"))
        log(f"[denoiser] starts from {init.path.name if init.path else '?'} (sha256 {init.sha256[:12]})")
    stage = DenoiserStage(
        model,
        train_f,
        val_f,
        # A warm start keeps the checkpoint's output offsets (a fresh one starts them at the mean mel).
        mel_mean=mean if init is None else None,
        prior_init=prior_init,
        batch_size=opts.denoiser_batch,
        seed=opts.seed,
        device=place.device,
        precision=place.precision,
        dist=place.dist,
        loader_workers=place.loader_workers,
    )
    budget = Budget(budgets["denoiser"], opts.denoiser_steps, lr=opts.denoiser_lr)
    run_stage(stage, run.state("denoiser"), budget, stop, settings, log, dist=place.dist, device=place.device)
    stage.feed.close()


def _init_checkpoint(run: Run, cfg: ModelConfig) -> Any:
    """The checkpoint the run warm-starts from (`--init-from`), or None for a fresh run."""
    record = run.info.get("init_from")
    return None if record is None else warm_start.recorded_init(record, cfg)


def prior_from_encoder(
    run: Run, cfg: ModelConfig, band_mean: np.ndarray, band_std: np.ndarray, log: Callable[[str], None]
) -> dict[str, torch.Tensor] | None:
    """The encoder stage's mel head as the denoiser prior's starting weights, when its shape fits."""
    from lab.training.denoiser_stage import prior_from_encoder_head

    saved = load_state(run.state("encoder"))
    head = None if saved is None else saved["stage"].get("head")
    want = cfg.denoiser.prior_subframes * cfg.audio.n_mels
    if head is None or head["weight"].shape[0] != want:
        log("[denoiser] visual prior starts untrained (no encoder head of matching shape)")
        return None
    d = cfg.diffusion
    return prior_from_encoder_head(head, band_mean, band_std, d.mel_mean, d.mel_std)
