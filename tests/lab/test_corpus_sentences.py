import numpy as np
import pytest

from lab.corpus.sentences import (
    LETTERS,
    N_SENTENCES,
    SLOT_WORDS,
    SLOTS,
    Sentence,
    draw_sentences,
    normalize_text,
)


def test_grammar_has_64000_sentences_and_index_round_trips():
    assert N_SENTENCES == 4 * 4 * 4 * 25 * 10 * 4
    for idx in (0, 1, 12345, N_SENTENCES - 1):
        assert Sentence.from_index(idx).index == idx
    s = Sentence.from_index(777)
    assert [getattr(s, slot) in SLOT_WORDS[slot] for slot in SLOTS] == [True] * 6


def test_grid_has_no_w_and_text_parses_back():
    assert "w" not in LETTERS and len(LETTERS) == 25
    s = Sentence("bin", "blue", "at", "f", "two", "now")
    assert s.text == "bin blue at f two now"
    assert Sentence.from_text("BIN BLUE AT F2 NOW") == s
    with pytest.raises(ValueError):
        Sentence.from_text("bin blue at w two now")


def test_letters_are_spelled_so_engines_say_their_names():
    spoken = Sentence("set", "red", "by", "a", "nine", "soon").spoken_words
    assert spoken[3] == "eigh"  # a lone "a" is read as the article
    assert Sentence("set", "red", "by", "q", "nine", "soon").spoken_words[3] == "Q"
    assert Sentence("set", "red", "by", "q", "nine", "soon").words[3] == "q"


def test_draw_sentences_distinct_and_seeded():
    a = draw_sentences(np.random.default_rng(3), 500)
    b = draw_sentences(np.random.default_rng(3), 500)
    c = draw_sentences(np.random.default_rng(4), 500)
    assert a == b
    assert len({s.index for s in a}) == 500
    assert a != c


def test_normalize_text():
    assert normalize_text("Bin blue at F2, now.") == "bin blue at f two now"
    assert normalize_text("set red 7 soon") == "set red seven soon"
