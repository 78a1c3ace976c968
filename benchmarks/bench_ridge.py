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
:func:`~wav2brain.encoding.ridge.solve_multiply_adds` for the refit with the alphas it chose),
each counted once, as the algorithm needs it:

- every matrix product, a Gram matrix as its symmetric half (``n (n + 1) / 2 * d``), float32
  and float64 alike: on the dual side the float64 Gram of all rows once, each split's held-out
  cross-Gram times the eigenvectors, and the refit's ``X^T U``; on the primal side each
  split's and the refit's ``X^T X`` and ``V^T X^T``;
- each eigendecomposition as 5/3 d³ (LAPACK ``syevd``'s Householder reduction, 2/3 d³, and
  eigenvector back-transformation, d³; its tridiagonal divide and conquer is not counted, so
  the count is a lower bound of the work), once even when a float32 attempt is redone in
  float64 (the redone work is not counted);
- the QR of the moments evaluation (``rank² (n_val - rank / 3)``);
- each split's held-out evaluation, in the order the solver picks (predictions: ``[n_alphas
  (n_val + 1), rank] @ [rank, n_train] @ Y``; moments: ``Z = right Y``, ``Q~^T y~`` and
  ``R diag(w) z`` for every alpha), and the refit's per-alpha products and intercepts.

Element-wise work (centring, scaling, the reductions that turn products into scores), gathers
of Y's rows and copies are not counted. ``himalaya_fraction_same_count`` divides the same count
by himalaya's time, so the two fractions compare times, not algorithms.

The ``torch.mm`` rate is that of ``X @ W`` ([n_trs, n_features] @ [n_features, n_voxels],
float32, all torch threads), run repeatedly for at least ``--mm-seconds`` (total multiply-adds
over total time, not the best of short bursts, which on a shared machine catches its quiet
moments) right before and right after each fit; each fit is divided by the mean of the two
rates that bracket it. Our fit is repeated ``--repeats`` times (himalaya once): the median
fraction is reported with every repeat's.

The machine is shared: the load average (``os.getloadavg``) is printed with every time, and the
two estimators run interleaved in one process. Prints one JSON object and writes
``benchmarks/results/ridge.json`` (``ridge-quick.json`` with ``--quick``).

Usage: ``python benchmarks/bench_ridge.py [--quick] [--repeats N] [--shapes I ...]``.
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


def mm_rate(X: torch.Tensor, n_voxels: int, seconds: float) -> float:
    """Multiply-adds per second of ``X @ W``, W [n_features, n_voxels], over ``seconds`` or more.

    At least two products after one warm-up; the total multiply-adds over the total time.
    """
    W = torch.randn(X.shape[1], n_voxels)
    out = torch.mm(X, W)
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        torch.mm(X, W, out=out)
        count += 1
    return count * X.shape[0] * X.shape[1] * n_voxels / (time.perf_counter() - start)


def load() -> float:
    """One-minute load average of the machine."""
    return round(os.getloadavg()[0], 2)


