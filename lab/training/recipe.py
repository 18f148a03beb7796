"""The training recipe, stage by stage, under one wall-clock budget; everything lives in the run folder
(`lab.training.run_folder`).

The cache step takes what it takes; the remaining minutes are split between the stages by
`stage_shares(encoder_share)` (the rest covers feature extraction and export). A stage's budget is fixed
when it is first planned, so `--resume` continues the same schedules. Every stage saves its state every
few minutes and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.config import ModelConfig, preset
from diffv2s.errors import InputError
from diffv2s.model import build_initial_model
from lab.training import data as corpus_data
from lab.training import warm_start
from lab.training.cache import CacheSet, build_cache
from lab.training.export import export_run
from lab.training.loop import (
    Budget,
    LoopSettings,
    StageRecord,
    StopFlag,
    load_state,
    run_stage,
)
from lab.training.options import TrainOptions
from lab.training.run_folder import Run, RunLog, model_with_stages, run_exists

STAGES = ("cache", "encoder", "speaker", "denoiser", "export")
# Shares of the minutes left after the cache step: the speaker stage's is fixed, the encoder's is
# `--encoder-share` and the denoiser gets what the stages' total leaves.
SPEAKER_SHARE = 0.05
STAGES_TOTAL_SHARE = 0.95
ENCODER_SHARE_RANGE = (0.1, 0.8)
MIN_STAGE_SECONDS = 30.0


@dataclass
class TrainResult:
    status: str  # "done" | "stopped"
    run_dir: Path
    checkpoint: Path | None = None
    records: dict[str, StageRecord] = dataclasses.field(default_factory=dict)


def stage_shares(encoder_share: float) -> dict[str, float]:
    """Each training stage's share of the minutes left after the cache step."""
    low, high = ENCODER_SHARE_RANGE
    if not low <= encoder_share <= high:
        raise InputError(f"--encoder-share must be between {low:g} and {high:g}; got {encoder_share:g}")
    return {
        "encoder": encoder_share,
        "speaker": SPEAKER_SHARE,
        "denoiser": STAGES_TOTAL_SHARE - SPEAKER_SHARE - encoder_share,
    }


def _plan_budgets(run: Run, opts: TrainOptions) -> dict[str, float]:
    if "budgets" not in run.info:
        used = float(run.info.get("wall_seconds", {}).get("cache", 0.0))
        left = max(opts.minutes * 60.0 - used, 0.0)
        shares = stage_shares(opts.encoder_share)
        run.info["budgets"] = {k: max(share * left, MIN_STAGE_SECONDS) for k, share in shares.items()}
        run.save()
    budgets: dict[str, float] = run.info["budgets"]
    return budgets


def _require(run: Run, stage: str) -> None:
    if not run.stage_done(stage):
        raise InputError(
            f"stage {stage!r} has not finished in {run.dir}; run it first (--stage {stage}) or --stage all."
        )


