"""A dataset prepared again in the same folder is read as its new shards by extract and encode.

The folder is written twice with the real hf_layout writers: the same stimuli, runs and BOLD
bytes, only the onsets moved (the mistake a researcher fixes). ``wav2brain extract`` and
``wav2brain encode`` are then run again into the same output folders: the new onsets must reach
the feature index, and encode must neither serve its old per-subject parts nor differ from a
run from scratch. Data are SIMULATED (random BOLD).
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wav2brain.cli import main as cli
from wav2brain.data.hf_layout import (
    CARD_NAME,
    MASK_NAME,
    RESPONSES,
    STIMULI,
    CardText,
    DatasetSummary,
    RunSummary,
    StimulusSummary,
    response_table,
    stimulus_table,
    write_card,
    write_shard,
)

TR = 1.0
N_TRS = 10
STORIES = ("alpha", "beta", "gamma")
SUBJECTS = ("01", "02")
N_VOXELS = 4


def write_folder(root, onset: float):
    """Write the prepared folder ``root`` (deleted first) with every run at ``onset`` (s)."""
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    stimuli, runs = [], []
    for sid in STORIES:
        wave = (0.1 * rng.standard_normal(6 * 16_000)).astype(np.float32)
        write_shard(stimulus_table(sid, wave, None), root / STIMULI / f"{sid}.parquet")
        stimuli.append(StimulusSummary(f"{STIMULI}/{sid}.parquet", sid, 6.0, 0, 0))
        for subject in SUBJECTS:
            meta = dict(
                subject=subject,
                session=None,
                task=sid,
                run=None,
                stimulus_id=sid,
                onset=onset,
                tr=TR,
                space="native",
                mask=MASK_NAME,
            )
            bold = rng.standard_normal((N_TRS, N_VOXELS)).astype(np.float32)
            shard = f"{RESPONSES}/sub-{subject}_task-{sid}.parquet"
            write_shard(response_table(meta, bold, np.array([], int)), root / shard)
            runs.append(
                RunSummary(shard, subject, sid, None, None, sid, "native", N_TRS, N_VOXELS, TR, 0)
            )
    mask = np.zeros((2, 2, 2), np.uint8)
    mask.flat[:N_VOXELS] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), root / MASK_NAME)
    summary = DatasetSummary(
        stimuli=stimuli,
        runs=runs,
        mask={"files": {MASK_NAME: {"n_voxels": N_VOXELS, "shape": [2, 2, 2]}}},
    )
    write_card(root, summary, CardText(pretty_name="Re-prepared (SIMULATED)"))


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep ``load_dataset``'s Arrow cache in the test folder (outside the prepared folder)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from conftest import tiny_wav2vec2_kwargs

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs())).save_pretrained(path)
    return path


def extract_and_encode(dataset, features, out, model_dir) -> pd.DataFrame:
    extract = [str(dataset), "--model", str(model_dir), "--out", str(features)]
    assert cli(["extract", *extract, "--chunk-seconds", "2", "--context-seconds", "1"]) == 0
    encode = [str(dataset), "--features", str(features), "--out", str(out)]
    assert cli(["encode", *encode, "--alphas", "1", "100", "--inner-cv", "2"]) == 0
    return pd.read_parquet(out / "scores.parquet")


def prepare_twice(tmp_path, model_dir, caplog) -> dict:
    """Prepare, extract, encode; prepare again with onsets 2 TRs later; extract, encode again."""
    dataset, features, out = tmp_path / "prep", tmp_path / "features", tmp_path / "encoded"
    write_folder(dataset, onset=0.0)
    card = (dataset / CARD_NAME).read_text()
    first = extract_and_encode(dataset, features, out, model_dir)
    write_folder(dataset, onset=2.0)  # same entries of the feature cache, other rows of them
    caplog.clear()
    with caplog.at_level("INFO"):
        second = extract_and_encode(dataset, features, out, model_dir)
    return {
        "card_changed": (dataset / CARD_NAME).read_text() != card,
        "onsets": set(pd.read_parquet(features / "runs.parquet")["onset"]),
        "reused": "reusing" in caplog.text,
        "first": first,
        "second": second,
    }


def test_extract_and_encode_follow_a_reprepared_folder(tmp_path, model_dir, caplog):
    result = prepare_twice(tmp_path, model_dir, caplog)
    assert result["card_changed"]
    assert result["onsets"] == {2.0}
    assert not result["reused"]  # no part of the first encode is served
    assert not np.allclose(result["first"]["r"], result["second"]["r"])
    fresh = extract_and_encode(
        tmp_path / "prep", tmp_path / "features-2", tmp_path / "encoded-2", model_dir
    )
    pd.testing.assert_frame_equal(result["second"], fresh)


def test_negative_control_a_card_blind_to_content_serves_old_features_and_scores(
    tmp_path, model_dir, caplog, monkeypatch
):
    """With the content hash replaced by a constant, the test above would fail on every check."""
    import wav2brain.data.hf_layout as layout

    monkeypatch.setattr(layout, "file_sha256", lambda path: "0" * 64)
    result = prepare_twice(tmp_path, model_dir, caplog)
    assert not result["card_changed"]
    assert result["onsets"] == {0.0}  # load_dataset served the first preparation's rows
    assert result["reused"]
    pd.testing.assert_frame_equal(result["first"], result["second"])