def bench_shape(shape: Shape, repeats: int, mm_seconds: float, peer: bool = True) -> dict:
    """Fit both estimators on one shape, each fit bracketed by ``torch.mm`` rate measurements."""
    from wav2brain.encoding import RidgeCV, make_splits

    X, Y, groups = simulate(shape)
    alphas = np.logspace(1, 6, shape.n_alphas)
    splits = make_splits(shape.n_trs, groups=groups, cv=shape.n_folds)
    rates, loads, times = [mm_rate(X, shape.n_voxels, mm_seconds)], [load()], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = RidgeCV(alphas=alphas, cv=splits, criterion="r2").fit(X, Y)
        times.append(time.perf_counter() - start)
        loads.append(load())
        rates.append(mm_rate(X, shape.n_voxels, mm_seconds))
    figures = _figures(shape, splits, ours, times, rates, loads)
    if not peer:
        return figures

    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from himalaya.scoring import r2_score

    set_backend("torch")
    start = time.perf_counter()
    theirs = HimalayaRidgeCV(
        alphas=alphas,
        cv=splits,
        fit_intercept=True,
        solver_params={"score_func": r2_score, "warn": False},
    ).fit(X, Y)
    theirs_s = time.perf_counter() - start
    loads.append(load())
    rates.append(mm_rate(X, shape.n_voxels, mm_seconds))
    return {
        **figures,
        "himalaya_s": round(theirs_s, 2),
        "speedup": round(theirs_s / statistics.median(times), 2),
        "himalaya_fraction_same_count": round(
            figures["multiply_adds"] / theirs_s / ((rates[-2] + rates[-1]) / 2), 3
        ),
        "same_alpha_fraction": float(
            torch.isclose(ours.best_alphas_.double(), theirs.best_alphas_.double()).float().mean()
        ),
        "max_cv_score_diff": float((ours.cv_scores_ - theirs.cv_scores_).abs().max()),
        "max_coef_diff_over_scale": float(
            (ours.coef_ - theirs.coef_).abs().max() / theirs.coef_.abs().max()
        ),
    }


def _figures(shape: Shape, splits, ours, times: list, rates: list, loads: list) -> dict:
    """Our figures on one shape: times, the multiply-add count and fractions of the mm rate.

    ``rates`` and ``loads`` are lists the caller may extend afterwards (himalaya's fit).
    """
    from wav2brain.encoding.ridge import cv_multiply_adds, solve_multiply_adds

    per_alpha = list(Counter(ours.best_alphas_.tolist()).values())
    count = cv_multiply_adds(
        shape.n_trs, shape.n_features, splits, shape.n_alphas, shape.n_voxels
    ) + solve_multiply_adds(
        shape.n_trs, shape.n_features, per_alpha, gram=shape.n_trs > shape.n_features
    )
    fractions = [
        count / seconds / ((rates[i] + rates[i + 1]) / 2) for i, seconds in enumerate(times)
    ]
    return {
        "shape": asdict(shape),
        "n_train": [len(train) for train, _ in splits],
        "load_average_before_and_after_each_fit": loads,
        "wav2brain_s": [round(t, 2) for t in times],
        "multiply_adds": count,
        "mm_rates_gmacs": rates,
        "fractions_of_mm": [round(f, 3) for f in fractions],
        "fraction_of_mm": round(statistics.median(fractions), 3),
    }


def main() -> None:
    """Benchmark every shape and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes (about a minute)")
    parser.add_argument("--repeats", type=int, default=3, help="fits of ours per shape (3)")
    parser.add_argument(
        "--mm-seconds", type=float, default=3.0, help="duration of each torch.mm rate (s, 3)"
    )
    parser.add_argument(
        "--shapes", type=int, nargs="+", help="indices of the shapes to run (default all)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads for every fit and product (default torch's)"
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip himalaya (fractions of the mm rate only)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = QUICK if args.quick else FULL
    chosen = [chosen[i] for i in args.shapes] if args.shapes else list(chosen)
    shapes = [
        bench_shape(shape, args.repeats, args.mm_seconds, peer=not args.no_peer) for shape in chosen
    ]
    for shape in shapes:
        shape["mm_rates_gmacs"] = [round(r / 1e9, 1) for r in shape["mm_rates_gmacs"]]
    result = {
        "name": "ridge",
        "quick": args.quick,
        "peer": "himalaya.ridge.RidgeCV (torch backend, float32, score_func=r2_score)",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "min_speedup": None if args.no_peer else min(shape["speedup"] for shape in shapes),
        "min_fraction_of_mm": min(shape["fraction_of_mm"] for shape in shapes),
        "shapes": shapes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ridge-quick" if args.quick else "ridge"
    if args.shapes:
        name += "-shapes-" + "-".join(str(i) for i in args.shapes)
    if args.threads:
        name += f"-threads-{args.threads}"
    if args.no_peer:
        name += "-no-peer"
    temporary = RESULTS / f"{name}.json.tmp"
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, RESULTS / f"{name}.json")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
