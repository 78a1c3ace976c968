"""Ridge CV: wav2brain ``RidgeCV`` against himalaya ``RidgeCV`` on the same splits and alphas.

Simulated data: X [n_trs, n_features] Gaussian, Y = X W * snr + noise with a per-voxel SNR (so the
chosen alphas spread over the grid), TRs in equal runs, leave-one-run-out splits shared by both
estimators, criterion R² for both (himalaya ``score_func=r2_score``). himalaya runs on its torch
backend, the faster of its CPU backends here (its float32 SVD in numpy/OpenBLAS took 39 s for a
2400 x 3072 split, against 19 s in torch). Prints one JSON object and writes
``benchmarks/results/ridge.json`` (``ridge-quick.json`` with ``--quick``); ``ratio`` is himalaya's
time over wav2brain's (target >= 2.5).

Usage: ``python benchmarks/bench_ridge.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig:
    """Sizes of the benchmark (TRs, features, voxels) and its CV design."""

    n_trs: int = 3000
    n_features: int = 3072
    n_voxels: int = 20000
    n_alphas: int = 10
    n_runs: int = 5
    seed: int = 0


def simulate(config: BenchConfig) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Return X [T, F], Y [T, V] float32 and the run of each TR."""
    generator = torch.Generator().manual_seed(config.seed)
    X = torch.randn(config.n_trs, config.n_features, generator=generator)
    weights = torch.randn(config.n_features, config.n_voxels, generator=generator)
    snr = torch.logspace(-1.5, 0.5, config.n_voxels)[
        torch.randperm(config.n_voxels, generator=generator)
    ]
    Y = (X @ weights) * (snr / config.n_features**0.5)
    Y += torch.randn(config.n_trs, config.n_voxels, generator=generator)
    groups = np.repeat(np.arange(config.n_runs), config.n_trs // config.n_runs + 1)[: config.n_trs]
    return X, Y, groups


def main() -> None:
    """Run both estimators once and report times and agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="X 1000 x 512, Y 1000 x 2000")
    args = parser.parse_args()
    config = BenchConfig(n_trs=1000, n_features=512, n_voxels=2000) if args.quick else BenchConfig()

    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from himalaya.scoring import r2_score

    from wav2brain.encoding import RidgeCV, make_splits

    X, Y, groups = simulate(config)
    alphas = np.logspace(1, 6, config.n_alphas)
    splits = make_splits(config.n_trs, groups=groups, cv="groups")

    start = time.perf_counter()
    ours = RidgeCV(alphas=alphas, cv=splits, criterion="r2").fit(X, Y)
    ours_s = time.perf_counter() - start

    set_backend("torch")
    start = time.perf_counter()
    theirs = HimalayaRidgeCV(
        alphas=alphas,
        cv=splits,
        fit_intercept=True,
        solver_params={"score_func": r2_score, "warn": False},
    ).fit(X, Y)
    theirs_s = time.perf_counter() - start

    result = {
        "name": "ridge",
        "quick": args.quick,
        "peer": "himalaya.ridge.RidgeCV (torch backend, float32, score_func=r2_score)",
        "config": asdict(config),
        "n_splits": len(splits),
        "torch_threads": torch.get_num_threads(),
        "wav2brain_s": round(ours_s, 2),
        "himalaya_s": round(theirs_s, 2),
        "ratio": round(theirs_s / ours_s, 2),
        "same_alpha_fraction": float(
            torch.isclose(ours.best_alphas_.double(), theirs.best_alphas_.double()).float().mean()
        ),
        "max_cv_score_diff": float((ours.cv_scores_ - theirs.cv_scores_).abs().max()),
        "max_coef_diff_over_scale": float(
            (ours.coef_ - theirs.coef_).abs().max() / theirs.coef_.abs().max()
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ridge-quick" if args.quick else "ridge"
    temporary = RESULTS / f"{name}.json.tmp"
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, RESULTS / f"{name}.json")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
