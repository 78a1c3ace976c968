"""Frames (50 Hz) onto the TR grid: nilearn's compute_regressor as the HRF oracle, HuthLab's
Lanczos formula as the FIR oracle, streaming == one shot, stimulus grids == run grids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wav2brain.features.hrf import FrameToTRResampler, HRFKernel, frames_to_trs, resample_frames
from wav2brain.features.resample import (
    BandedSampler,
    TRGrid,
    TRGridConfig,
    align_to_run,
    factorize,
    grid_phase,
    lanczos,
    row_offset,
    run_grid,
    stimulus_grid,
)

FS = 50.0
EVENTS = (
    (2.0, 1.0, 1.0),
    (20.0, 0.5, 2.0),
    (40.1, 5.0, -1.0),
    (80.0, 0.2, 3.0),
    (120.0, 30.0, 0.5),
)
"""(onset s, duration s, amplitude) in stimulus time, on 20-ms frame boundaries."""


def boxcar_frames(duration_s: float = 200.0) -> np.ndarray:
    """The sum of EVENTS as a frame signal [frames, 1] (frame i covers [i, i+1) / FS s)."""
    frames = np.zeros((round(duration_s * FS), 1), np.float32)
    for onset, duration, amplitude in EVENTS:
        frames[round(onset * FS) : round((onset + duration) * FS), 0] += amplitude
    return frames


@pytest.mark.parametrize(
    ("tr", "onset", "hrf_model"),
    [
        (1.5, 0.0, "glover"),
        (1.52, 3.3, "glover"),
        (2.0, -4.1, "glover"),
        (2.0, 7.77, "spm"),
        (1.52, 10.0, "spm"),
    ],
)
def test_hrf_sampling_matches_nilearn_compute_regressor(tr, onset, hrf_model):
    from nilearn.glm.first_level import compute_regressor

    n_trs = 150
    ours = frames_to_trs(boxcar_frames(), FS, tr, n_trs, onset, hrf_model=hrf_model)[:, 0]
    condition = np.array(
        [[o + onset for o, _, _ in EVENTS], [d for _, d, _ in EVENTS], [a for _, _, a in EVENTS]]
    )
    # nilearn's default oversampling (50 per TR, 30-40 ms) snaps onsets and shifts its gamma by one
    # step, errors of ~1 % of the peak by itself; 400 per TR (4-5 ms) makes it a sharp oracle.
    reference, _ = compute_regressor(condition, hrf_model, np.arange(n_trs) * tr, oversampling=400)
    reference = reference[:, 0]
    assert ours.shape == (n_trs,) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 0.01 * np.abs(reference).max()


def test_slice_time_reference_samples_mid_tr_like_nilearn():
    from nilearn.glm.first_level import compute_regressor

    tr, n_trs = 2.0, 120
    ours = resample_frames(boxcar_frames(), FS, tr, n_trs, 5.0, TRGridConfig(), reference_s=1.0)
    ours = ours[:, 0]
    condition = np.array(
        [[o + 5.0 for o, _, _ in EVENTS], [d for _, d, _ in EVENTS], [a for _, _, a in EVENTS]]
    )
    reference, _ = compute_regressor(
        condition, "glover", (np.arange(n_trs) + 0.5) * tr, oversampling=400
    )
    assert np.abs(ours - reference[:, 0]).max() < 0.01 * np.abs(reference).max()


def test_constant_input_reaches_its_value_and_nothing_precedes_the_stimulus():
    frames = np.full((3000, 2), 3.0, np.float32)
    out = frames_to_trs(frames, FS, 1.5, 60, onset_s=9.0)
    assert np.all(out[:7] == 0.0)  # TRs 0..6 are sampled at or before the onset (9 s)
    np.testing.assert_allclose(out[35:40], 3.0, rtol=2e-3)  # > 32 s after the onset


def test_hrf_kernel_is_nilearns_and_integrates_to_one():
    from nilearn.glm.first_level import spm_hrf

    kernel = HRFKernel("spm", 0.01)
    np.testing.assert_allclose(kernel.cumulative(np.array([-1.0, 40.0])), [0.0, 1.0])
    direct = spm_hrf(t_r=0.01, oversampling=1)
    np.testing.assert_allclose(
        np.diff(kernel.cumulative((np.arange(11) + 0.5) * 0.01)), direct[1:11]
    )


def huthlab_lanczosinterp2d(data, oldtime, newtime, window=3, cutoff_mult=1.0):
    """HuthLab's lanczosinterp2D, written out row by row as in interpdata.py."""
    cutoff = 1 / np.mean(np.diff(newtime)) * cutoff_mult
    sincmat = np.zeros((len(newtime), len(oldtime)))
    for ndi in range(len(newtime)):
        t = (newtime[ndi] - oldtime) * cutoff
        with np.errstate(divide="ignore", invalid="ignore"):
            val = window * np.sin(np.pi * t) * np.sin(np.pi * t / window) / (np.pi**2 * t**2)
        val[t == 0] = 1.0
        val[np.abs(t) > window] = 0.0
        sincmat[ndi] = val
    return sincmat @ data


