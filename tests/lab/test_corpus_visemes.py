import numpy as np

from lab.corpus.phones import PhoneSegment, arpabet_to_phone, ipa_to_phones
from lab.corpus.visemes import MOUTH_PARAMS, frame_mouth, mouth_trajectory

OPEN = MOUTH_PARAMS.index("open")
SPREAD = MOUTH_PARAMS.index("spread")


def _segs(spec: list[tuple[str, float]]) -> list[PhoneSegment]:
    out, t = [], 0.0
    for phone, dur in spec:
        out.append(PhoneSegment(phone, phone, t, t + dur, -1 if phone == "sil" else 0))
        t += dur
    return out


def test_engine_labels_map_to_one_phone_set():
    assert arpabet_to_phone("ax") == "ah"
    assert arpabet_to_phone("pau") == "sil"
    assert arpabet_to_phone("AA1") == "aa"
    assert ipa_to_phones("ˈeɪ") == ("ey",)
    assert ipa_to_phones("uː") == ("uw",)
    assert ipa_to_phones("t̪") == ("t",)
    assert ipa_to_phones("tʃ") == ("ch",)
    assert ipa_to_phones("") == ("sil",)


def test_lips_close_on_bilabials_and_open_on_vowels():
    segs = _segs(
        [("sil", 0.3), ("b", 0.06), ("aa", 0.15), ("m", 0.07), ("aa", 0.15), ("p", 0.06), ("sil", 0.3)]
    )
    times = np.array([s.centre for s in segs])
    traj = mouth_trajectory(segs, times)
    assert traj[2, OPEN] > 0.6 and traj[4, OPEN] > 0.6
    for k in (1, 3, 5):
        assert traj[k, OPEN] < 0.05, (segs[k].phone, traj[k, OPEN])


def test_rounding_is_anticipated_across_a_consonant():
    # "s" before a rounded vowel is rounder than "s" before a spread one (coarticulation).
    before_round = _segs([("sil", 0.2), ("s", 0.08), ("uw", 0.15), ("sil", 0.2)])
    before_spread = _segs([("sil", 0.2), ("s", 0.08), ("iy", 0.15), ("sil", 0.2)])
    t = np.array([before_round[1].centre])
    assert mouth_trajectory(before_round, t)[0, SPREAD] < mouth_trajectory(before_spread, t)[0, SPREAD] - 0.3


def test_frame_mouth_shape_and_jitter_is_seeded():
    segs = _segs([("sil", 0.2), ("b", 0.06), ("aa", 0.2), ("sil", 0.2)])
    a = frame_mouth(segs, 17, 25.0, rng=np.random.default_rng(1), jitter_s=0.01)
    b = frame_mouth(segs, 17, 25.0, rng=np.random.default_rng(1), jitter_s=0.01)
    c = frame_mouth(segs, 17, 25.0, rng=np.random.default_rng(2), jitter_s=0.01)
    assert a.shape == (17, len(MOUTH_PARAMS))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
