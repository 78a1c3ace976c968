"""Synthetic series for the anchoring tests (SIMULATED): HRF-smoothed ANs, AR(1) voxels, planted pairs.

``Parcellation`` mirrors the fields of ``wav2brain.anchoring.networks.Parcellation`` (TEAM.md
interface 1) that anchoring reads, until that module is merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TR = 2.0


@dataclass(frozen=True)
class Parcellation:
    kind: str
    names: tuple[str, ...]
    labels: np.ndarray
    source: str


def hrf_kernel(tr: float = TR) -> np.ndarray:
    """SPM-like double-gamma HRF sampled every ``tr`` s over 30 s (unit sum)."""
    from scipy import stats

    t = np.arange(0, 30, tr)
    h = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    return h / h.sum()


def hrf_smoothed(rng, n: int, columns: int, tr: float = TR) -> np.ndarray:
    """White noise convolved with the HRF: [n, columns] (lag-1 autocorrelation near 0.8)."""
    from scipy.signal import lfilter

    burn = 20
    return lfilter(hrf_kernel(tr), [1.0], rng.standard_normal((n + burn, columns)), axis=0)[burn:]


def ar1(rng, n: int, columns: int, phi: float = 0.7) -> np.ndarray:
    """Independent AR(1) series [n, columns] with coefficient ``phi``."""
    from scipy.signal import lfilter

    burn = 50
    return lfilter([1.0], [1.0, -phi], rng.standard_normal((n + burn, columns)), axis=0)[burn:]


def planted(rng, n: int, n_ans: int, n_voxels: int, n_pairs: int, r: float = 0.35):
    """ANs, voxels and a bool [ANs, voxels] truth of planted pairs (some voxels driven by two).

    Each driven voxel is AR(1) noise plus its ANs scaled so that each planted r is about ``r``.
    """
    x = hrf_smoothed(rng, n, n_ans)
    x /= x.std(0)
    y = ar1(rng, n, n_voxels)
    y /= y.std(0)
    truth = np.zeros((n_ans, n_voxels), dtype=bool)
    voxels = rng.choice(n_voxels, size=n_pairs, replace=False)
    for i, voxel in enumerate(voxels):
        truth[rng.integers(n_ans), voxel] = True
        if i % 5 == 0:  # some voxels driven by two ANs
            truth[rng.integers(n_ans), voxel] = True
    gain = r / np.sqrt(1 - 2 * r * r)
    y = y + gain * (x @ truth)
    return x, y, truth
