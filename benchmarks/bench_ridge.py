"""Ridge CV: wav2brain ``RidgeCV`` against himalaya ``RidgeCV`` on the same splits and alphas.

Simulated data per shape: X [n_trs, n_features] Gaussian, Y = X W * snr + noise with a per-voxel
SNR (so the chosen alphas spread over the grid), TRs in equal runs, group folds over runs shared
by both estimators, criterion R² for both (himalaya ``score_func=r2_score``). himalaya runs on
its torch backend, the faster of its CPU backends here (its float32 SVD in numpy/OpenBLAS took
39 s for a 2400 x 3072 split, against 19 s in torch). Shapes cover both sides of ridge: more
features than training TRs (dual: kernel side) and fewer (primal), with short and long
held-out folds.

Figures per shape
-----------------
``speedup``: himalaya's fit time over wav2brain's (both full ``RidgeCV.fit``: CV and refit).

``fraction_of_mm``: the fit's own multiply-adds per second over the ``torch.mm`` rate, both in
this run. The multiply-adds are those of the algorithm wav2brain runs on this shape
(:func:`wav2brain.encoding.ridge.cv_multiply_adds` plus
:func:`~wav2brain.encoding.ridge.solve_multiply_adds` for the refit with the alphas it chose):
every matrix product (Gram matrices counted as their symmetric half), each eigendecomposition as
5/3 d³ (LAPACK ``syevd``'s Householder reduction, 2/3 d³, and eigenvector back-transformation, d³;
its tridiagonal divide and conquer is not counted, so the count is a lower bound of the work),
the QR of the moments evaluation, the per-alpha held-out products and the refit's projections.
Element-wise work (centring, the reductions to scores) and copies are not counted.
``himalaya_fraction_same_count`` divides the same count by himalaya's time, so the two
fractions compare times, not algorithms. The ``torch.mm`` rate is that of ``X @ W`` ([n_trs,
n_features] @ [n_features, n_voxels], float32, all torch threads), measured before, between and
after the two fits; the median is used and all three are reported.

The machine is shared: the load average (``os.getloadavg``) is printed with every time, and the
two estimators run interleaved in one process. Prints one JSON object and writes
``benchmarks/results/ridge.json`` (``ridge-quick.json`` with ``--quick``).

Usage: ``python benchmarks/bench_ridge.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Shape:
    """One benchmark problem: TRs, features, voxels, runs (group folds) and its CV design."""

    label: str
    n_trs: int
    n_features: int
    n_voxels: int
    n_runs: int
    n_folds: int = 5
    n_alphas: int = 10
    seed: int = 0


FULL = (
    Shape("features > TRs", n_trs=3000, n_features=3072, n_voxels=10000, n_runs=5),
    Shape("features < TRs, short folds", n_trs=3000, n_features=768, n_voxels=10000, n_runs=5),
    Shape("features < TRs, long folds", n_trs=8000, n_features=768, n_voxels=10000, n_runs=25),
)
QUICK = (
    Shape("features > TRs", n_trs=800, n_features=1536, n_voxels=3000, n_runs=5),
    Shape("features < TRs, short folds", n_trs=1500, n_features=384, n_voxels=3000, n_runs=5),
    Shape("features < TRs, long folds", n_trs=3000, n_features=256, n_voxels=3000, n_runs=15),
)


def simulate(shape: Shape) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Return X [T, F], Y [T, V] float32 and the run of each TR."""
    generator = torch.Generator().manual_seed(shape.seed)
    X = torch.randn(shape.n_trs, shape.n_features, generator=generator)
    weights = torch.randn(shape.n_features, shape.n_voxels, generator=generator)
    snr = torch.logspace(-1.5, 0.5, shape.n_voxels)[
        torch.randperm(shape.n_voxels, generator=generator)
    ]
    Y = (X @ weights) * (snr / shape.n_features**0.5)
    Y += torch.randn(shape.n_trs, shape.n_voxels, generator=generator)
    groups = np.repeat(np.arange(shape.n_runs), shape.n_trs // shape.n_runs + 1)[: shape.n_trs]
    return X, Y, groups


def mm_rate(X: torch.Tensor, n_voxels: int) -> float:
    """Multiply-adds per second of ``X @ W`` with W [n_features, n_voxels] (best of two)."""
    W = torch.randn(X.shape[1], n_voxels)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        torch.mm(X, W)
        best = min(best, time.perf_counter() - start)
    return X.shape[0] * X.shape[1] * n_voxels / best


def load() -> float:
    """One-minute load average of the machine."""
    return round(os.getloadavg()[0], 2)


def bench_shape(shape: Shape) -> dict:
    """Fit both estimators on one shape, interleaved with ``torch.mm`` rate measurements."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from himalaya.scoring import r2_score

    from wav2brain.encoding import RidgeCV, make_splits
    from wav2brain.encoding.ridge import cv_multiply_adds, solve_multiply_adds

    X, Y, groups = simulate(shape)
    alphas = np.logspace(1, 6, shape.n_alphas)
    splits = make_splits(shape.n_trs, groups=groups, cv=shape.n_folds)
    set_backend("torch")
    rates, loads = [mm_rate(X, shape.n_voxels)], {"start": load()}

    start = time.perf_counter()
    ours = RidgeCV(alphas=alphas, cv=splits, criterion="r2").fit(X, Y)
    ours_s = time.perf_counter() - start
    loads["wav2brain"] = load()
    rates.append(mm_rate(X, shape.n_voxels))

    start = time.perf_counter()
    theirs = HimalayaRidgeCV(
        alphas=alphas,
        cv=splits,
        fit_intercept=True,
        solver_params={"score_func": r2_score, "warn": False},
    ).fit(X, Y)
    theirs_s = time.perf_counter() - start
    loads["himalaya"] = load()
    rates.append(mm_rate(X, shape.n_voxels))

    rate = statistics.median(rates)
    per_alpha = list(Counter(ours.best_alphas_.tolist()).values())
    count = cv_multiply_adds(
        shape.n_trs, shape.n_features, splits, shape.n_alphas, shape.n_voxels
    ) + solve_multiply_adds(
        shape.n_trs, shape.n_features, per_alpha, gram=shape.n_trs > shape.n_features
    )
    return {
        "shape": asdict(shape),
        "n_train": [len(train) for train, _ in splits],
        "load_average": loads,
        "wav2brain_s": round(ours_s, 2),
        "himalaya_s": round(theirs_s, 2),
        "speedup": round(theirs_s / ours_s, 2),
        "multiply_adds": count,
        "mm_rates_gmacs": [round(r / 1e9, 1) for r in rates],
        "fraction_of_mm": round(count / ours_s / rate, 3),
        "himalaya_fraction_same_count": round(count / theirs_s / rate, 3),
        "same_alpha_fraction": float(
            torch.isclose(ours.best_alphas_.double(), theirs.best_alphas_.double()).float().mean()
        ),
        "max_cv_score_diff": float((ours.cv_scores_ - theirs.cv_scores_).abs().max()),
        "max_coef_diff_over_scale": float(
            (ours.coef_ - theirs.coef_).abs().max() / theirs.coef_.abs().max()
        ),
    }


def main() -> None:
    """Benchmark every shape and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes (about a minute)")
    args = parser.parse_args()
    shapes = [bench_shape(shape) for shape in (QUICK if args.quick else FULL)]
    result = {
        "name": "ridge",
        "quick": args.quick,
        "peer": "himalaya.ridge.RidgeCV (torch backend, float32, score_func=r2_score)",
        "torch_threads": torch.get_num_threads(),
        "min_speedup": min(shape["speedup"] for shape in shapes),
        "min_fraction_of_mm": min(shape["fraction_of_mm"] for shape in shapes),
        "shapes": shapes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ridge-quick" if args.quick else "ridge"
    temporary = RESULTS / f"{name}.json.tmp"
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, RESULTS / f"{name}.json")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
