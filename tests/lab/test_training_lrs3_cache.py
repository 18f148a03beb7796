"""The LRS3 preparation (`diffv2s train --stage cache` on an LRS3 tree): decoded in parallel processes,
reports clips/s and the clips it refused with why, and a run stopped halfway (SIGTERM) resumes without
decoding its finished clips again."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np

from lab.corpus.lrs3 import format_lrs3_text
from lab.training.loop import StopFlag
from lab.training.options import TrainOptions
from lab.training.recipe import train
from tests.lab.conftest import make_lrs3_tree, write_talking_clip


def test_prepare_refuses_with_why_and_resumes_after_a_stop(tmp_path: Path) -> None:
    tree = make_lrs3_tree(tmp_path / "lrs3", speakers=2, clips=2, frames=20)
    blank = tree / "trainval" / "spk-blank" / "00001.mp4"  # no face in it
    blank.parent.mkdir()
    write_talking_clip(blank, [np.full((144, 176, 3), 128, np.uint8)] * 20, 150.0, seed=9)
    blank.with_suffix(".txt").write_text(format_lrs3_text("no face", []))
    opts = TrainOptions(
        data=tree,
        out=tmp_path / "run",
        stage="cache",
        workers=2,
        max_val=1,
        log_every_s=0.0,
        progress_bar=False,
    )
    stop = StopFlag()
    first: list[str] = []

    def stop_after_two(message: str) -> None:
        first.append(message)
        if message.startswith("[cache] train: 2/"):
            stop.request(signal.SIGTERM)  # what `kill -TERM` does to a running `diffv2s train`

    assert train(opts, stop=stop, log=stop_after_two).status == "stopped"
    decoded_first = next(m for m in first if "clips decoded" in m)
    assert decoded_first.startswith("[cache] train: 2 clips decoded")
    second: list[str] = []
    result = train(TrainOptions(**{**opts.__dict__, "resume": True}), log=second.append)
    assert result.status == "done"
    train_line = next(m for m in second if m.startswith("[cache] train:") and "clips decoded" in m)
    # 5 clips in trainval, 1 held out for validation: 4 to train on, 2 done before the stop.
    assert train_line.startswith("[cache] train: 2 clips decoded"), train_line
    assert "clips/s" in train_line
    refused = [m for m in first + second if "refused:" in m and "none" not in m]
    assert refused and "no_face" in " ".join(refused), first + second
