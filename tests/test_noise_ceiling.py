"""Noise ceilings (repeats: CCmax; subjects: leave one out) and the known-ceiling check."""

from __future__ import annotations

import numpy as np
import pytest

from wav2brain.encoding.layers import EncodingConfig, encode
from wav2brain.encoding.noise_ceiling import (
    ceiling_agreement,
    ceiling_test,
    combine_tests,
    effective_samples,
    loso_ceiling,
    repeat_ceiling,
    select_voxels,
    signal_power,
    significant,
    split_half,
)
from wav2brain.metrics.autocorrelation import autocorrelation


def repeats(n_repeats: int, n_trs: int, noise_sd: np.ndarray, seed: int = 0) -> np.ndarray:
    """Unit-variance signal plus independent noise of ``noise_sd`` per voxel: [R, T, V]."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n_trs, len(noise_sd)))
    return signal[None] + noise_sd * rng.standard_normal((n_repeats, n_trs, len(noise_sd)))


def test_repeat_ceiling_recovers_the_true_ceiling():
    noise_sd = np.array([0.5, 1.0, 2.0, 4.0])
    data = repeats(10, 20000, noise_sd)
    single = repeat_ceiling(data, target="single")
    mean = repeat_ceiling(data, target="mean")
    np.testing.assert_allclose(single, 1 / np.sqrt(1 + noise_sd**2), atol=0.02)
    np.testing.assert_allclose(mean, 1 / np.sqrt(1 + noise_sd**2 / 10), atol=0.02)
    power, _, _ = signal_power(data)
    np.testing.assert_allclose(power, 1.0, atol=0.1)


def test_repeat_ceiling_is_zero_without_signal_and_for_constant_voxels():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((6, 2000, 20))
    data[:, :, 0] = 3.0
    ceiling = repeat_ceiling(data, target="single")
    assert ceiling[0] == 0
    assert ceiling.max() < 0.15  # sqrt of a noisy, mostly clipped signal power


def test_loso_ceiling_equals_explicit_correlations():
    data = repeats(4, 200, np.array([1.0, 3.0]), seed=2)
    per_subject, mean = loso_ceiling(data)
    for s in range(4):
        others = np.delete(data, s, axis=0).mean(0)
        for v in range(2):
            expected = np.corrcoef(data[s, :, v], others[:, v])[0, 1]
            assert per_subject[s, v] == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(mean, per_subject.mean(0))
    assert mean[0] > mean[1]


def test_select_voxels():
    mask = select_voxels(np.array([0.5, 0.05, np.nan, 0.2]), threshold=0.1)
    assert mask.tolist() == [True, False, False, True]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: repeat_ceiling(np.zeros((10, 3))), "must be \\[repeats, TRs, voxels\\]"),
        (lambda: repeat_ceiling(np.zeros((1, 10, 3))), "at least 2 repeats, got 1"),
        (lambda: repeat_ceiling(np.zeros((2, 2, 3))), "at least 3 TRs"),
        (lambda: repeat_ceiling(np.full((2, 5, 3), np.nan)), "NaN"),
        (lambda: repeat_ceiling(np.zeros((2, 5, 3)), target="both"), "target must be"),
        (lambda: loso_ceiling(np.zeros((1, 10, 3))), "at least 2 subjects"),
        (lambda: select_voxels(np.zeros((2, 2)), 0.1), "must be 1-D"),
        (lambda: select_voxels(np.zeros(2), 1.5), "threshold must be in"),
        (
            lambda: ceiling_agreement(np.zeros(3), np.zeros(2), np.zeros(3, bool), 100),
            "share one 1-D shape",
        ),
        (lambda: effective_samples(np.zeros((10, 2)), np.zeros((10, 2)), 10), "max_lag must be in"),
        (lambda: effective_samples(np.zeros((10, 2)), np.zeros((10, 3))), "share one"),
        (lambda: effective_samples(np.zeros((4, 2)), np.zeros((4, 2))), "at least 5 TRs"),
        (lambda: ceiling_test(np.zeros(3), np.zeros(2)), "share one shape"),
        (lambda: combine_tests([np.zeros(3)], []), "one n_eff per r"),
        (lambda: significant(np.zeros(3), alpha=0.5), "alpha must be in"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def ar1(shape, phi: float, seed: int) -> np.ndarray:
    """AR(1) noise along axis -2 (TRs) with coefficient ``phi`` and unit innovations."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape)
    out = np.empty_like(noise)
    out[..., 0, :] = noise[..., 0, :]
    for t in range(1, shape[-2]):
        out[..., t, :] = phi * out[..., t - 1, :] + noise[..., t, :]
    return out