@pytest.mark.parametrize(("tr", "onset", "cutoff_mult"), [(1.5, 0.0, 1.0), (1.52, 3.3, 0.8)])
def test_lanczos_matches_huthlab_formula(tr, onset, cutoff_mult):
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((1500, 4)).astype(np.float32)
    config = TRGridConfig(method="fir", delays=(0,), lanczos_cutoff_mult=cutoff_mult)
    ours = resample_frames(frames, FS, tr, 25, onset, config)
    newtime = run_grid(tr, onset, 25).times()
    oldtime = (np.arange(1500) + 0.5) / FS
    reference = huthlab_lanczosinterp2d(
        frames.astype(np.float64), oldtime, newtime, cutoff_mult=cutoff_mult
    )
    scale = cutoff_mult / tr / FS  # our normalisation: weights times cutoff / frame rate
    np.testing.assert_allclose(ours, reference * scale, atol=1e-5 * np.abs(reference * scale).max())
    assert lanczos(np.array([0.0, tr * 3.01]), 1 / tr, 3).tolist() == [1.0, 0.0]


def test_average_is_the_exact_mean_over_the_centred_tr_window():
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((600, 3)).astype(np.float32)
    config = TRGridConfig(method="fir", downsample="average", delays=(0,))
    out = resample_frames(frames, FS, 2.0, 6, 0.0, config, reference_s=1.0)
    expected = frames.reshape(6, 100, 3).mean(axis=1)  # TR k acquires [2k, 2k + 2) s
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # half a frame: fractional weights
    shifted = resample_frames(frames, FS, 2.0, 6, 0.01, config, reference_s=1.0)
    np.testing.assert_allclose(
        shifted[1],
        0.5 * frames[99] / 100 + frames[100:199].mean(0) * 0.99 + 0.5 * frames[199] / 100,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "config",
    [
        TRGridConfig(),
        TRGridConfig(hrf_model="spm", oversampling=4),
        TRGridConfig(method="fir"),
        TRGridConfig(method="fir", downsample="average", delays=(0, 2)),
    ],
)
@pytest.mark.parametrize("block_frames", [37, None])
def test_streaming_blocks_equal_one_shot(config, block_frames):
    rng = np.random.default_rng(2)
    frames = {
        "a": rng.standard_normal((4000, 5)).astype(np.float32),
        "b": rng.standard_normal((4000, 3)).astype(np.float32),
    }
    grid = run_grid(1.52, 4.4, 70)
    whole = FrameToTRResampler(dataclasses.replace(config, rank_tolerance=0.0), grid, FS).run(
        [(0, frames)]
    )
    resampler = FrameToTRResampler(config, grid, FS, block_frames=block_frames)
    pieces, start, max_pending = {"a": [], "b": []}, 0, 0
    for size in (1, 250, 999, 1750, 1000):  # blocks cut across the sampler's own sub-blocks
        for name, rows in resampler.push(
            start, {k: v[start : start + size] for k, v in frames.items()}
        ).items():
            pieces[name].append(rows)
        start += size
        max_pending = max(max_pending, resampler.pending_rows)
    for name, rows in resampler.finish().items():
        pieces[name].append(rows)
    for name in frames:
        streamed = np.concatenate(pieces[name])
        assert streamed.shape == (70, frames[name].shape[1])
        np.testing.assert_allclose(streamed, whole[name], atol=1e-5)
    reach = resampler.support_s[1] - resampler.support_s[0]
    assert max_pending <= reach / 1.52 + 1750 / FS / 1.52 + 3  # never the whole story


@pytest.mark.parametrize("method", ["hrf", "fir"])
@pytest.mark.parametrize(("tr", "onsets"), [(1.5, (0.0, 3.0, 16.5, -6.0)), (1.52, (2.2, 5.24))])
def test_stimulus_grid_aligned_to_runs_equals_direct_run_sampling(method, tr, onsets):
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((2000, 4)).astype(np.float32)
    config = TRGridConfig(method=method, delays=(1, 3))
    phases = {grid_phase(tr, onset) for onset in onsets}
    assert len(phases) == 1  # these onsets differ by whole TRs: one stimulus grid serves all
    resampler = FrameToTRResampler(config, TRGrid(tr, 0.0, 1), FS)
    grid = stimulus_grid(tr, phases.pop(), 2000 / FS, resampler.support_s)
    rows = FrameToTRResampler(config, grid, FS).run([(0, {"x": frames})])["x"]
    for onset in onsets:
        run = run_grid(tr, onset, 50)
        direct = resample_frames(frames, FS, tr, 50, onset, config)
        aligned = align_to_run(rows, grid, run, config.delays if method == "fir" else None)
        np.testing.assert_allclose(aligned, direct, atol=1e-5)
    with pytest.raises(ValueError, match="not on the stimulus grid"):
        row_offset(grid, run_grid(tr + 0.02, onsets[0], 50))
    with pytest.raises(ValueError, match="not on the stimulus grid"):
        row_offset(grid, run_grid(tr, onsets[0] + 0.3, 50))


