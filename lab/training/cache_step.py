"""The cache step: which utterances a run trains and validates on, decoded once into the run folder.

Validation is held out of the training split (or read from `--val-split`); extra corpora add training
clips whose sentences are in neither a test split nor the validation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffv2s.config import ModelConfig
from diffv2s.errors import InputError
from lab.training import data as corpus_data
from lab.training.cache import build_cache, refusal_counts
from lab.training.loop import StopFlag
from lab.training.options import TrainOptions
from lab.training.run_folder import Run


def cache_step(
    run: Run, opts: TrainOptions, cfg: ModelConfig, stop: StopFlag, log: Callable[[str], None]
) -> None:
    """Decode the run's training and validation utterances into {run}/cache/; resumable, and done once
    run.json says the cache is complete."""
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
        refused = refusal_counts(out["failed"])
        summary[name] = {"cached": out["cached"], "failed": len(out["failed"]), "refused": refused}
        rate = out["decoded"] / max(out["seconds"], 1e-9)
        log(
            f"[cache] {name}: {out['decoded']} clips decoded in {out['seconds']:.1f} s ({rate:.2f} clips/s, "
            f"{opts.workers} processes); {out['cached']} cached, refused: "
            + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none")
        )
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