def train(
    opts: TrainOptions, stop: StopFlag | None = None, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Run the recipe (or one stage of it) described by `opts`. Returns when done or stopped."""
    if opts.stage not in ("all", *STAGES):
        raise InputError(f"unknown stage {opts.stage!r}; choose all, {', '.join(STAGES)}")
    stage_shares(opts.encoder_share)  # a bad share or starting point fails before anything is written
    init = None if opts.init_from is None else warm_start.load_init(opts.init_from, preset(opts.preset))
    if opts.extra_data and not run_exists(opts.out):
        if opts.data is None:
            raise InputError("--data is required to start a run")
        for extra in opts.extra_data:
            corpus_data.check_extra(Path(opts.data), Path(extra))
    run = Run(opts.out)
    if run.info and not opts.resume and opts.stage == "all":
        raise InputError(
            f"{run.dir} already holds a run; pass --resume to continue it or choose another --out."
        )
    run.dir.mkdir(parents=True, exist_ok=True)
    log = log or RunLog(run.dir / "train.log")
    if not run.info:
        if opts.data is None:
            raise InputError("--data is required to start a run")
        data_root = Path(opts.data)
        train_split, val_split = corpus_data.default_splits(data_root)
        run.info = {
            "options": opts.to_json(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "corpus": corpus_data.corpus_info(data_root),
            "splits": {"train": opts.train_split or train_split, "val": opts.val_split or val_split},
        }
        if init is not None:
            run.info["init_from"] = warm_start.init_record(init)
        if opts.extra_data:
            run.info["extra_data"] = [str(p) for p in opts.extra_data]
            run.info["corpus"]["extra"] = [corpus_data.corpus_info(Path(p)) for p in opts.extra_data]
        run.save()
    elif init is not None and init.sha256 != run.info.get("init_from", {}).get("sha256"):
        raise InputError(
            f"{run.dir} did not start from --init-from {opts.init_from}; resume it without --init-from "
            "(a run keeps the starting point it began with)."
        )
    elif opts.extra_data and [str(p) for p in opts.extra_data] != run.info.get("extra_data"):
        raise InputError(
            f"{run.dir} did not start with --extra-data {' '.join(map(str, opts.extra_data))}; resume it "
            "without --extra-data (a run keeps the data it began with)."
        )
    if opts.data is None and not run.stage_done("cache"):
        stored = run.info.get("options", {}).get("data")
        if not stored:
            raise InputError("--data is required until the cache step has finished")
        opts = dataclasses.replace(opts, data=Path(stored))
    torch.set_num_threads(max(1, opts.threads))
    cfg = preset(opts.preset)
    stop = stop or StopFlag()
    settings = LoopSettings(
        save_every_s=opts.save_every_min * 60.0, log_every_s=opts.log_every_s, progress_bar=opts.progress_bar
    )
    result = TrainResult("done", run.dir)
    wanted = STAGES if opts.stage == "all" else (opts.stage,)
    corpus = run.info.get("corpus", {})
    log(
        f"run {run.dir} ({corpus.get('kind', '?')} corpus {corpus.get('name', '?')}), "
        f"stages {', '.join(wanted)}, budget {opts.minutes:.0f} min"
    )

    with stop:
        for stage in wanted:
            if stop.requested:
                break
            t0 = time.perf_counter()
            if stage == "cache":
                _cache(run, opts, cfg, stop, log)
            elif stage == "encoder":
                _stage_encoder(run, opts, cfg, stop, settings, log)
            elif stage == "speaker":
                _stage_speaker(run, opts, cfg, stop, settings, log)
            elif stage == "denoiser":
                _stage_denoiser(run, opts, _with_mel_norm(run, cfg), stop, settings, log)
            else:
                result.checkpoint = export_run(run, opts, _with_mel_norm(run, cfg), log)
            run.add_wall(stage, time.perf_counter() - t0)
    if stop.requested:
        result.status = "stopped"
        log(f"stopped by signal {stop.signal}; continue with --resume")
    for name in ("encoder", "speaker", "denoiser"):
        rec = run.record(name)
        if rec is not None:
            result.records[name] = rec
    return result


# ----------------------------------------------------------------------------------------------- stages


def _cache(
    run: Run, opts: TrainOptions, cfg: ModelConfig, stop: StopFlag, log: Callable[[str], None]
) -> None:
    if run.stage_done("cache"):
        return
    from tqdm import tqdm

    assert opts.data is not None
    root = Path(opts.data)
    splits = run.info["splits"]
    if splits.get("val") == corpus_data.HOLDOUT:
        kept, held = corpus_data.hold_out(corpus_data.list_utterances(root, splits["train"]), opts.max_val)
    else:
        kept = corpus_data.list_utterances(root, splits["train"])
        held = corpus_data.list_utterances(root, splits["val"], opts.max_val) if splits.get("val") else []
    extras = [Path(p) for p in run.info.get("extra_data", [])]
    if extras:
        # Never train on a sentence that the test splits score or the validation reads.
        tests = [u for s in corpus_data.TEST_SPLITS for u in _split_or_empty(root, s)]
        added, dropped = corpus_data.extra_utterances(extras, {u.text for u in (*tests, *held)})
        log(
            f"[cache] extra corpora: {len(added)} training utterances "
            f"({dropped} left out: their sentence is in a test split or the validation)"
        )
        kept = kept + added
    if opts.max_utterances is not None and len(kept) > opts.max_utterances:
        kept = corpus_data.spread(kept, opts.max_utterances)
    jobs = [("train", kept), *([("val", held)] if held else [])]
    summary: dict[str, Any] = {}
    show = sys.stderr.isatty() if opts.progress_bar is None else opts.progress_bar
    for name, utts in jobs:
        source = (
            f"held out of {splits['train']!r}"
            if splits[name] == corpus_data.HOLDOUT
            else f"from {splits[name]!r}"
        )
        log(f"[cache] {name}: {len(utts)} utterances {source}")
        bar = tqdm(total=len(utts), desc=f"cache {name}", unit="utt", disable=not show)
        last = [time.perf_counter()]

        def progress(
            done: int, total: int, bar: Any = bar, name: str = name, last: list[float] = last
        ) -> None:
            bar.n = done
            bar.refresh()
            if time.perf_counter() - last[0] >= opts.log_every_s:
                last[0] = time.perf_counter()
                log(f"[cache] {name}: {done}/{total}")

        out = build_cache(
            utts,
            run.dir / "cache" / name,
            cfg.audio,
            cfg.video,
            opts.workers,
            lambda: stop.requested,
            progress,
        )
        bar.close()
        summary[name] = {"cached": out["cached"], "failed": len(out["failed"])}
        for message in out["failed"][:5]:
            log(f"[cache] skipped {message}")
        if not out["complete"]:
            return
        if out["cached"] == 0:
            raise InputError(
                f"no utterance of split {splits[name]!r} could be decoded (see {run.dir}/cache/{name}/failed.json)"
            )
    summary["complete"] = True
    run.info["cache"] = summary
    run.save()
    log(f"[cache] done: {summary}")


def _split_or_empty(root: Path, split: str) -> list[corpus_data.Utterance]:
    try:
        return corpus_data.list_utterances(root, split)
    except ValueError:  # a corpus made without that split
        return []


def _with_mel_norm(run: Run, cfg: ModelConfig) -> ModelConfig:
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


def _stage_encoder(
    run: Run,
    opts: TrainOptions,
    cfg: ModelConfig,
    stop: StopFlag,
    settings: LoopSettings,
    log: Callable[[str], None],
) -> None:
    from lab.training.encoder_stage import EncoderStage
    from lab.training.features import compute_encoder_features

    _require(run, "cache")
    budgets = _plan_budgets(run, opts)
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
                compute_encoder_features(model, data, run.dir / "features" / name)
        run.info.setdefault("features", {})["encoder"] = True
        run.save()
        log(f"[features] encoder features cached in {time.perf_counter() - t0:.0f} s")


def _stage_speaker(
    run: Run,
    opts: TrainOptions,
    cfg: ModelConfig,
    stop: StopFlag,
    settings: LoopSettings,
    log: Callable[[str], None],
) -> None:
    from lab.training.features import FeatureSet, compute_speaker_embeddings
    from lab.training.speaker_stage import SpeakerStage

    _require(run, "encoder")
    budgets = _plan_budgets(run, opts)
    train, val = _sets(run, cfg)
    feats = run.dir / "features"
    if not run.stage_done("speaker"):
        model = model_with_stages(run, cfg, opts.seed, ("encoder",))
        train_f = FeatureSet(train, feats / "train", with_speaker=False)
        val_f = FeatureSet(val, feats / "val", with_speaker=False) if val is not None else None
        stage = SpeakerStage(model, train_f, val_f, batch_size=opts.speaker_batch, seed=opts.seed)
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
        model = model_with_stages(run, cfg, opts.seed, ("encoder", "speaker"))
        for name, data in (("train", train), ("val", val)):
            if data is not None:
                compute_speaker_embeddings(model, data, feats / name)
        run.info.setdefault("features", {})["speaker"] = True
        run.save()
        log("[features] speaker embeddings cached")


def _stage_denoiser(
    run: Run,
    opts: TrainOptions,
    cfg: ModelConfig,
    stop: StopFlag,
    settings: LoopSettings,
    log: Callable[[str], None],
) -> None:
    from lab.training.denoiser_stage import DenoiserStage
    from lab.training.features import FeatureSet

    _require(run, "speaker")
    if run.stage_done("denoiser"):
        return
    budgets = _plan_budgets(run, opts)
    train, val = _sets(run, cfg)
    feats = run.dir / "features"
    model = build_initial_model(cfg, opts.seed)
    train_f = FeatureSet(train, feats / "train")
    val_f = FeatureSet(val, feats / "val") if val is not None else None
    mean, std = train.mel_stats()
    prior_init = None
    fresh = not run.state("denoiser").exists()
    if model.denoiser.prior is not None and fresh:
        prior_init = _prior_from_encoder(run, cfg, mean, std, log)
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
    )
    budget = Budget(budgets["denoiser"], opts.denoiser_steps, lr=opts.denoiser_lr)
    run_stage(stage, run.state("denoiser"), budget, stop, settings, log)


def _init_checkpoint(run: Run, cfg: ModelConfig) -> Any:
    """The checkpoint the run warm-starts from (`--init-from`), or None for a fresh run."""
    record = run.info.get("init_from")
    return None if record is None else warm_start.recorded_init(record, cfg)


def _prior_from_encoder(
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
