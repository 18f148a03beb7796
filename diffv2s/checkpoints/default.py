"""Build a deterministically initialised (untrained) `small` checkpoint.

`python -m diffv2s.checkpoints.default OUT.pt` writes one; the same seed gives the same weights on any
machine. Its output is not speech. (The shipped default, diffv2s/assets/diffv2s-small.pt, is trained by
`diffv2s train`.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffv2s.checkpoints.store import DEFAULT_CHECKPOINT, save_checkpoint
from diffv2s.checkpoints.weights import checkpoint_state
from diffv2s.config import preset
from diffv2s.model import build_initial_model


def write_initial_checkpoint(path: Path, seed: int = 0) -> str:
    cfg = preset("small")
    model = build_initial_model(cfg, seed=seed)
    meta = {"trained": False, "init_seed": seed, "note": "deterministic initialisation; output is not speech"}
    return save_checkpoint(path, cfg, checkpoint_state(model), meta, half=True)


if __name__ == "__main__":
    if len(sys.argv) != 2 or Path(sys.argv[1]).resolve() == DEFAULT_CHECKPOINT:
        raise SystemExit("usage: python -m diffv2s.checkpoints.default OUT.pt (not the shipped default)")
    out = Path(sys.argv[1])
    print(out, write_initial_checkpoint(out))
