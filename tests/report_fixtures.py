"""A whole study at the smallest size, made by the real commands into the run folder's layout.

:func:`make_study` runs simulate → prepare → extract → encode → selectivity → anchor (with
the planted clusters) → a few steps of the refinement recipe → extract and anchor the refined
model (compared with the base) → compare-models → make-probe-tasks (keyword spotting) → probe, as
``wav2brain <command>`` in this process, into the folders of interface A (TEAM.md), and writes
``study.json`` by hand as the study runner would. ``truth/truth.json`` holds interface B's rows
written here (the ground-truth command is another part of the project). Everything is SIMULATED.

:func:`shared_study` builds it once per test session, even across pytest-xdist workers (a file
lock in the session's shared temporary folder): about 25 s of CPU, 80 to 200 s of wall time on the
loaded 2-core machine.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRUTH = "bids/derivatives/ground_truth"

FIXTURE_TRUTH_CHECKS = [
    {
        "name": "encoding.recovery",
        "value": 0.93,
        "threshold": 0.8,
        "op": ">=",
        "passed": True,
        "description": "fixture row: planted voxels recovered within their ceiling interval",
        "issue": 8,
    },
    {
        "name": "anchoring.recall",
        "value": 0.4,
        "threshold": 0.9,
        "op": ">=",
        "passed": False,
        "description": "fixture row: planted AN-voxel pairs found at FDR",
        "issue": 9,
    },
]
"""Rows in the shape of interface B's ``checks`` (values made up for the rendering tests)."""


def study_steps(run: Path) -> dict[str, tuple[list[str], str]]:
    """Step id -> (argv of ``wav2brain``, output relative to ``run``), in study order."""
    truth = f"{run}/{TRUTH}"
    base = f"{truth}/model"
    dataset = f"{run}/dataset"
    return {
        "simulate": (["simulate", "--out", f"{run}/bids", "--size", "test"], "bids"),
        "prepare": (
            ["prepare", f"{run}/bids", "--out", dataset, "--mask", f"{truth}/brain_mask.nii.gz"]
            + ["--drift-order", "2", "--quiet"],
            "dataset",
        ),
        "extract:base": (
            ["extract", dataset, "--model", base, "--out", f"{run}/features/base"],
            "features/base",
        ),
        "encode:base": (
            ["encode", dataset, "--features", f"{run}/features/base"]
            + ["--out", f"{run}/encoding/base", "--alphas", "1", "10", "100", "1000"],
            "encoding/base",
        ),
        "selectivity:base": (
            ["selectivity", "--dataset", dataset, "--model", base]
            + ["--out", f"{run}/selectivity/base"],
            "selectivity/base",
        ),
        "anchor:base": (
            ["anchor", dataset, "--features", f"{run}/features/base", "--truth", truth]
            + ["--selectivity", f"{run}/selectivity/base", "--n-map-units", "1"]
            + ["--out", f"{run}/anchoring/base"],
            "anchoring/base",
        ),
        "refine": (
            ["train", str(REPO / "hf_configs" / "refine_sim.yaml")]
            + ["--model_name_or_path", base, "--dataset", dataset]
            + ["--voxel_selection", f"{truth}/clusters.nii.gz", "--output_dir", f"{run}/refine"]
            + ["--max_steps", "6", "--stage2_max_steps", "2", "--save_steps", "3"]
            + ["--logging_steps", "1", "--n_validation", "0", "--n_test", "1"]
            + ["--per_device_train_batch_size", "4"],
            "refine",
        ),
        "extract:refined": (
            ["extract", dataset, "--model", f"{run}/refine/export/backbone"]
            + ["--out", f"{run}/features/refined"],
            "features/refined",
        ),
        "anchor:refined": (
            ["anchor", dataset, "--features", f"{run}/features/refined", "--truth", truth]
            + ["--compare-with", f"{run}/anchoring/base", "--n-map-units", "1"]
            + ["--out", f"{run}/anchoring/refined"],
            "anchoring/refined",
        ),
        "compare": (
            ["compare-models", base, f"{run}/refine/export/model", "--labels", "base", "refined"]
            + ["--out", f"{run}/compare"],
            "compare",
        ),
        "probe_tasks": (
            ["make-probe-tasks", "--out", f"{run}/probe_tasks", "--size", "small"]
            + ["--tasks", "ks"],
            "probe_tasks",
        ),
        "probe": (
            ["probe", "--upstream", "fbank"]
            + ["--upstream", f"refined={run}/refine/export/backbone", "--tasks", "ks"]
            + ["--tasks-dir", f"{run}/probe_tasks", "--out", f"{run}/probe"]
            + ["--seeds", "0", "1", "--epochs", "2"],
            "probe",
        ),
    }


def write_study(run: Path, steps: dict[str, dict], simulated: bool = True) -> Path:
    """``run/study.json`` (interface A) listing ``steps`` (id -> record)."""
    record = {"format": 1, "name": "fixture", "simulated": simulated, "config": {}, "steps": steps}
    path = run / "study.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def make_study(run: Path) -> Path:
    """Run every step into ``run`` and write its ``study.json``; return ``run``."""
    import time

    from wav2brain.cli import main

    run.mkdir(parents=True, exist_ok=True)
    records = {}
    for step, (argv, out) in study_steps(run).items():
        start = time.perf_counter()
        status = main(argv)
        if status:
            raise RuntimeError(f"fixture step {step}: wav2brain {argv[0]} exited {status}")
        records[step] = {
            "step": argv[0],
            "command": ["wav2brain", *argv],
            "out": out,
            "digest": step,
            "seconds": round(time.perf_counter() - start, 3),
            "finished": "2026-12-01T15:00:00Z",
        }
    truth = run / "truth"
    truth.mkdir()
    checks = FIXTURE_TRUTH_CHECKS
    (truth / "truth.json").write_text(
        json.dumps(
            {"simulated": True, "passed": all(c["passed"] for c in checks), "checks": checks}
        )
    )
    records["check_simulated"] = {"step": "check-simulated", "command": [], "out": "truth"}
    write_study(run, records)
    return run


def shared_study(tmp_path_factory) -> Path:
    """The study of :func:`make_study`, built once per session across xdist workers."""
    import os

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    run = root / "report_study"
    with FileLock(str(root / "report_study.lock")):
        if not (run / "study.json").is_file():
            if run.exists():
                import shutil

                shutil.rmtree(run)
            make_study(run)
    return run