def test_autocorrelation_and_effective_samples_of_ar1_noise():
    x = ar1((4000, 50), 0.6, seed=0)
    rho = autocorrelation([x], 3)[1:]
    np.testing.assert_allclose(rho.mean(1), [0.6, 0.36, 0.216], atol=0.03)
    # Bartlett: n_eff = n (1 - phi^2) / (1 + phi^2) for two independent AR(1) series
    n_eff = effective_samples(x, ar1((4000, 50), 0.6, seed=1), max_lag=40)
    assert np.median(n_eff) == pytest.approx(4000 * 0.64 / 1.36, rel=0.1)
    white = effective_samples(
        *(np.random.default_rng(s).standard_normal((400, 50)) for s in (2, 3))
    )
    assert np.median(white) == pytest.approx(400, rel=0.1)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_noise_only_ceilings_pass_the_test_at_its_nominal_level(phi):
    """Negative control: no shared signal, so about alpha of the voxels pass at level alpha.

    Its own negative control: with the plain TR count instead of the autocorrelation-corrected
    one, autocorrelated noise passes far more often than the nominal level.
    """
    repeats = ar1((2, 300, 3000), phi, seed=4)
    r, n_eff = split_half(repeats)
    passed = significant(ceiling_test(r, n_eff), alpha=0.05).mean()
    assert 0.03 < passed < 0.07
    naive = significant(ceiling_test(r, np.full_like(r, 300.0)), alpha=0.05).mean()
    if phi >= 0.5:
        assert naive > 0.09
    # CCmax is biased upwards without signal: a positive mean, many above the old 0.1 cut
    ceiling = repeat_ceiling(repeats, target="single")
    assert ceiling.mean() > 0.08 and (ceiling > 0.1).mean() > 0.35


def test_real_ceilings_pass_and_tests_combine_over_stories():
    signal = ar1((1, 200, 40), 0.5, seed=5)[0]
    repeats = signal[None] + 2.0 * ar1((2, 200, 40), 0.5, seed=6)  # r about 0.2
    r, n_eff = split_half(repeats)
    one = ceiling_test(r, n_eff)
    assert significant(one).mean() > 0.5
    combined = combine_tests([r, r], [n_eff, n_eff])  # twice the data: sqrt(2) times the z
    np.testing.assert_allclose(combined, np.sqrt(2) * one, rtol=1e-6)
    np.testing.assert_allclose(combine_tests([r, np.full_like(r, np.nan)], [n_eff, n_eff]), one)


def test_held_out_r_reaches_a_known_ceiling_and_noise_stays_at_chance():
    """SIMULATED: Y = X w + noise, so each voxel's ceiling is corr(X w, Y) on the held-out data."""
    rng = np.random.default_rng(3)
    n_trs, n_driven, n_noise = 1500, 30, 60
    X = rng.standard_normal((n_trs, 8)).astype(np.float32)
    signal = X @ rng.standard_normal((8, n_driven))
    signal /= signal.std(0)
    target_ceiling = np.linspace(0.3, 0.9, n_driven)
    noise_sd = np.sqrt(1 / target_ceiling**2 - 1)
    Y = np.concatenate(
        [
            signal + noise_sd * rng.standard_normal((n_trs, n_driven)),
            rng.standard_normal((n_trs, n_noise)),
        ],
        axis=1,
    ).astype(np.float32)
    groups = np.repeat(np.arange(5), n_trs // 5)
    true_ceiling = np.zeros(n_driven + n_noise)
    true_ceiling[:n_driven] = [
        np.mean([np.corrcoef(signal[groups == g, v], Y[groups == g, v])[0, 1] for g in range(5)])
        for v in range(n_driven)
    ]
    scores = encode(
        X, Y, groups, EncodingConfig(alphas=tuple(np.logspace(-1, 4, 6)), standardize=True)
    )
    driven = np.arange(n_driven + n_noise) < n_driven
    check = ceiling_agreement(scores.r, true_ceiling, driven, n_trs=n_trs // 5)
    assert check["passed"], check
    assert check["driven_max_gap"] < 0.05
    wrong = ceiling_agreement(scores.r, true_ceiling + 0.2 * driven, driven, n_trs=n_trs // 5)
    assert not wrong["passed"]
