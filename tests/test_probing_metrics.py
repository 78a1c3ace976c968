"""Probing metrics on hand-made cases: PER/WER, EER against known values, intervals over seeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from wav2brain.probing.metrics import (
    accuracy,
    confidence_interval,
    equal_error_rate,
    error_rate,
    paired_difference,
)


def test_error_rate_counts_edits_over_reference_tokens():
    # one substitution (b -> x) and one deletion (d): 2 / 4
    assert error_rate(["a b c d"], ["a x c"]) == pytest.approx(0.5)
    # corpus level: (1 sub + 1 del) + (1 ins) over 4 + 2 reference tokens
    assert error_rate(["a b c d", "e f"], ["a x c", "e f g"]) == pytest.approx(3 / 6)
    assert error_rate(["ə ɪ t", "h ɛ l oʊ"], ["ə ɪ t", "h ɛ l oʊ"]) == 0.0
    assert error_rate(["the cat sat"], [""]) == pytest.approx(1.0)  # all deleted
    # extra whitespace is not a token
    assert error_rate(["a  b"], [" a b "]) == 0.0


def test_error_rate_negative_control_and_bad_input():
    assert error_rate(["a b c d"], ["a b c e"]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no token"):
        error_rate(["a b", " "], ["a b", "c"])
    with pytest.raises(ValueError, match="as many hypotheses"):
        error_rate(["a b"], [])


def test_equal_error_rate_hand_made_cases():
    # targets 0.9 0.8 0.3, non-targets 0.7 0.2 0.1: at threshold 0.5, one target of three is
    # rejected and one non-target of three accepted: EER 1/3
    targets = [True, True, True, False, False, False]
    assert equal_error_rate(targets, [0.9, 0.8, 0.3, 0.7, 0.2, 0.1]) == pytest.approx(1 / 3)
    assert equal_error_rate(targets, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == 0.0
    # negative control: scores that rank the pairs the wrong way round
    assert equal_error_rate(targets, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == 1.0


def test_equal_error_rate_matches_the_gaussian_value():
    # scores N(d, 1) for targets and N(0, 1) for non-targets: EER = Phi(-d / 2)
    rng = np.random.default_rng(0)
    d, n = 2.0, 20_000
    scores = np.concatenate([rng.normal(d, 1, n), rng.normal(0, 1, n)])
    targets = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    assert equal_error_rate(targets, scores) == pytest.approx(stats.norm.cdf(-d / 2), abs=0.006)
    # uninformative scores: about one half
    assert equal_error_rate(targets, rng.normal(size=2 * n)) == pytest.approx(0.5, abs=0.01)


def test_equal_error_rate_bad_input():
    with pytest.raises(ValueError, match="both target and non-target"):
        equal_error_rate([True, True], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        equal_error_rate([True, False], [np.nan, 0.2])
    with pytest.raises(ValueError, match="one length"):
        equal_error_rate([True, False], [0.1])


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError):
        accuracy([], [])


def test_confidence_interval_is_student_t():
    values = np.array([0.8, 0.9, 1.0])
    interval = confidence_interval(values)
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
    assert interval.mean == pytest.approx(0.9)
    assert (interval.low, interval.high) == pytest.approx((0.9 - half, 0.9 + half))
    single = confidence_interval([0.5])
    assert single.mean == 0.5 and np.isnan(single.low) and np.isnan(single.half_width)


def test_paired_difference_zero_and_significant():
    a = [0.70, 0.72, 0.71]
    same, significant = paired_difference(a, a)
    assert (same.mean, same.low, same.high, significant) == (0.0, 0.0, 0.0, False)
    shifted, significant = paired_difference(a, [0.80, 0.83, 0.80])
    assert shifted.mean == pytest.approx(0.1) and significant
    noisy, significant = paired_difference(a, [0.60, 0.85, 0.72])
    assert not significant  # negative control: the interval covers zero
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(a, [0.1])
