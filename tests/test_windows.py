"""BrainWindows + BrainWindowCollator: windows sliced from the stored tables, fed to the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_hf_layout import load, make_folder
from wav2brain.data.hf_layout import RESPONSES, STIMULI
from wav2brain.data.windows import BrainWindowCollator, BrainWindows, WindowConfig

SR = 16_000


@pytest.fixture
def folder(tmp_path):
    """One 10-s stimulus at onset 3 s, TR 1.5 s, 12 TRs; subjects 01 and 02 with 7 voxels."""
    made = make_folder(tmp_path, {"01": 7, "02": 7})
    made["stimuli"] = load(tmp_path, STIMULI)
    made["responses"] = load(tmp_path, RESPONSES)
    return made


def items_by_tr(windows: BrainWindows, subject: str) -> dict[int, dict]:
    subjects = windows.responses["subject"]
    out = {}
    for i in range(len(windows)):
        row, t = windows.locate(i)
        if subjects[row] == subject:
            out[t] = windows[i]
    return out


def test_windows_end_at_each_tr_and_hold_the_stored_audio(folder):
    windows = BrainWindows(folder["stimuli"], folder["responses"])
    items = items_by_tr(windows, "02")
    # window end (s into the stimulus) = 1.5 t - 3; items need 1.5 <= end <= 10 (s)
    assert sorted(items) == [3, 4, 5, 6, 7, 8]
    assert len(windows) == 12
    wave = folder["wave"]
    for t, item in items.items():
        end = round((1.5 * t - 3.0) * SR)
        start = max(end - 6 * 24_000, 0)
        np.testing.assert_array_equal(item["input_values"], wave[start:end])
        np.testing.assert_array_equal(item["labels"], folder["bolds"]["02"][t])
        assert item["labels"].dtype == np.float32 and "subject_ids" not in item
    assert len(items[3]["input_values"]) == 24_000  # one TR of audio: the window starts at 0
    assert len(items[8]["input_values"]) == 144_000  # a full 9-s window


def test_lag_and_full_windows_only_change_the_valid_trs(folder):
    lagged = BrainWindows(folder["stimuli"], folder["responses"], WindowConfig(lag_trs=1))
    items = items_by_tr(lagged, "01")
    assert sorted(items) == [4, 5, 6, 7, 8, 9]
    end = round((1.5 * 9 - 3.0 - 1.5) * SR)
    np.testing.assert_array_equal(items[9]["input_values"], folder["wave"][end - 144_000 : end])
    full = BrainWindows(
        folder["stimuli"], folder["responses"], WindowConfig(full_windows_only=True)
    )
    assert sorted(items_by_tr(full, "01")) == [8]
    short = BrainWindows(folder["stimuli"], folder["responses"], WindowConfig(history_trs=2))
    assert {len(item["input_values"]) for item in items_by_tr(short, "01").values()} == {
        24_000,
        48_000,
    }


def test_subject_mapping_gives_ids_and_mixed_voxel_counts_need_it(tmp_path):
    make_folder(tmp_path, {"01": 5, "02": 9})
    stimuli, responses = load(tmp_path, STIMULI), load(tmp_path, RESPONSES)
    with pytest.raises(ValueError, match="different voxel counts"):
        BrainWindows(stimuli, responses)
    with pytest.raises(ValueError, match=r"\['02'\] of the responses are not in the subject"):
        BrainWindows(stimuli, responses, subjects=["01"])
    windows = BrainWindows(stimuli, responses, subjects=["02", "01"])
    assert windows.subject_voxels == {"01": 5, "02": 9}
    batch = BrainWindowCollator()([windows[i] for i in range(len(windows))])
    ids = batch["subject_ids"]
    assert ids.dtype == torch.long and set(ids.tolist()) == {0, 1}
    assert batch["labels"].shape == (len(windows), 9)
    assert torch.all(batch["labels"][ids == 1, 5:] == 0)


def test_bad_tables_are_refused(folder, tmp_path):
    with pytest.raises(ValueError, match="streaming"):
        BrainWindows(folder["stimuli"], load(tmp_path, RESPONSES, streaming=True))
    empty_stimuli = folder["stimuli"].filter(lambda row: False)
    with pytest.raises(ValueError, match="refers to stimulus 'story'"):
        BrainWindows(empty_stimuli, folder["responses"])
    with pytest.raises(ValueError, match="history_trs must be at least 1"):
        WindowConfig(history_trs=0)
    with pytest.raises(ValueError, match="'story' at 16000 Hz; WindowConfig.sampling_rate is 8000"):
        BrainWindows(folder["stimuli"], folder["responses"], WindowConfig(sampling_rate=8000))


def test_model_tr_must_match_every_run(folder):
    assert len(BrainWindows(folder["stimuli"], folder["responses"], WindowConfig(tr=1.5))) > 0
    with pytest.raises(
        ValueError, match=r"TR other than WindowConfig.tr=2.0 s .*'01' / 'story' at 1.5 s"
    ):
        BrainWindows(folder["stimuli"], folder["responses"], WindowConfig(tr=2.0))
    with pytest.raises(ValueError, match="tr must be a positive number of seconds"):
        WindowConfig(tr=0.0)


def test_collator_pads_right_and_masks(folder):
    collate = BrainWindowCollator()
    items = [
        {"input_values": np.ones(5, np.float32), "labels": np.arange(3, dtype=np.float32)},
        {"input_values": np.ones(8, np.float32), "labels": np.ones(3, np.float32)},
    ]
    batch = collate(items)
    assert set(batch) == {"input_values", "attention_mask", "labels"}
    assert batch["input_values"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert torch.all(batch["input_values"][0, 5:] == 0)
    assert BrainWindowCollator(label_width=5)(items)["labels"].shape == (2, 5)
    with pytest.raises(ValueError, match="more than label_width=2"):
        BrainWindowCollator(label_width=2)(items)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    assert "attention_mask" not in BrainWindowCollator(return_attention_mask=False)(items)


def tiny_model(num_voxels: int, **kwargs):
    from conftest import tiny_wav2vec2_kwargs
    from wav2brain.modeling import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(
        **tiny_wav2vec2_kwargs(), num_voxels=num_voxels, tr=1.5, history_trs=6, **kwargs
    )
    return Wav2Vec2ForBrainEncoding(config).eval()


def test_windows_feed_the_model_forward(folder):
    windows = BrainWindows(folder["stimuli"], folder["responses"])
    loader = torch.utils.data.DataLoader(windows, batch_size=3, collate_fn=BrainWindowCollator())
    batch = next(iter(loader))
    model = tiny_model(num_voxels=7)
    with torch.no_grad():
        output = model(**batch)
    assert output.predictions.shape == (3, 7)
    assert torch.isfinite(output.loss)


def test_windows_feed_the_trainer(folder, tmp_path):
    from transformers import Trainer, TrainingArguments

    windows = BrainWindows(folder["stimuli"], folder["responses"], subjects=["01", "02"])
    model = tiny_model(num_voxels=None, subject_voxels={"01": 7, "02": 7}).train()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=windows, data_collator=BrainWindowCollator()
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
