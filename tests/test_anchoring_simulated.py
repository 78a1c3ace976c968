"""SIMULATED dataset-level check of anchoring: simulate -> prepare -> extract -> ``anchor``.

The simulator plants units of its model's two layers and three tensors on voxel clusters
(:func:`wav2brain.simulation.truth.planted_pairs`). One feature cache per tensor (extraction
with its default chunking, which computes exactly the planted units), one ``anchor`` per cache
with ``top_k`` above the voxel count, so every AN x voxel test is in ``units.parquet``
(``top_voxels``, ``top_z``) and a test is rejected at FDR 0.05 when its ``|z|`` reaches the
subject's BH cutoff (``summary.json``: ``fdr_z``).

False discoveries: rejections on voxels that carry no planted signal, i.e. voxels absent from
the truth's ``voxels.tsv`` (pure noise). A rejection of unit B on a voxel planted on unit A is
not counted false: the planted units correlate with each other at TR level (median ``|r|``
about 0.3), so such a voxel is truly coupled with B; nor are rejections on voxels driven by the
envelope or phoneme / word onsets, which the ANs carry too.

Sizing (measured, 2 subjects, 2 stories of 90 s heard twice, 12-mm grid, 1,084 voxels, about
45 s on 2 loaded cores): the simulator's quadratic drift (``drift_order=2``) is removed by
``prepare --drift-order 2``; prepare's automatic order (1 for runs under 150 s) leaves it in both
the BOLD and the cleaned features, and the null ``z`` of noise voxels then has an SD of 1.5
(66-88 % of the rejections on noise voxels). With the drift removed, the null SD was 1.041 under
Bartlett's variance of the raw autocorrelations and is 1.001-1.003 with the drift-corrected
variance (:class:`wav2brain.anchoring.significance.ResidualAutocorrelation`). Recall is still
under its target at this size (see :func:`test_planted_pairs_recall_and_false_discoveries`); the
demo-size version, where both targets are met, is marked slow. The scoring and its thresholds
are :mod:`wav2brain.reports.ground_truth`'s, the ones ``wav2brain check-simulated`` applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wav2brain.anchoring import AnchorConfig, CouplingConfig, anchor, couple
from wav2brain.cli import main
from wav2brain.reports.ground_truth import (
    ANCHOR_FDP_TARGET,
    ANCHOR_NOISE_SHARE_MAX,
    ANCHOR_RECALL_MIN,
    pair_scores,
    planted_layers_found,
    rejected_pairs,
)
from wav2brain.simulation import GROUND_TRUTH_DIR, SimulationConfig, simulate_dataset
from wav2brain.simulation.truth import planted_pairs

TENSORS = ("hidden_states", "attention_output", "ffn_intermediate")
CONFIG = SimulationConfig(story_duration_s=90.0, n_runs_per_story=2)
ALPHA = 0.05


def _anchored(root: Path, config: SimulationConfig) -> dict:
    """simulate -> prepare (drift order of the simulator) -> extract and anchor each tensor."""
    bids = simulate_dataset(root / "bids", config)
    truth = bids / GROUND_TRUTH_DIR
    dataset = root / "dataset"
    prepare = ["prepare", str(bids), "--out", str(dataset), "--quiet"]
    mask = ["--mask", str(truth / "brain_mask.nii.gz")]
    assert main([*prepare, *mask, "--drift-order", str(config.drift_order)]) == 0
    results = {}
    for tensor in TENSORS:
        cache = root / f"features_{tensor}"
        model = ["--model", str(truth / "model"), "--out", str(cache), "--tensor", tensor]
        assert main(["extract", str(dataset), *model]) == 0
        settings = AnchorConfig(coupling=CouplingConfig(top_k=10**6, alpha=ALPHA), maps=False)
        results[tensor] = (cache, anchor(dataset, cache, root / f"anchor_{tensor}", settings))
    driven = set(pd.read_csv(truth / "voxels.tsv", sep="\t")["voxel"])
    return {"truth": truth, "dataset": dataset, "results": results, "driven": driven}


@pytest.fixture(scope="module")
def anchored(tmp_path_factory) -> dict:
    return _anchored(tmp_path_factory.mktemp("anchor_sim"), CONFIG)


@pytest.fixture(scope="module")
def anchored_demo(tmp_path_factory) -> dict:
    return _anchored(tmp_path_factory.mktemp("anchor_demo"), SimulationConfig.from_size("demo"))


def all_scores(anchored) -> dict:
    pairs = planted_pairs(anchored["truth"])
    table = {}
    for tensor, (_, result) in anchored["results"].items():
        rejected = rejected_pairs(result.out)
        for subject, own in rejected.groupby("subject"):
            planted = pairs[pairs["tensor"] == tensor]
            table[tensor, subject] = pair_scores(planted, own, anchored["driven"])
    return table


@pytest.mark.xfail(
    strict=True,
    reason="issue 9 recall target unmet at test size (measured): recall 0.50-0.90 per tensor "
    "and subject (power: 294 TRs); 1.6-4.5 % of rejections on noise voxels (met; null z SD "
    "1.001-1.003 on noise voxels)",
)
def test_planted_pairs_recall_and_false_discoveries(anchored):
    for (tensor, subject), (recall, false) in all_scores(anchored).items():
        assert recall >= ANCHOR_RECALL_MIN, (tensor, subject, recall)
        assert false <= ANCHOR_FDP_TARGET, (tensor, subject, false)


def test_hidden_state_pairs_are_recalled(anchored):
    """What holds today: the hidden-state units' pairs are found (regression guard)."""
    table = all_scores(anchored)
    for subject in ("001", "002"):
        recall, false = table["hidden_states", subject]
        assert recall >= ANCHOR_RECALL_MIN and false <= ANCHOR_NOISE_SHARE_MAX, (subject, recall)


