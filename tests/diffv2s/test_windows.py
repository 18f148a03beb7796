"""Long-video windowing, per-window noise seeds and cross-fade (pure functions of the sampling path)."""

import torch

from diffv2s.windows import crossfade, plan_batch, plan_windows, window_seed


def test_short_video_is_one_window():
    assert plan_windows(100, 345, 3.45, window=250, overlap=25) == [(0, 100, 0, 345)]


def test_windows_cover_everything_with_overlap():
    n_frames, ratio = 1000, 22050 / 256 / 25
    n_mel = round(n_frames * ratio)
    wins = plan_windows(n_frames, n_mel, ratio, window=250, overlap=25)
    assert wins[0][0] == 0 and wins[-1][1] == n_frames and wins[-1][3] == n_mel
    for (a0, a1, _am0, am1), (b0, _b1, bm0, _bm1) in zip(wins, wins[1:], strict=False):
        assert b0 < a1, "consecutive windows must overlap"
        assert bm0 < am1
        assert a1 - a0 <= 250
    covered = torch.zeros(n_mel, dtype=torch.bool)
    for _, _, m0, m1 in wins:
        covered[m0:m1] = True
    assert covered.all()


def test_crossfade_reconstructs_a_constant_and_blends_overlaps():
    n_mel = 300
    pieces = [
        (0, torch.full((2, 120), 1.0)),
        (100, torch.full((2, 120), 1.0)),
        (200, torch.full((2, 100), 1.0)),
    ]
    out = crossfade(pieces, n_mel)
    assert out.shape == (2, n_mel)
    assert torch.allclose(out, torch.ones(2, n_mel), atol=1e-6)
    # Two different windows: the overlap moves monotonically from the first to the second.
    out = crossfade([(0, torch.zeros(1, 120)), (100, torch.ones(1, 200))], n_mel)
    assert out[0, :100].abs().max() == 0 and torch.all(out[0, 120:] == 1)
    assert torch.all(out[0, 100:120].diff() >= 0)


def test_a_batch_plan_lists_every_window_of_every_item_in_order():
    ratio = 22050 / 256 / 25
    wins = plan_batch([30, 300, 5], ratio, window=250, overlap=25)
    assert [(w.item, w.index) for w in wins] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert (wins[1].v0, wins[1].v1, wins[2].v0, wins[2].v1) == (0, 250, 50, 300)
    assert wins[3].m1 == round(5 * ratio)


def test_window_seeds_differ_between_windows_and_items_and_fit_a_generator():
    seeds = {window_seed(s, k) for s in (0, 1, 2**62 + 7) for k in range(4)}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 - 1 for s in seeds)
    torch.Generator().manual_seed(max(seeds))
