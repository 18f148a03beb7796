"""A tiny corpus (2 speakers x 2 utterances): files, splits, timings vs audio, the mouth in the rendered
frames, FaceMesh detection, determinism per seed."""

import json

import cv2
import numpy as np
import pytest

from lab.corpus.make import make_corpus
from lab.corpus.manifest import SPLITS, load_corpus
from lab.corpus.photos import FACE_OVAL, LIPS_OUTER
from lab.corpus.writer import read_mp4

SEED = 7
OPEN_VOWELS = {"aa", "ae", "ah", "aw", "ay", "eh", "ao"}
BILABIALS = {"p", "b", "m"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = make_corpus(out, 2, 2, SEED)
    return out, manifest


@pytest.fixture(scope="module")
def clips(corpus):
    """utt_id -> (transcript, decoded clip, FaceMesh landmarks per frame or None)."""
    from mediapipe.python.solutions import face_mesh

    out, _ = corpus
    result = {}
    for item in load_corpus(out):
        clip = read_mp4(item.video)
        marks = []
        with face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1) as mesh:
            for frame in clip.frames:
                res = mesh.process(frame)
                if res.multi_face_landmarks:
                    h, w = frame.shape[:2]
                    marks.append(np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark]))
                else:
                    marks.append(None)
        result[item.utt_id] = (json.loads(item.transcript.read_text()), clip, marks)
    return result


def test_layout_and_splits(corpus):
    out, manifest = corpus
    items = load_corpus(out)
    assert len(items) == 4
    for item in items:
        assert item.video.exists() and item.transcript.exists()
        assert item.video.parent.name == item.speaker and item.video.parent.parent.name == item.split
    by_split = {s: [i for i in items if i.split == s] for s in SPLITS}
    assert all(by_split[s] for s in SPLITS)
    train_texts = {i.text for i in by_split["train"]}
    train_speakers = {i.speaker for i in by_split["train"]}
    assert not train_texts & {i.text for i in by_split["test_unseen_sentences"]}
    assert not train_speakers & {i.speaker for i in by_split["test_unseen_speaker"]}
    assert {i.speaker for i in by_split["test_unseen_sentences"]} <= train_speakers
    assert manifest["unseen_speakers"] == ["spk01"]


def test_streams_and_phone_timings_line_up_with_the_audio(clips):
    for utt, (tr, clip, _) in clips.items():
        assert clip.fps == 25 and len(clip.frames) == tr["n_frames"]
        assert clip.frames.shape[1:] == (224, 224, 3)
        sr = clip.sample_rate
        assert sr == tr["sample_rate"]
        n = int(round(tr["duration"] * sr))
        assert abs(tr["duration"] - tr["n_frames"] / 25) < 1e-9
        audio = clip.audio[:n]
        phones = tr["phones"]
        assert phones[0]["start"] == 0 and phones[-1]["end"] == pytest.approx(tr["duration"])
        hop = sr // 100
        rms = np.sqrt((audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2).mean(axis=1))
        t = (np.arange(len(rms)) + 0.5) / 100
        active = rms > 0.02 * rms.max()
        speech = [p for p in phones if p["phone"] != "sil"]
        offset = t[len(active) - 1 - np.argmax(active[::-1])]
        assert abs(offset - speech[-1]["end"]) < 0.1, (utt, offset, speech[-1]["end"])

        def level(p: dict, audio: np.ndarray = audio, sr: int = sr) -> float:
            seg = audio[int(p["start"] * sr) : int(p["end"] * sr)]
            return float(np.sqrt(np.mean(seg**2) + 1e-12))

        # Silences (away from their edges) are far quieter than the speech phones.
        quiet = [level({"start": p["start"] + 0.03, "end": p["end"] - 0.03}) for p in phones
                 if p["phone"] == "sil" and p["end"] - p["start"] > 0.1]  # fmt: skip
        loud = np.median([level(p) for p in speech])
        assert quiet and 20 * np.log10(loud / max(quiet)) > 20, utt


def test_face_is_found_on_almost_every_frame(clips):
    found = sum(m is not None for _, _, marks in clips.values() for m in marks)
    total = sum(len(marks) for _, _, marks in clips.values())
    assert found / total >= 0.95, found / total


def _dark_mouth_area(frame: np.ndarray, marks: np.ndarray) -> float:
    """Dark (mouth cavity) area near the lips found by FaceMesh, in units of mouth width squared."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    face = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(face, [marks[list(FACE_OVAL)].astype(np.int32)], 1)
    skin = float(np.median(grey[face > 0]))
    lips = marks[list(LIPS_OUTER)]
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    width = x1 - x0
    roi = grey[
        max(int(y0 - 0.1 * width), 0) : int(y1 + 0.3 * width),
        max(int(x0 - 0.1 * width), 0) : int(x1 + 0.1 * width),
    ]
    dark = (roi < 0.45 * skin).astype(np.uint8)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # not the thin lip seam
    return float(dark.sum()) / width**2


def test_mouth_opens_on_vowels_and_closes_on_bilabials(clips):
    vowel, bilabial = [], []
    for tr, clip, marks in clips.values():
        for p in tr["phones"]:
            k = int((p["start"] + p["end"]) / 2 * 25)
            if marks[k] is None:
                continue
            if p["phone"] in OPEN_VOWELS and p["end"] - p["start"] > 0.06:
                vowel.append(_dark_mouth_area(clip.frames[k], marks[k]))
            elif p["phone"] in BILABIALS:
                bilabial.append(_dark_mouth_area(clip.frames[k], marks[k]))
    assert len(vowel) >= 4 and len(bilabial) >= 2
    assert np.median(vowel) > 0.03, vowel
    assert max(bilabial) < 0.015, bilabial
    assert np.median(vowel) > 4 * max(np.median(bilabial), 0.002)


def test_same_seed_same_corpus_new_seed_new_sentences_same_speakers(corpus, clips, tmp_path):
    out, manifest = corpus
    again = make_corpus(tmp_path / "again", 2, 2, SEED)
    assert again == manifest
    for item in load_corpus(tmp_path / "again"):
        tr, clip, _ = clips[item.utt_id]
        assert json.loads(item.transcript.read_text()) == tr
        assert item.video.read_bytes() == (out / item.split / item.speaker / item.video.name).read_bytes()
        other = read_mp4(item.video)
        np.testing.assert_array_equal(other.audio, clip.audio)
        np.testing.assert_array_equal(other.frames, clip.frames)
    new = make_corpus(tmp_path / "new", 2, 1, SEED + 1)
    assert new["speakers"] == manifest["speakers"]
    old_texts = {e["utt_id"]: e["text"] for s in manifest["splits"].values() for e in s}
    new_texts = {e["utt_id"]: e["text"] for s in new["splits"].values() for e in s}
    assert all(new_texts[u] != old_texts[u] for u in new_texts)


def test_resume_keeps_finished_utterances(corpus):
    out, manifest = corpus
    item = load_corpus(out)[0]
    before = item.video.stat().st_mtime_ns
    assert make_corpus(out, 2, 2, SEED) == manifest
    assert item.video.stat().st_mtime_ns == before
