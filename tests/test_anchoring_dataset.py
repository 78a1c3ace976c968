"""``anchor`` over a fabricated prepared dataset and feature cache (SIMULATED), end to end.

The fixture (tests/encoding_data.py) drives the first 12 of 24 voxels with ``layer_01``'s units;
``layer_02`` is noise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anchoring_fixtures import Parcellation
from encoding_data import design, write_prepared
from wav2brain.anchoring import AnchorConfig, CouplingConfig, anchor, compare_anchoring
from wav2brain.anchoring.dataset import UNIT_COLUMNS, check_features
from wav2brain.anchoring.profile import layer_profile, stage_summary
from wav2brain.encoding import runs as runs_module

LABELS = np.array([0] * 6 + [1] * 6 + [2] * 12)
ROIS = Parcellation("roi", ("auditory_a", "language_b", "other"), LABELS, "fixture")


def _config(**extra) -> AnchorConfig:
    coupling = CouplingConfig(max_lag_s=6.0, min_shift_s=6.0, n_permutations=19, top_k=3)
    return AnchorConfig(coupling=coupling, **{"n_map_units": 1, **extra})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchor")
    return write_prepared(root, design(["01", "02", "03"], ["a", "b"]), n_trs=80)


@pytest.fixture(scope="module")
def result(prepared, tmp_path_factory):
    dataset, cache = prepared
    out = tmp_path_factory.mktemp("anchored")
    return anchor(dataset, cache, out, _config(), parcellations=[ROIS], progress=False)


def test_anchor_end_to_end_finds_the_planted_layer(result):
    tables = result.tables()
    units, voxels = tables["units"], tables["voxels"]
    assert set(UNIT_COLUMNS) <= set(units.columns) and len(units) == 3 * 12
    assert {"roi", "roi_r", "roi_q", "best_voxel_roi", "p_null"} <= set(units.columns)
    numeric = units.select_dtypes("number")
    assert not numeric.isna().any().any() and not voxels.select_dtypes("number").isna().any().any()
    driven = voxels[voxels["voxel"] < 12]
    assert (driven["layer"] == "layer_01").all() and (driven["q"] <= 0.05).mean() >= 0.9
    noise = voxels[voxels["voxel"] >= 12]
    assert (noise["q"] <= 0.05).mean() <= 0.2
    per_layer = units.groupby("layer")["n_fdr"].sum()
    assert per_layer["layer_01"] > 10 * max(per_layer["layer_02"], 1)
    # top voxels of the planted units are driven voxels
    planted = units[units["layer"] == "layer_01"]
    assert np.mean([v < 12 for row in planted["top_voxels"] for v in row]) >= 0.9


def test_group_profile_maps_and_summary_are_written(result):
    tables = result.tables()
    group = tables["group"]
    assert len(group) == 12 and {"roi", "roi_group_t", "roi_replication"} <= set(group.columns)
    assert group["roi_n_subjects"].eq(3).all()
    planted = group[group["layer"] == "layer_01"]
    assert (planted["roi"] != "other").all() and (planted["roi_group_q"] <= 0.05).sum() >= 5
    profile = tables["profile"]
    assert set(profile["class"]) <= {"auditory", "higher_order", "other"}
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["group_subjects"] == ["01", "02", "03"]
    assert summary["stage"]["roi"]["layers"] == [1, 2]
    names = {p.name for p in result.maps}
    assert {"sub-01_best_layer.nii.gz", "sub-01_best_r.png", "profile.png"} <= names
    assert any(n.startswith("group_layer_01_unit-") and n.endswith("_t.nii.gz") for n in names)


def test_a_rerun_reads_no_bold(result, prepared, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("BOLD read on a rerun")

    monkeypatch.setattr(runs_module, "load_bold", refuse)
    dataset, cache = prepared
    again = anchor(dataset, cache, result.out, _config(), parcellations=[ROIS], progress=False)
    assert again.reused == ["01", "02", "03"] and again.analysed == []
    pd.testing.assert_frame_equal(again.tables()["units"], result.tables()["units"])


def test_results_of_another_statistics_version_are_recomputed(result, prepared, tmp_path):
    import shutil

    from wav2brain.anchoring import dataset as dataset_module

    out = tmp_path / "copy"
    shutil.copytree(result.out, out)
    dataset, cache = prepared
    same = anchor(dataset, cache, out, _config(), parcellations=[ROIS], progress=False)
    assert same.analysed == []  # negative control: the same rule reuses every subject
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset_module, "STATISTICS_VERSION", -1)
        again = anchor(dataset, cache, out, _config(), parcellations=[ROIS], progress=False)
    assert again.analysed == ["01", "02", "03"] and again.reused == []


def test_bad_input_is_refused_before_any_bold_is_read(prepared, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("BOLD read before the inputs were checked")

    monkeypatch.setattr(runs_module, "load_bold", refuse)
    dataset, cache = prepared
    wrong = Parcellation("roi", ("a",), np.zeros(23, int), "short atlas")
    with pytest.raises(
        ValueError, match="'short atlas' .* labels 23 voxels but sub-01's runs have 24"
    ):
        anchor(dataset, cache, tmp_path, _config(), parcellations=[wrong], progress=False)
    with pytest.raises(ValueError, match="--subjects"):
        anchor(dataset, cache, tmp_path, _config(), subjects=["09"], progress=False)
    with pytest.raises(ValueError, match="--layers '7' not in the feature cache"):
        anchor(dataset, cache, tmp_path, _config(layers=("7",)), progress=False)
    short = AnchorConfig(coupling=CouplingConfig(n_permutations=19, min_shift_s=90.0))
    with pytest.raises(ValueError, match="too short for circular shifts of at least 90 s"):
        anchor(dataset, cache, tmp_path, short, progress=False)
    with pytest.raises(ValueError, match="LAYER:UNIT"):
        AnchorConfig(units=("layer_01",))


def test_features_on_another_tr_grid_are_refused_naming_both():
    class Index:
        def entry_record(self, record):
            return {"grid": {"tr_s": 2.0}, "key": {"grid_config": {"method": "hrf"}}}

        def entry_path(self, record):
            return "cache/a/x.safetensors"

    class Record:
        key, tr = "01||a|1|a", 1.5

    with pytest.raises(ValueError, match=r"TR 1.5 s but its features .* 2.0-s grid"):
        check_features([Record()], Index())


def test_subjects_with_other_stories_are_left_out_of_the_group(tmp_path, caplog):
    runs = design(["01", "02"], ["a", "b"]) + design(["03"], ["a", "c"])
    dataset, cache = write_prepared(tmp_path, runs, n_trs=80)
    with caplog.at_level(logging.WARNING):
        result = anchor(
            dataset,
            cache,
            tmp_path / "out",
            _config(maps=False),
            parcellations=[ROIS],
            progress=False,
        )
    assert "subjects ['03'] heard other stories" in caplog.text
    assert result.tables()["group"]["roi_n_subjects"].eq(2).all()


def test_group_maps_refused_across_voxel_spaces(tmp_path, caplog):
    runs = design(["01"], ["a", "b"]) + design(["02"], ["a", "b"], mask="other_mask.nii.gz")
    dataset, cache = write_prepared(tmp_path, runs, n_trs=80)
    with caplog.at_level(logging.WARNING):
        result = anchor(
            dataset, cache, tmp_path / "out", _config(), parcellations=[ROIS], progress=False
        )
    assert "group maps of the chosen ANs refused" in caplog.text
    assert not any(p.name.startswith("group_") for p in result.maps)
    assert result.group is not None  # combined at region level


def test_layer_profile_finds_the_auditory_peak_and_the_takeover():
    rows = []
    shares = {1: (0.2, 0.0), 2: (0.6, 0.1), 3: (0.3, 0.2), 4: (0.1, 0.5)}
    for layer, (auditory, higher) in shares.items():
        for unit in range(10):
            region = (
                "A1" if unit < auditory * 10 else "DMN" if unit < (auditory + higher) * 10 else "V1"
            )
            rows.append(("group", "network", f"layer_{layer:02d}", unit, region, region != "V1"))
    anchored = pd.DataFrame(
        rows, columns=["source", "family", "layer", "unit", "region", "significant"]
    )
    profile = layer_profile(anchored, r"a1", r"dmn")
    stage = stage_summary(profile, anchored["layer"].unique())["network"]
    assert stage["peak_auditory_layer"] == 2 and stage["takeover_layer"] == 4
    np.testing.assert_allclose(stage["auditory_share"], [0.2, 0.6, 0.3, 0.1])
    # negative control: without higher-order anchoring there is no takeover
    anchored.loc[anchored["region"] == "DMN", "significant"] = False
    stage = stage_summary(layer_profile(anchored, r"a1", r"dmn"), anchored["layer"].unique())
    assert stage["network"]["takeover_layer"] is None


def test_compare_before_and_after(result, prepared, tmp_path):
    dataset, cache = prepared
    after = anchor(
        dataset,
        cache,
        tmp_path / "after",
        _config(layers=("2",), maps=False),
        parcellations=[ROIS],
        progress=False,
    )
    regions, layers = compare_anchoring(result.out, after.out)
    first = regions[regions["layer"] == "layer_01"]
    assert (first["share_after"] == 0).all() and (first["change"] < 0).any()
    np.testing.assert_allclose(first["change"], -first["share_before"])
    same, _ = compare_anchoring(result.out, result.out)
    assert (same["change"] == 0).all()
    other = anchor(
        dataset, cache, tmp_path / "other", _config(maps=False), subjects=["01"], progress=False
    )
    with pytest.raises(ValueError, match="compare runs over the same subjects"):
        compare_anchoring(result.out, other.out)


def test_cli_anchor_and_compare(prepared, tmp_path, capsys):
    from safetensors.numpy import load_file

    from wav2brain.cli import main

    dataset, cache = prepared
    base = ["anchor", str(dataset), "--features", str(cache), "--max-lag-s", "6", "--no-maps"]
    assert main([*base, "--out", str(tmp_path / "a"), "--save-matrix", "--layers", "1"]) == 0
    assert "3 subjects anchored" in capsys.readouterr().out
    matrix = load_file(str(tmp_path / "a" / "matrices" / "sub-01_layer_01.safetensors"))["r"]
    assert matrix.dtype == np.float16 and matrix.shape == (6, 24)
    out = tmp_path / "b"
    assert main([*base, "--out", str(out), "--compare-with", str(tmp_path / "a")]) == 0
    layers = pd.read_parquet(out / "compare_layers.parquet")
    assert layers["layer"].tolist() == ["layer_01", "layer_02"]
    assert (out / "compare.png").is_file()
    assert main([*base, "--out", str(out), "--alpha", "0.5"]) == 2
    assert "CouplingConfig.alpha" in capsys.readouterr().err


def test_cli_atlas_labels_every_voxel_and_refuses_bad_paths(prepared, tmp_path, capsys):
    import nibabel as nib

    from wav2brain.cli import main

    dataset, cache = prepared
    mask = nib.load(str(dataset / "mask.nii.gz"))
    inside = np.asarray(mask.dataobj) > 0
    atlas = np.zeros(mask.shape, dtype=np.int16)
    atlas[inside] = LABELS + 1
    nib.save(nib.Nifti1Image(atlas, mask.affine), tmp_path / "atlas.nii.gz")
    labels = tmp_path / "atlas.tsv"
    labels.write_text("index\tname\n1\tauditory_a\n2\tlanguage_b\n3\tother\n")
    base = ["anchor", str(dataset), "--features", str(cache), "--max-lag-s", "6", "--no-maps"]
    atlas_args = ["--atlas", str(tmp_path / "atlas.nii.gz"), "--atlas-labels", str(labels)]
    assert main([*base, "--out", str(tmp_path / "a"), "--layers", "1", *atlas_args]) == 0
    units = pd.read_parquet(tmp_path / "a" / "units.parquet")
    assert set(units["roi"]) | set(units["best_voxel_roi"]) <= {"auditory_a", "language_b", "other"}
    assert units["best_voxel_roi"].isin(["auditory_a", "language_b"]).mean() >= 0.9  # planted
    capsys.readouterr()
    missing = ["--atlas", str(tmp_path / "nope.nii.gz")]
    assert main([*base, "--out", str(tmp_path / "b"), *missing]) == 2
    assert "nope.nii.gz: no such file" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--networks", "pca:3"]) == 2
    assert "pca" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_profile_classes_regions_by_their_parcellation_stage_before_their_name():
    from wav2brain.anchoring.profile import region_class

    patterns = (AnchorConfig().auditory, AnchorConfig().higher_order)
    assert region_class("left_heschl_envelope", *patterns) == "auditory"  # by name
    assert region_class("right_heschl_unit", *patterns) == "auditory"
    stages = {"right_heschl_unit": "higher-order", "net03": "auditory"}
    assert region_class("right_heschl_unit", *patterns, stages) == "higher_order"
    assert region_class("net03", *patterns, stages) == "auditory"
    assert region_class("net04", *patterns, stages) == "other"  # no stage, no matching name


def test_selectivity_joins_every_anchored_an_or_names_what_is_missing(result, tmp_path):
    import shutil

    from wav2brain.anchoring.selectivity import add_selectivity

    out = Path(shutil.copytree(result.out, tmp_path / "anchored"))
    units = pd.read_parquet(out / "units.parquet")
    ans = units[["layer", "tensor", "unit"]].drop_duplicates()
    layer = [int(str(v).rsplit("_", 1)[1]) for v in ans["layer"]]
    table = pd.DataFrame(
        {"layer": layer, "tensor": ans["tensor"].to_numpy(), "unit": ans["unit"].to_numpy()}
    )
    table["psi_max"] = np.arange(len(table))
    table["best_class"] = "fricative"
    selectivity = tmp_path / "sel"
    selectivity.mkdir()
    table.to_parquet(selectivity / "units.parquet")
    written = add_selectivity(out, selectivity)
    assert {p.name for p in written} == {"units.parquet", "group.parquet"}
    joined = pd.read_parquet(out / "units.parquet")
    assert len(joined) == len(units) and not joined["sel_psi_max"].isna().any()
    first = joined[
        (joined["layer"] == ans["layer"].iloc[0]) & (joined["unit"] == ans["unit"].iloc[0])
    ]
    assert (first["sel_psi_max"] == 0).all() and (first["sel_best_class"] == "fricative").all()
    add_selectivity(out, selectivity)  # again: replaces, never duplicates the columns
    assert list(pd.read_parquet(out / "units.parquet").columns) == list(joined.columns)
    table[table["layer"] == 1].to_parquet(selectivity / "units.parquet")
    with pytest.raises(ValueError, match=r"no selectivity for the ANs of .*2\)"):
        add_selectivity(out, selectivity)
