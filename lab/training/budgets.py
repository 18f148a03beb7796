"""The wall-clock budget of a run: how the minutes left after the cache step are shared between stages.

The cache step takes what it takes; the rest is split by `stage_shares(encoder_share)` (what the shares
leave covers feature extraction and export). A stage's budget is fixed when it is first planned and kept in
run.json, so `--resume` continues the same schedules.
"""

from __future__ import annotations

from diffv2s.errors import InputError
from lab.training.options import TrainOptions
from lab.training.run_folder import Run

# Shares of the minutes left after the cache step: the speaker stage's is fixed, the encoder's is
# `--encoder-share` and the denoiser gets what the stages' total leaves.
SPEAKER_SHARE = 0.05
STAGES_TOTAL_SHARE = 0.95
ENCODER_SHARE_RANGE = (0.1, 0.8)
MIN_STAGE_SECONDS = 30.0


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


def plan_budgets(run: Run, opts: TrainOptions) -> dict[str, float]:
    """Each training stage's budget in seconds, planned on first use and then read back from run.json."""
    if "budgets" not in run.info:
        wall = run.info.get("wall_seconds", {})
        used = float(wall.get("cache", 0.0))
        shares = stage_shares(opts.encoder_share)
        if run.info.get("avhubert"):
            # The paper's path: the official encoder does not train; its feature step took what it took.
            used += float(wall.get("encoder", 0.0))
            shares = {
                "encoder": 0.0,
                "speaker": SPEAKER_SHARE,
                "denoiser": STAGES_TOTAL_SHARE - SPEAKER_SHARE,
            }
        left = max(opts.minutes * 60.0 - used, 0.0)
        run.info["budgets"] = {
            k: max(share * left, MIN_STAGE_SECONDS) if share > 0 else 0.0 for k, share in shares.items()
        }
        run.save()
    budgets: dict[str, float] = run.info["budgets"]
    return budgets