def test_time_reversed_features_recall_nothing(anchored):
    """Negative control: each run's AN responses reversed in time keep their autocorrelation
    and lose their alignment with the BOLD; the planted pairs are no longer found, while the
    same call on the true responses finds them."""
    from wav2brain.encoding.runs import (
        FeatureIndex,
        SubjectData,
        read_cleaning,
        read_responses,
        subject_runs,
    )

    dataset = anchored["dataset"]
    cache, _ = anchored["results"]["hidden_states"]
    index, cleaning = FeatureIndex(cache), read_cleaning(dataset)
    records = subject_runs(read_responses(dataset), ["001"])["001"]
    data = SubjectData.load("001", records)
    pairs = planted_pairs(anchored["truth"])
    pairs = pairs[pairs["tensor"] == "hidden_states"]
    config = CouplingConfig(keep_matrix=True, alpha=ALPHA)
    layers = sorted(pairs["layer"].unique())
    features = {layer: data.features(index, f"layer_{layer:02d}", cleaning) for layer in layers}
    reversed_ = {layer: values.copy() for layer, values in features.items()}
    for values in reversed_.values():
        for a, b in zip(data.starts[:-1], data.starts[1:], strict=True):
            values[a:b] = values[a:b][::-1]
    recalls = []
    for given in (features, reversed_):
        stacked = np.concatenate([given[layer] for layer in layers], axis=1)
        coupling = couple(stacked, data.bold, data.starts, records[0].tr, config)
        cutoff, _ = coupling.fdr()
        threshold = coupling.grid.thresholds[cutoff] if cutoff < coupling.grid.n_bins else np.inf
        width = given[layers[0]].shape[1]
        rows = [
            layers.index(layer) * width + unit
            for layer, unit in zip(pairs["layer"], pairs["unit"], strict=True)
        ]
        recalls.append(float(np.mean(np.abs(coupling.z[rows, pairs["voxel"]]) >= threshold)))
    assert recalls[0] >= ANCHOR_RECALL_MIN and recalls[1] <= 0.2, recalls


def test_profile_finds_the_planted_layer_of_each_cluster(anchored):
    """Per cluster planted on one layer of a tensor, most of its voxels' best AN is in that layer
    (the simulator's layers differ: largest canonical correlation 0.88)."""
    assert_planted_layers(anchored)


def assert_planted_layers(anchored) -> None:
    pairs = planted_pairs(anchored["truth"])
    checked = 0
    for tensor, (_, result) in anchored["results"].items():
        found = planted_layers_found(pairs[pairs.tensor == tensor], result.tables()["voxels"])
        assert found["found"].all(), (tensor, found.to_dict("records"))
        checked += len(found)
    assert checked >= 8


def pooled(anchored) -> tuple[float, float]:
    """Recall over every planted pair of every subject, and the share of all rejections that
    fall on noise voxels."""
    pairs = planted_pairs(anchored["truth"])
    found = planted = false = reported = 0
    for tensor, (_, result) in anchored["results"].items():
        rejected = rejected_pairs(result.out)
        own = pairs[pairs["tensor"] == tensor]
        for _, mine in rejected.groupby("subject"):
            hit = own.merge(mine, on=["layer", "unit", "voxel"], how="inner")
            found, planted = found + len(hit), planted + len(own)
            false += int((~mine["voxel"].isin(anchored["driven"])).sum())
            reported += len(mine)
    return found / planted, false / reported


@pytest.mark.slow
def test_demo_size_recall(anchored_demo):
    """Demo size (4 subjects, 3 stories of 4 min heard twice, 8-mm grid, 182 planted pairs):
    measured recall 0.85-1.0 per tensor and subject, 0.94 pooled."""
    recall, _ = pooled(anchored_demo)
    assert recall >= ANCHOR_RECALL_MIN, recall
    for (tensor, subject), (own, _) in all_scores(anchored_demo).items():
        assert own >= 0.8, (tensor, subject, own)


@pytest.mark.slow
def test_demo_size_false_discoveries(anchored_demo):
    _, false = pooled(anchored_demo)
    assert false <= ANCHOR_FDP_TARGET, false


@pytest.mark.slow
def test_demo_size_profile_finds_the_planted_layers(anchored_demo):
    assert_planted_layers(anchored_demo)
