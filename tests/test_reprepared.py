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


def extract(dataset, features, model_dir) -> set[float]:
    """Run ``wav2brain extract``; return the onsets (s) its run index holds."""
    argv = [str(dataset), "--model", str(model_dir), "--out", str(features)]
    assert cli(["extract", *argv, "--chunk-seconds", "2", "--context-seconds", "1"]) == 0
    return set(pd.read_parquet(features / "runs.parquet")["onset"])


def encode(dataset, features, out) -> pd.DataFrame:
    argv = [str(dataset), "--features", str(features), "--out", str(out)]
    assert cli(["encode", *argv, "--alphas", "1", "100", "--inner-cv", "2"]) == 0
    return pd.read_parquet(out / "scores.parquet")


def test_extract_and_encode_follow_a_reprepared_folder(tmp_path, model_dir):
    dataset, features, out = tmp_path / "prep", tmp_path / "features", tmp_path / "encoded"
    write_folder(dataset, onset=0.0)
    card = (dataset / CARD_NAME).read_text()
    assert extract(dataset, features, model_dir) == {0.0}
    first = encode(dataset, features, out)
    write_folder(dataset, onset=2.0)  # same entries of the feature cache, other rows of them
    assert (dataset / CARD_NAME).read_text() != card
    assert extract(dataset, features, model_dir) == {2.0}
    second = encode(dataset, features, out)
    assert not np.allclose(first["r"], second["r"])
    # nothing of the first encode is served: the same scores as from scratch
    assert extract(dataset, tmp_path / "features-2", model_dir) == {2.0}
    fresh = encode(dataset, tmp_path / "features-2", tmp_path / "encoded-2")
    pd.testing.assert_frame_equal(second, fresh)


def test_negative_control_a_card_blind_to_content_serves_the_old_onsets(
    tmp_path, model_dir, monkeypatch
):
    """With the content hash replaced by a constant, the test above would fail."""
    import wav2brain.data.hf_layout as layout

    monkeypatch.setattr(layout, "file_sha256", lambda path: "0" * 64)
    dataset, features = tmp_path / "prep", tmp_path / "features"
    write_folder(dataset, onset=0.0)
    card = (dataset / CARD_NAME).read_text()
    assert extract(dataset, features, model_dir) == {0.0}
    write_folder(dataset, onset=2.0)
    assert (dataset / CARD_NAME).read_text() == card
    assert extract(dataset, features, model_dir) == {0.0}  # load_dataset's old rows
