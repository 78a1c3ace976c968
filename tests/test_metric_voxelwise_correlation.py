"""The shipped ``evaluate`` metric module: loads by path offline, numbers equal numpy's by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wav2brain.metrics.voxelwise_correlation import METRIC_PATH

# two subjects; subject "b" has fewer voxels (its rows are shorter), values exact in float32
A_PRED = [[1.0, 2.0, 0.0], [2.0, 1.0, 1.0], [3.0, 4.0, 0.0], [4.0, 3.0, 2.0]]
A_REF = [[1.0, 1.0, 3.0], [2.0, 2.0, 0.0], [4.0, 3.0, 1.0], [3.0, 4.0, 0.0]]
B_PRED = [[0.5, 1.0], [1.5, 0.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0]]
B_REF = [[1.0, 0.0], [1.0, 1.0], [2.0, 2.0], [2.5, 0.0], [3.0, 3.0]]

LOAD = """
import json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access in an offline test")
socket.socket.connect = refuse
socket.create_connection = refuse
import evaluate
metric = evaluate.load(sys.argv[1])
answers = {}
for name, case in json.loads(sys.argv[2]).items():
    try:
        answers[name] = metric.compute(**case)
    except ValueError as error:
        answers[name] = {"error": str(error)}
print(json.dumps(answers))
"""


def numpy_summary(pred, ref) -> dict[str, float]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    r = np.array([np.corrcoef(pred[:, j], ref[:, j])[0, 1] for j in range(pred.shape[1])])
    return {"mean": r.mean(), "median": np.median(r), "top10_mean": r.max()}  # 10 % of <10 = 1


SHUFFLED = [A_PRED[i] for i in (2, 0, 3, 1)]
CASES = {
    "hand": {
        "predictions": A_PRED + B_PRED,
        "references": A_REF + B_REF,
        "subjects": ["a"] * 4 + ["b"] * 5,
    },
    "shuffled": {"predictions": SHUFFLED, "references": A_REF},
    "mismatched": {"predictions": [[1, 2, 3], [1, 2], [3, 4, 5]], "references": A_REF[:3]},
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict:
    """Every case computed by the metric loaded in a fresh, offline interpreter (one start)."""
    tmp_path = tmp_path_factory.mktemp("metric")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HOME": str(tmp_path / "home"),
    }
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(METRIC_PATH), json.dumps(CASES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _padded(rows):
    width = max(len(r) for r in rows)
    return np.array([list(r) + [0.0] * (width - len(r)) for r in rows])


def test_loads_offline_and_equals_numpy(answers):
    scores = answers["hand"]
    expected = {"a": numpy_summary(A_PRED, A_REF), "b": numpy_summary(B_PRED, B_REF)}
    for subject, summary in expected.items():
        for key, value in summary.items():
            assert scores["per_subject"][subject][key] == pytest.approx(value, abs=1e-6)
    for key in ("mean", "median", "top10_mean"):
        pooled = np.mean([expected["a"][key], expected["b"][key]])
        assert scores[key] == pytest.approx(pooled, abs=1e-6)
    assert scores["per_subject"]["b"]["n_voxels"] == 2  # the padding column is left out
    from wav2brain.metrics.voxelwise import voxelwise_scores

    case = CASES["hand"]
    direct = voxelwise_scores(
        _padded(case["predictions"]), _padded(case["references"]), subjects=case["subjects"]
    )
    assert scores["fraction_significant"] == pytest.approx(direct["fraction_significant"])


def test_negative_control_a_shuffled_prediction_scores_differently(answers):
    scores = answers["shuffled"]
    assert scores["mean"] != pytest.approx(numpy_summary(A_PRED, A_REF)["mean"], abs=1e-3)
    assert scores["mean"] == pytest.approx(numpy_summary(SHUFFLED, A_REF)["mean"], abs=1e-6)


def test_rows_that_do_not_match_are_refused(answers):
    assert answers["mismatched"] == {
        "error": "row 1: 2 predicted voxels but 3 measured ones; each prediction row must "
        "match its reference row"
    }


def test_the_folder_is_an_evaluate_module_that_imports_the_installed_package():
    from evaluate.loading import get_imports

    script = METRIC_PATH / "voxelwise_correlation.py"
    assert script.is_file()
    imports = {(kind, name) for kind, name, _, _ in get_imports(str(script))}
    # evaluate checks library imports before loading: a missing wav2brain is a clear ImportError
    assert ("library", "wav2brain") in imports
    assert not [name for kind, name in imports if kind != "library"]  # nothing to fetch
