"""The training recipe: its steps in order under one wall-clock budget (`lab.training.budgets`), every
step reading and writing the run folder (`lab.training.run_folder`), so a stopped run resumes where it
stopped. Every stage saves its state every few minutes and on SIGINT/SIGTERM.

    cache (`cache_step`) -> encoder -> speaker -> denoiser (`stages`) -> export (`export`)

With `--avhubert FILE` (the paper's path) the encoder step computes the official encoder's features
instead of training one. Under torchrun every process runs this function: the feature step and the
denoiser run in all of them (sharded), the other steps in rank 0 while the rest wait, and all read
run.json again after each step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffv2s.errors import InputError
from lab.training import data as corpus_data
from lab.training import warm_start
from lab.training.budgets import stage_shares
from lab.training.cache_step import cache_step
from lab.training.devices import Distributed, Placement, resolve_device, resolve_precision
from lab.training.export import export_run
from lab.training.loop import LoopSettings, StageRecord, StopFlag
from lab.training.official_encoder import official_record, run_model_config
from lab.training.options import TrainOptions
from lab.training.run_folder import Run, RunLog, run_exists
from lab.training.stages import train_denoiser, train_encoder, train_speaker, with_mel_norm

STAGES = ("cache", "encoder", "speaker", "denoiser", "export")


@dataclass
class TrainResult:
    status: str  # "done" | "stopped"
    run_dir: Path
    checkpoint: Path | None = None
    records: dict[str, StageRecord] = dataclasses.field(default_factory=dict)


def train(
    opts: TrainOptions, stop: StopFlag | None = None, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Run the recipe (or one stage of it) described by `opts`. Returns when done or stopped."""
    if opts.stage not in ("all", *STAGES):
        raise InputError(f"unknown stage {opts.stage!r}; choose all, {', '.join(STAGES)}")
    stage_shares(opts.encoder_share)  # a bad share or starting point fails before anything is written
    dist = Distributed.from_env()
    device = resolve_device(opts.device, dist)
    place = Placement(device, resolve_precision(opts.precision, device), dist, max(0, opts.loader_workers))
    dist.start(device)
    try:
        return _train(opts, place, stop, log)
    finally:
        dist.stop()


def _train(
    opts: TrainOptions, place: Placement, stop: StopFlag | None, log: Callable[[str], None] | None
) -> TrainResult:
    dist = place.dist
    if opts.avhubert is not None and opts.init_from is not None:
        raise InputError(
            "--avhubert and --init-from do not combine: the paper's path starts from the official encoder."
        )
    base_cfg = run_model_config(opts.preset, opts.override, None)
    init = None if opts.init_from is None else warm_start.load_init(opts.init_from, base_cfg)
    if opts.extra_data and not run_exists(opts.out):
        if opts.data is None:
            raise InputError("--data is required to start a run")
        for extra in opts.extra_data:
            corpus_data.check_extra(Path(opts.data), Path(extra))
    run = Run(opts.out, writable=dist.is_main)
    if run.info and not opts.resume and opts.stage == "all":
        raise InputError(
            f"{run.dir} already holds a run; pass --resume to continue it or choose another --out."
        )
    # Every process checks the options above; rank 0 alone starts the run folder, the others read it.
    dist.barrier()
    run.reload()
    if not dist.is_main:
        log = _quiet
    run.dir.mkdir(parents=True, exist_ok=True)
    log = log or RunLog(run.dir / "train.log")
    if run.info and opts.avhubert is not None:
        _check_same_avhubert(run, Path(opts.avhubert))
    if not run.info and dist.is_main:
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
        if opts.avhubert is not None:
            log(f"reading the official AV-HuBERT checkpoint {opts.avhubert}")
            run.info["avhubert"] = official_record(Path(opts.avhubert))
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
    dist.barrier()
    run.reload()
    torch.set_num_threads(max(1, opts.threads))
    # The options a run started with decide its model (a resumed run keeps its preset and overrides).
    started = run.info.get("options", {})
    cfg = run_model_config(
        started.get("preset", opts.preset),
        tuple(started.get("override", opts.override)),
        run.info.get("avhubert"),
    )
    stop = stop or StopFlag()
    settings = LoopSettings(
        save_every_s=opts.save_every_min * 60.0, log_every_s=opts.log_every_s, progress_bar=opts.progress_bar
    )
    result = TrainResult("done", run.dir)
    wanted = STAGES if opts.stage == "all" else (opts.stage,)
    corpus = run.info.get("corpus", {})
    log(
        f"run {run.dir} ({corpus.get('kind', '?')} corpus {corpus.get('name', '?')}), "
        f"stages {', '.join(wanted)}, budget {opts.minutes:.0f} min, {dist.world} x {place.device}, "
        f"{place.precision}"
    )

    with stop:
        for stage in wanted:
            if stop.requested:
                break
            t0 = time.perf_counter()
            everyone = stage == "denoiser" or (stage == "encoder" and bool(run.info.get("avhubert")))
            if everyone or dist.is_main:
                if stage == "cache":
                    cache_step(run, opts, cfg, stop, log)
                elif stage == "encoder":
                    train_encoder(run, opts, cfg, stop, settings, log, place)
                elif stage == "speaker":
                    train_speaker(run, opts, cfg, stop, settings, log, place)
                elif stage == "denoiser":
                    train_denoiser(run, opts, with_mel_norm(run, cfg), stop, settings, log, place)
                else:
                    result.checkpoint = export_run(run, opts, with_mel_norm(run, cfg), log)
                run.add_wall(stage, time.perf_counter() - t0)
            if dist.active:
                dist.barrier()
                run.reload()
                if dist.all_max([1.0 if stop.requested else 0.0], place.device)[0] > 0 and not stop.requested:
                    stop.request()
    if stop.requested:
        result.status = "stopped"
        log(f"stopped by signal {stop.signal}; continue with --resume")
    if result.checkpoint is None and run.info.get("export"):
        result.checkpoint = (
            run.dir / run.info["export"]["path"] if not opts.checkpoint else Path(opts.checkpoint)
        )
    for name in ("encoder", "speaker", "denoiser"):
        rec = run.record(name)
        if rec is not None:
            result.records[name] = rec
    return result


def _quiet(message: str) -> None:
    pass


def _check_same_avhubert(run: Run, path: Path) -> None:
    record = run.info.get("avhubert")
    if record is None:
        raise InputError(f"{run.dir} was started without --avhubert; resume it without --avhubert.")
    if Path(path).resolve() != Path(record["path"]) and Path(path).stat().st_size != record["bytes"]:
        raise InputError(
            f"{run.dir} started from the AV-HuBERT checkpoint {record['file']} (sha256 {record['sha256'][:12]}), "
            f"not {path}."
        )
