"""The cache step on a real (tiny) synthetic corpus and on the same clips in the LRS3 layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffv2s.config import preset
from diffv2s.video.mouth_roi import extract_mouth_roi
from lab.corpus.lrs3 import corpus_to_lrs3
from lab.corpus.make import make_corpus
from lab.training.cache import (
    NO_PHONE,
    PHONE_CLASSES,
    CacheSet,
    build_cache,
    phone_labels,
    roi_from_uint8,
)
from lab.training.cli import train_main
from lab.training.data import HOLDOUT, Utterance, default_splits, hold_out, list_utterances

CFG = preset("small")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    # Two engines (festival kal, flite awb): two clearly different voices and faces.
    make_corpus(root, ["spk00", "spk03"], 3, seed=5, unseen_speakers=0, test_fraction=0.34)
    return root


@pytest.fixture(scope="module")
def cached(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    args = ["--data", str(corpus), "--out", str(run), "--stage", "cache", "--workers", "1", "--no-progress"]
    assert train_main(args) == 0
    return run


def test_cache_holds_frames_mel_and_speaker_of_every_clip(corpus: Path, cached: Path) -> None:
    data = CacheSet(cached / "cache" / "train", CFG.video)
    val = CacheSet(cached / "cache" / "val", CFG.video)
    items = list_utterances(corpus, "train")
    # Validation is held out of the training split (one of its four clips here), never trained on and
    # never a test clip.
    trained, held = {it["utt_id"] for it in data.items}, {it["utt_id"] for it in val.items}
    assert len(held) == 1 and not trained & held
    assert trained | held == {u.utt_id for u in items}
    ratio = CFG.audio.mel_rate / CFG.video.fps
    for i, meta in enumerate(data.items):
        transcript = json.loads((corpus / "train" / meta["speaker"] / f"{meta['utt_id']}.json").read_text())
        frames, mel = data.frames(i), data.mel(i)
        assert frames.dtype == np.uint8 and frames.shape == (transcript["n_frames"], 88, 88)
        assert mel.shape == (round(transcript["n_frames"] * ratio), CFG.audio.n_mels)
        assert meta["text"] == transcript["text"]
        assert abs(float(np.linalg.norm(data.ge2e(i))) - 1.0) < 1e-4
        # The mel lines up with the speech: louder inside the words than in the lead-in silence.
        energy = mel.mean(axis=1)
        first_word = transcript["words"][0]["start"]
        lead = energy[: max(1, int(first_word * CFG.audio.mel_rate) - 2)]
        w0 = int(transcript["words"][0]["start"] * CFG.audio.mel_rate)
        w1 = int(transcript["words"][-1]["end"] * CFG.audio.mel_rate)
        assert energy[w0:w1].mean() > lead.mean() + 2.0
        # The engine's phone timings travel with the clip: every 100 Hz frame's label is the phone whose
        # segment in the transcript holds the frame's centre.
        labels = data.phone_labels(i, 100.0)
        assert len(labels) == round(transcript["n_frames"] * 100.0 / CFG.video.fps)
        for seg in transcript["phones"]:
            k = int(0.5 * (seg["start"] + seg["end"]) * 100.0)
            if seg["start"] <= (k + 0.5) / 100.0 < seg["end"] and k < len(labels):
                assert PHONE_CLASSES[labels[k]] == seg["phone"]
        assert (labels != NO_PHONE).mean() > 0.95
    # Frames are stored losslessly: they decode to exactly what the mouth-ROI front end returns.
    video = corpus / "train" / data.items[0]["speaker"] / f"{data.items[0]['utt_id']}.mp4"
    np.testing.assert_allclose(
        roi_from_uint8(data.frames(0), CFG.video), extract_mouth_roi(video, CFG.video).frames, atol=1e-5
    )
    # GE2E tells the two voices apart.
    spk = data.speaker_index
    same = [
        float(data.ge2e(i) @ data.ge2e(j)) for i in range(len(data)) for j in range(i) if spk[i] == spk[j]
    ]
    other = [
        float(data.ge2e(i) @ data.ge2e(j)) for i in range(len(data)) for j in range(i) if spk[i] != spk[j]
    ]
    assert min(same) > max(other)


def test_lrs3_layout_runs_the_same_cache_and_resumes(corpus: Path, cached: Path, tmp_path: Path) -> None:
    lrs3 = tmp_path / "lrs3"
    corpus_to_lrs3(corpus, lrs3)
    assert default_splits(lrs3) == ("trainval", HOLDOUT)
    utts = list_utterances(lrs3, "trainval")
    synthetic = {(u.speaker, u.text) for u in list_utterances(corpus, "train")}
    assert {(u.speaker, u.text) for u in utts} == synthetic
    run = tmp_path / "run"
    # Interrupted after two clips: those land in a shard, the CLI run then decodes only the rest.
    calls = []
    out = build_cache(
        utts,
        run / "cache" / "train",
        CFG.audio,
        CFG.video,
        1,
        lambda: bool(calls) and calls[-1] >= 2,
        lambda d, t: calls.append(d),
    )
    assert {k: out[k] for k in ("cached", "failed", "complete", "decoded")} == {
        "cached": 2,
        "failed": [],
        "complete": False,
        "decoded": 2,
    }
    args = ["--data", str(lrs3), "--out", str(run), "--stage", "cache", "--workers", "1", "--no-progress"]
    assert train_main(args) == 0
    from_lrs3 = CacheSet(run / "cache" / "train", CFG.video)
    held = CacheSet(run / "cache" / "val", CFG.video)
    assert len(from_lrs3) == 3 and len(held) == 1
    assert len({it["utt_id"] for it in [*from_lrs3.items, *held.items]}) == 4
    # Same clips, same arrays, whichever layout they were read from.
    reference = CacheSet(cached / "cache" / "train", CFG.video)
    by_key = {
        (it["speaker"], it["text"]): (data, i)
        for data in (reference, CacheSet(cached / "cache" / "val", CFG.video))
        for i, it in enumerate(data.items)
    }
    for i, it in enumerate(from_lrs3.items):
        data, j = by_key[(it["speaker"], it["text"])]
        np.testing.assert_array_equal(from_lrs3.frames(i), data.frames(j))
        np.testing.assert_array_equal(from_lrs3.mel(i), data.mel(j))
        np.testing.assert_allclose(from_lrs3.ge2e(i), data.ge2e(j), atol=1e-6)
    # LRS3 has no phone timings: no labels, so stage A trains on the mel alone.
    assert reference.has_phones and not from_lrs3.has_phones
    assert (from_lrs3.phone_labels(0, 100.0) == NO_PHONE).all()


def test_phone_labels_take_the_segment_under_each_frame_centre() -> None:
    segments = [("sil", 0.0, 0.05), ("b", 0.05, 0.08), ("aa", 0.08, 0.2), ("xx", 0.2, 0.25)]
    labels = phone_labels(segments, 30, 100.0)
    names = [PHONE_CLASSES[k] if k != NO_PHONE else None for k in labels]
    # Frame k covers [k, k + 1) / 100 s, its centre (k + 0.5) / 100 s.
    assert names[:5] == ["sil"] * 5
    assert names[5:8] == ["b"] * 3
    assert names[8:20] == ["aa"] * 12
    assert names[20:] == [None] * 10  # an unknown phone, then no segment at all


def test_hold_out_takes_each_speakers_last_utterances_and_at_most_a_fifth() -> None:
    items = [
        Utterance(f"s{k}-{j}", f"s{k}", "train", "text", Path("x.mp4")) for k in range(3) for j in range(10)
    ]
    kept, held = hold_out(items, 4)
    assert [u.utt_id for u in held] == ["s2-9", "s1-9", "s0-9", "s2-8"]
    assert kept == [u for u in items if u not in held]
    assert len(hold_out(items, 64)[1]) == 6  # a fifth of 30
    assert len(hold_out(items[:3], 64)[1]) == 1 and hold_out(items[:1], 64) == (items[:1], [])