def test_fir_delays_are_whole_tr_shifts_delay_major():
    rng = np.random.default_rng(4)
    frames = rng.standard_normal((1000, 2)).astype(np.float32)
    base = resample_frames(frames, FS, 2.0, 30, 10.0, TRGridConfig(method="fir", delays=(0,)))
    stacked = resample_frames(frames, FS, 2.0, 30, 10.0, TRGridConfig(method="fir", delays=(1, 4)))
    assert stacked.shape == (30, 4)
    np.testing.assert_array_equal(stacked[1:, :2], base[:-1])
    np.testing.assert_array_equal(stacked[4:, 2:], base[:-4])
    assert np.all(stacked[:1, :2] == 0) and np.all(stacked[:4, 2:] == 0)


def test_factorised_blocks_match_the_exact_dense_product():
    rng = np.random.default_rng(5)
    frames = rng.standard_normal((6000, 6)).astype(np.float32)
    exact = resample_frames(frames, FS, 1.5, 90, 2.0, TRGridConfig(rank_tolerance=0.0))
    fast = resample_frames(frames, FS, 1.5, 90, 2.0, TRGridConfig())
    np.testing.assert_allclose(fast, exact, atol=1e-5 * np.abs(exact).max())
    sampler = BandedSampler(
        HRFKernel("glover", 1 / 800), run_grid(1.5, 2.0, 120), FS, rank_tolerance=1e-7
    )
    assert sampler.block_frames == 150 and sampler.repeats
    sampler.push(0, {"x": frames})
    ((left, right),) = sampler._factors.values()  # one for all 40 blocks (no grid edge)
    assert left is not None and right.shape[0] < 16 and right.shape[1] == 150
    assert not BandedSampler(HRFKernel("glover", 0.01), run_grid(1.49, 0.0, 9), FS).repeats


def test_factorize_keeps_box_kernels_dense_and_bounds_the_error():
    rng = np.random.default_rng(6)
    box = np.kron(np.eye(10), np.ones((1, 15)))  # an average per TR: full rank
    left, right = factorize(box, 1e-7)
    assert left is None and np.array_equal(right, box.astype(np.float32))
    smooth = np.exp(-((np.arange(20)[:, None] - np.arange(200)[None, :] / 10) ** 2) / 50)
    left, right = factorize(smooth, 1e-7)
    assert left is not None and left.shape[1] < 20
    x = rng.standard_normal(200)
    assert np.abs(left @ (right @ x) - smooth @ x).max() < 1e-5 * np.abs(smooth @ x).max()
    assert factorize(smooth, 0.0)[0] is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "conv"}, "method"),
        ({"hrf_model": "fir"}, "hrf_model"),
        ({"oversampling": 0}, "oversampling"),
        ({"oversampling": 2.5}, "oversampling"),
        ({"downsample": "sinc"}, "downsample"),
        ({"delays": ()}, "delays"),
        ({"delays": (1, 1)}, "delays"),
        ({"delays": (-1,)}, "delays"),
        ({"hrf_length_s": 0}, "hrf_length_s"),
        ({"lanczos_cutoff_mult": 0}, "lanczos_cutoff_mult"),
    ],
)
def test_bad_config_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"TRGridConfig.{field}"):
        TRGridConfig(**kwargs)


def test_bad_timing_and_blocks_are_refused():
    frames = np.zeros((100, 2), np.float32)
    with pytest.raises(ValueError, match="TR must be a positive"):
        frames_to_trs(frames, FS, 0.0, 10, 0.0)
    with pytest.raises(ValueError, match="onset must be a finite"):
        frames_to_trs(frames, FS, 1.5, 10, float("nan"))
    with pytest.raises(ValueError, match="frame rate must be a positive"):
        frames_to_trs(frames, 0.0, 1.5, 10, 0.0)
    with pytest.raises(ValueError, match=r"frames must be \[frames, units\]"):
        frames_to_trs(np.zeros(100), FS, 1.5, 10, 0.0)
    with pytest.raises(ValueError, match="number of TRs must be >= 0"):
        frames_to_trs(frames, FS, 1.5, -1, 0.0)
    resampler = FrameToTRResampler(TRGridConfig(), run_grid(1.5, 0.0, 10), FS)
    with pytest.raises(ValueError, match="no frames were pushed"):
        resampler.finish()
    resampler.push(0, {"x": frames})
    with pytest.raises(ValueError, match="expected start frame 100, got 50"):
        resampler.push(50, {"x": frames})
    with pytest.raises(ValueError, match="unit counts changed"):
        resampler.push(100, {"x": np.zeros((10, 3), np.float32)})
    with pytest.raises(ValueError, match="equal frames"):
        resampler.push(100, {"x": frames, "y": np.zeros((5, 2), np.float32)})
    with pytest.raises(ValueError, match="block_frames"):
        BandedSampler(HRFKernel("glover", 0.01), run_grid(1.5, 0.0, 10), FS, block_frames=0)
    with pytest.raises(ValueError, match="grid phase"):
        stimulus_grid(1.5, 1.5, 10.0, (0.0, 32.0))
