"""Degeneracy measures against hand-worked counts."""

from __future__ import annotations

import pytest

from prosocial_jax.evaluation import degeneracy
from prosocial_jax.evaluation.degeneracy import (
    distinct_n,
    is_degenerate,
    repeated_ngram_rate,
    words,
)

LOOP = "I'm sorry. I'm sorry. I'm sorry."
SENTENCE = "The quick brown fox jumps over the lazy dog."


def test_loop_by_hand():
    # Words: i m sorry i m sorry i m sorry (9; the apostrophe and the full stops only split).
    assert words(LOOP) == ["i", "m", "sorry"] * 3
    # Bigrams (8): (i m) (m sorry) (sorry i) (i m) (m sorry) (sorry i) (i m) (m sorry);
    # distinct: (i m) (m sorry) (sorry i) = 3, so 3/8.
    assert distinct_n(LOOP, 2) == 3 / 8
    # 4-grams (6): (i m sorry i) (m sorry i m) (sorry i m sorry), then the same three again;
    # the last three repeat earlier ones: 3/6.
    assert repeated_ngram_rate(LOOP, 4) == 3 / 6
    # Unigrams: 3 distinct of 9.
    assert distinct_n(LOOP, 1) == 3 / 9
    assert is_degenerate(LOOP)


def test_normal_sentence_by_hand():
    # Words: the quick brown fox jumps over the lazy dog (9; "the" twice).
    assert distinct_n(SENTENCE, 1) == 8 / 9
    # Bigrams (8), all different: "the quick" and "the lazy" share only their first word.
    assert distinct_n(SENTENCE, 2) == 1.0
    # 4-grams (6), all different: nothing repeats.
    assert repeated_ngram_rate(SENTENCE) == 0.0
    assert not is_degenerate(SENTENCE)


def test_short_texts():
    # "Hello there": 2 words, so 1 bigram and no trigram.
    assert distinct_n("Hello there", 2) == 1.0
    assert distinct_n("Hello there", 3) is None
    assert distinct_n("", 1) is None
    assert distinct_n("?!...", 1) is None  # punctuation only: no words at all
    # Fewer than 4 words: no 4-grams, so nothing repeats and the text is not degenerate.
    assert repeated_ngram_rate("No, no, no.") == 0.0
    assert not is_degenerate("No, no, no.")
    assert not is_degenerate("")
    # A short but coherent answer is not degenerate.
    assert not is_degenerate("Paris is the capital of France.")
    # Five words, all "yes": 4-grams (yes yes yes yes) x 2, the second repeats: 1/2.
    assert repeated_ngram_rate("Yes yes yes yes yes") == 1 / 2


def test_unicode_and_punctuation():
    # Case folds (É -> é) and punctuation only separates: café café café.
    assert words("Café, CAFÉ! café?") == ["café"] * 3
    assert distinct_n("Café, CAFÉ! café?", 1) == 1 / 3
    # Cyrillic lowercases too: привет мир привет мир -> bigrams (привет мир) (мир привет)
    # (привет мир): 2 distinct of 3.
    assert distinct_n("Привет мир, привет МИР", 2) == 2 / 3
    # A hyphenated token loop: i m i m i m i m (8 words); 4-grams (5): (i m i m) (m i m i)
    # (i m i m) (m i m i) (i m i m): 2 distinct, 3 repeats.
    assert words("I'm-I'm-I'm-I'm") == ["i", "m"] * 4
    assert repeated_ngram_rate("I'm-I'm-I'm-I'm", 4) == 3 / 5
    # Digits are words: "1. 1. 1. 1. 1." is five "1"s; 4-grams (2), one repeat.
    assert repeated_ngram_rate("1. 1. 1. 1. 1.") == 1 / 2
    # Punctuation and spacing do not change the counts.
    assert repeated_ngram_rate("sorry... sorry!!!  sorry???\nsorry sorry") == \
        repeated_ngram_rate("sorry sorry sorry sorry sorry")


def test_threshold_sits_between_hand_counted_rates():
    # Seven different words, then the first four again: 11 words, 8 4-grams, one of which
    # (a b c d) repeats: 1/8 = 0.125.
    below = "alpha bravo charlie delta echo foxtrot golf alpha bravo charlie delta"
    # Six different words, then the first four again: 10 words, 7 4-grams, one repeat: 1/7.
    above = "alpha bravo charlie delta echo foxtrot alpha bravo charlie delta"
    assert repeated_ngram_rate(below) == 1 / 8
    assert repeated_ngram_rate(above) == 1 / 7
    assert not is_degenerate(below)
    assert is_degenerate(above)
    assert 1 / 8 < degeneracy.DEGENERATE_REPEATED_4GRAM_RATE <= 1 / 7


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_order_is_refused(n):
    with pytest.raises(ValueError, match="n-gram order"):
        distinct_n("some words here", n)
    with pytest.raises(ValueError, match="n-gram order"):
        repeated_ngram_rate("some words here", n)
