"""Dataset-level encoding (``wav2brain.encoding.dataset``) on fabricated prepared data (SIMULATED)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from encoding_data import design, write_prepared
from wav2brain.encoding import runs as runs_module
from wav2brain.encoding.dataset import (
    SCORE_COLUMNS,
    EncodeConfig,
    encode_dataset,
    layer_number,
    loso_groups,
    select_layers,
)
from wav2brain.encoding.layers import EncodingConfig, encode
from wav2brain.encoding.runs import FeatureIndex, SubjectData, read_responses

FAST = EncodingConfig(alphas=(1.0, 100.0), inner_cv=2)
STORIES = ("a", "b", "c")


def config(**changes) -> EncodeConfig:
    return EncodeConfig(**{"encoding": FAST, "maps": False, **changes})


@pytest.fixture
def no_bold(monkeypatch):
    """Make any BOLD read fail (proves that a step works from metadata alone)."""

    def refuse(*args, **kwargs):
        raise AssertionError("BOLD was read")

    monkeypatch.setattr(runs_module, "load_bold", refuse)


def test_single_story_and_single_run_subjects_are_skipped_not_fatal(tmp_path, caplog):
    runs = design(["01", "02"], STORIES)
    runs += design(["solo"], ["a"], repeats=2)  # one story, two runs
    runs += design(["once"], ["b"])  # one run
    dataset, cache = write_prepared(tmp_path, runs)
    with caplog.at_level(logging.WARNING):
        result = encode_dataset(dataset, cache, tmp_path / "out", config(), progress=False)
    assert result.fitted == ["01", "02"]
    skipped = pd.read_parquet(result.skipped)
    assert skipped.set_index("subject")["n_runs"].to_dict() == {"solo": 2, "once": 1}
    reasons = skipped.set_index("subject")["reason"]
    assert "one story" in reasons["solo"] and "test-retest" in reasons["solo"]
    assert "one run" in reasons["once"]
    assert "sub-solo skipped" in caplog.text and "sub-once skipped" in caplog.text
    scores = pd.read_parquet(result.scores)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert set(scores["subject"]) == {"01", "02"} and set(scores["cv_kind"]) == {"stories"}

    allowed = encode_dataset(
        dataset, cache, tmp_path / "runs", config(allow_run_folds=True), progress=False
    )
    scores = pd.read_parquet(allowed.scores)
    kinds = scores.groupby("subject")["cv_kind"].first().to_dict()
    assert kinds == {"01": "stories", "02": "stories", "solo": "runs"}
    assert list(allowed.skipped_subjects) == ["once"]
    solo = scores[(scores["subject"] == "solo") & (scores["layer"] == "layer_01")]
    assert solo["r"].iloc[:12].min() > 0.5  # the planted voxels, scored on the other run
    assert set(solo["ceiling_method"]) == {"repeat"}


def test_rerun_costs_nothing_and_added_subjects_reuse_finished_ones(tmp_path, no_bold):
    dataset, cache = write_prepared(tmp_path, design(["01", "02", "03"], STORIES))
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs_module, "load_bold", _real_load_bold)
        first = encode_dataset(dataset, cache, out, config(), subjects=["01", "02"], progress=False)
        assert first.fitted == ["01", "02"]
        scores = pd.read_parquet(first.scores)
    again = encode_dataset(dataset, cache, out, config(), subjects=["01", "02"], progress=False)
    assert again.fitted == [] and again.reused == ["01", "02"]  # no BOLD read (no_bold)
    pd.testing.assert_frame_equal(pd.read_parquet(again.scores), scores)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs_module, "load_bold", _real_load_bold)
        added = encode_dataset(dataset, cache, out, config(), progress=False)
    assert added.fitted == ["03"] and added.reused == ["01", "02"]


_real_load_bold = runs_module.load_bold


def test_a_subjects_digest_covers_its_own_inputs_only(tmp_path):
    from wav2brain.data.hf_layout import response_table, write_shard
    from wav2brain.encoding.dataset import plan_subject, subject_digest

    dataset, cache = write_prepared(tmp_path, design(["01", "02"], STORIES))
    index = FeatureIndex(cache)

    def digests(cfg=None):
        cfg = cfg or config()
        records = read_responses(dataset)
        plans = {
            s: plan_subject(s, [r for r in records if r.subject == s], dataset, cfg)
            for s in ("01", "02")
        }
        return {s: subject_digest(p, ["layer_01"], cfg, None, index) for s, p in plans.items()}

    before = digests()
    assert len(set(before.values())) == 2
    # rewrite one run of subject 02: only its digest changes
    shard = next(p for p in (dataset / "responses").iterdir() if "sub-02_b" in p.name)
    meta = dict(subject="02", session=None, task="b", run="1", stimulus_id="b", onset=0.0)
    meta.update(tr=1.5, space="native", mask="mask.nii.gz")
    write_shard(response_table(meta, np.zeros((60, 24), np.float32), np.array([], int)), shard)
    after = digests()
    assert after["01"] == before["01"] and after["02"] != before["02"]
    changed = digests(config(encoding=EncodingConfig(alphas=(1.0,), inner_cv=2)))
    assert changed["01"] != after["01"]  # a setting changes every subject


def test_held_out_scores_are_pooled_over_folds():
    """r is the correlation of the concatenated held-out predictions (not a mean of fold r)."""
    from wav2brain.encoding import RidgeCV, make_splits
    from wav2brain.encoding.scores import pearson_r, r2_score

    rng = np.random.default_rng(3)
    lengths = [40, 200, 60]  # unequal folds: a mean of fold r would weigh them equally
    groups = np.repeat(np.arange(3), lengths)
    X = rng.standard_normal((sum(lengths), 4)).astype(np.float32)
    Y = (X @ rng.standard_normal((4, 5)) * 0.3 + rng.standard_normal((len(X), 5))).astype(
        np.float32
    )
    cfg = EncodingConfig(alphas=(0.1, 10.0, 1000.0), inner_cv=2)
    predictions = np.empty_like(Y)
    fold_r = []
    for train, test in make_splits(len(X), groups, "groups"):
        model = RidgeCV(alphas=cfg.alphas, cv=2, standardize=True).fit(
            X[train], Y[train], groups=groups[train]
        )
        predictions[test] = model.predict(X[test])
        fold_r.append(pearson_r(Y[test], predictions[test]))
    scores = encode(X, Y, groups, cfg)
    np.testing.assert_allclose(scores.r, pearson_r(Y, predictions), atol=1e-5)
    np.testing.assert_allclose(scores.r2, r2_score(Y, predictions), atol=1e-4)
    assert np.abs(scores.r - np.mean(fold_r, axis=0)).max() > 1e-3  # negative control


def test_features_are_cleaned_like_the_bold(tmp_path):
    """A per-run offset and drift in the features (not in the BOLD) costs r unless cleaned."""
    from wav2brain.data.fmri import CleaningConfig
    from wav2brain.encoding.runs import clean_features

    rng = np.random.default_rng(0)
    features = rng.standard_normal((120, 3)).astype(np.float32)
    drifted = features + 5 + np.linspace(0, 8, 120)[:, None]
    cleaning = CleaningConfig()
    cleaned = clean_features(drifted, 1.5, cleaning)
    np.testing.assert_allclose(cleaned.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(cleaned.std(0, ddof=1), 1, atol=1e-4)
    np.testing.assert_allclose(cleaned, clean_features(features, 1.5, cleaning), atol=1e-4)
    assert np.abs(drifted - features).max() > 1  # negative control: the drift was there

    dataset, cache = write_prepared(tmp_path, design(["01"], STORIES), n_trs=80)
    index = FeatureIndex(cache)
    data = SubjectData.load("01", read_responses(dataset))
    raw = data.features(index, "layer_01")
    per_run = data.features(index, "layer_01", cleaning)
    for start, stop in zip(data.starts[:-1], data.starts[1:], strict=True):
        np.testing.assert_allclose(per_run[start:stop].mean(0), 0, atol=1e-5)
    assert not np.allclose(raw, per_run)


def test_run_features_are_slices_of_the_cache_not_copies(tmp_path):
    dataset, cache = write_prepared(tmp_path, design(["01", "02"], ["a"]))
    index = FeatureIndex(cache)
    entries: dict = {}
    first, second = (index.features(r, "layer_01", entries) for r in read_responses(dataset))
    assert isinstance(first.base, np.memmap) or isinstance(first, np.memmap)
    assert np.shares_memory(first, second)  # two subjects, one story: one buffer


def test_loso_ceilings_never_average_runs_with_another_timing(tmp_path):
    runs = design(["01", "02", "03"], STORIES)
    runs += [{"subject": "late", "story": s, "run": "1", "onset": 3.0} for s in STORIES]
    dataset, cache = write_prepared(tmp_path, runs)
    groups = loso_groups(read_responses(dataset))
    assert len(groups) == 6 and sorted(len(m) for m in groups.values()) == [1, 1, 1, 3, 3, 3]
    result = encode_dataset(dataset, cache, tmp_path / "out", config(), progress=False)
    scores = pd.read_parquet(result.scores)
    by = scores[scores["layer"] == "layer_01"].groupby("subject")
    assert by["ceiling_method"].first().to_dict() == {
        "01": "loso",
        "02": "loso",
        "03": "loso",
        "late": "none",
    }
    assert set(scores.loc[scores["subject"] == "01", "ceiling_n"]) == {2}
    assert scores.loc[scores["subject"] == "late", "r_normalized"].isna().all()
    driven = scores[(scores["subject"] == "01") & (scores["voxel"] < 12)]
    assert driven["ceiling_significant"].all() and np.isfinite(driven["r_normalized"]).all()


def test_repeat_ceilings_count_presentations_and_noise_voxels_are_not_normalised(tmp_path):
    dataset, cache = write_prepared(
        tmp_path, design(["01", "02"], STORIES, repeats=2), n_voxels=200, n_trs=80
    )
    result = encode_dataset(dataset, cache, tmp_path / "out", config(), progress=False)
    scores = pd.read_parquet(result.scores)
    one = scores[scores["layer"] == "layer_01"]
    assert set(one["ceiling_method"]) == {"repeat"} and set(one["ceiling_n"]) == {2}
    driven, noise = one[one["voxel"] < 12], one[one["voxel"] >= 12]
    assert driven["ceiling_significant"].all()
    # noise-only voxels: a positive CCmax on average (its bias), significant at about 5 %
    assert noise["ceiling"].mean() > 0.03
    assert noise["ceiling_significant"].mean() < 0.12
    assert noise["r_normalized"].notna().mean() == noise["ceiling_significant"].mean()


def test_dropped_voxels_are_left_out_of_the_loso_mean(tmp_path):
    runs = design(["01", "02", "03"], STORIES)
    runs[3]["dropped"] = [0, 1]  # subject 02, story a: voxels 0 and 1 dropped
    dataset, cache = write_prepared(tmp_path, runs)
    result = encode_dataset(dataset, cache, tmp_path / "out", config(), progress=False)
    scores = pd.read_parquet(result.scores)
    first = scores[(scores["subject"] == "01") & (scores["layer"] == "layer_01")]
    assert first["ceiling_n"].tolist()[:3] == [1, 1, 2]  # fewest over stories


def test_maps_follow_each_subjects_mask_and_arrays_get_tables_only(tmp_path, caplog, no_bold):
    from wav2brain.encoding.dataset import plan_subject

    runs = design(["01"], STORIES) + design(["02"], STORIES, mask="masks/grid-1.nii.gz")
    for run in runs[3:]:
        run["n_voxels"] = 30
    dataset, cache = write_prepared(tmp_path / "grids", runs)
    records = read_responses(dataset)
    plans = [
        plan_subject(s, [r for r in records if r.subject == s], dataset, EncodeConfig())
        for s in ("01", "02")
    ]
    assert [p.mask_path.name for p in plans] == ["mask.nii.gz", "grid-1.nii.gz"]
    assert [p.map_reason for p in plans] == [None, None]

    arrays, _ = write_prepared(tmp_path / "arrays", design(["01"], STORIES), mask=None)
    plan = plan_subject("01", read_responses(arrays), arrays, EncodeConfig())
    assert "name no mask" in plan.map_reason and "only tables" in plan.map_reason
    surface, _ = write_prepared(
        tmp_path / "surf", design(["01"], STORIES), mask=None, space="fsaverage6"
    )
    assert plan_subject("01", read_responses(surface), surface, EncodeConfig()).map_reason is None

    (dataset / "masks" / "grid-1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="grid-1.nii.gz, which does not exist"):
        encode_dataset(dataset, cache, tmp_path / "o", EncodeConfig(encoding=FAST))
    import shutil

    shutil.copy(dataset / "mask.nii.gz", dataset / "masks" / "grid-1.nii.gz")  # 24, not 30
    with pytest.raises(ValueError, match="holds 24 voxels but the runs' bold has 30"):
        encode_dataset(dataset, cache, tmp_path / "o", EncodeConfig(encoding=FAST))
    assert not (tmp_path / "o" / "scores.parquet").exists()


def test_multi_grid_subjects_get_maps_from_their_own_masks(tmp_path):
    runs = design(["01", "02"], STORIES) + design(["03", "04"], STORIES, mask="masks/g1.nii.gz")
    for run in runs[6:]:
        run["n_voxels"] = 30
    dataset, cache = write_prepared(tmp_path, runs)
    out = tmp_path / "out"
    encode_dataset(dataset, cache, out, EncodeConfig(encoding=FAST), progress=False)
    import nibabel as nib

    for subject, width in (("01", 24), ("03", 30)):
        image = nib.load(out / "maps" / f"sub-{subject}_layer_01_r.nii.gz")
        assert image.shape == (width + 2, 3, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(ceiling_alpha=0.7), "ceiling_alpha must be in"),
        (dict(ceiling_max_lag=0), "ceiling_max_lag must be >= 1"),
        (dict(encoding=EncodingConfig(alphas=(-1.0,))), "alphas must be positive"),
        (dict(encoding=EncodingConfig(inner_cv=1)), "inner_cv must be at least 2"),
    ],
)
def test_bad_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        EncodeConfig(**change)


def test_mixed_spaces_and_missing_features_are_refused_before_loading(tmp_path, no_bold):
    runs = design(["01"], STORIES) + design(["02"], STORIES, mask=None)
    dataset, cache = write_prepared(tmp_path / "mixed", runs)
    shard = sorted((dataset / "responses").iterdir())[-1]
    table = pd.read_parquet(shard)
    table["space"] = "fsaverage5"
    table.to_parquet(shard)
    with pytest.raises(ValueError, match="responses mix spaces"):
        encode_dataset(dataset, cache, tmp_path / "o", config())
    index = pd.read_parquet(cache / "runs.parquet")
    index.iloc[:-1].to_parquet(cache / "runs.parquet")
    with pytest.raises(ValueError, match="1 runs without cached features"):
        encode_dataset(dataset, cache, tmp_path / "o", config(), subjects=["02"])


@pytest.mark.parametrize(("name", "value"), [("layer_07", 7), ("layer_00", 0), ("layer_12", 12)])
def test_layer_numbers_come_from_the_names(name, value):
    assert layer_number(name) == value


def test_unnumbered_layer_names_are_refused():
    with pytest.raises(ValueError, match="cached layer 'conv' has no number"):
        select_layers(["layer_01", "conv"], None)
    assert select_layers(["layer_03", "layer_07"], ["7"]) == ["layer_07"]


def test_the_run_reader_refuses_broken_folders(tmp_path):
    from wav2brain.encoding.runs import check_dataset, read_cleaning

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("# card\n")
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        check_dataset(empty)
    (empty / "responses").mkdir()
    pd.DataFrame({"subject": ["01"]}).to_parquet(empty / "responses" / "x.parquet")
    with pytest.raises(ValueError, match=r"x.parquet: responses shard without columns \['session'"):
        read_responses(empty)
    (empty / "wav2brain_prepare.json").write_text("{not json")
    with pytest.raises(ValueError, match="no readable settings.cleaning"):
        read_cleaning(empty)
    (empty / "wav2brain_prepare.json").write_text(
        '{"settings": {"cleaning": {"drift_order": 2, "standardize": false}}}'
    )
    cleaning = read_cleaning(empty)
    assert cleaning.drift_order == 2 and not cleaning.standardize
    with pytest.raises(FileNotFoundError, match="no such feature cache"):
        FeatureIndex(tmp_path / "nope")


def test_a_loso_member_is_read_from_its_own_row_group(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wav2brain.encoding.dataset import LOSO_SCHEMA, read_loso_member

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in LOSO_SCHEMA])
    path = tmp_path / "loso.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for k, subject in enumerate(("01", "02", "03")):
            columns = {"subject": [subject] * 4, "voxel": np.arange(4)[::-1].astype(np.int32)}
            columns.update(r=np.full(4, k, np.float32), n_eff=np.ones(4, np.float32))
            writer.write_table(pa.table({**columns, "n_others": np.full(4, 2, np.int32)}, schema))
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda s, i: read.append(i) or real(s, i))
    member = read_loso_member(path, "02")
    assert read == [1] and member["subject"].eq("02").all() and member["r"].eq(1).all()
    assert member["voxel"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no LOSO rows of subject '04'"):
        read_loso_member(path, "04")
