"""BrainWindows + BrainWindowCollator: windows sliced from the stored tables, fed to the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_hf_layout import load, make_folder
from wav2brain.data.audio import normalize_audio
from wav2brain.data.hf_layout import CARD_NAME, RESPONSES, STIMULI, write_shard
from wav2brain.data.timing import REFERENCE_COLUMN
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


def test_mixed_voxel_counts_load_and_a_subject_mapping_gives_ids(tmp_path):
    make_folder(tmp_path, {"02": 9, "01": 5})
    stimuli, responses = load(tmp_path, STIMULI), load(tmp_path, RESPONSES)
    plain = BrainWindows(stimuli, responses)  # enough to size a per-subject model
    assert plain.subject_voxels == {"01": 5, "02": 9}
    assert list(plain.subject_voxels) == ["01", "02"]  # sorted, whatever the table order
    assert {len(plain[i]["labels"]) for i in range(len(plain))} == {5, 9}
    assert "subject_ids" not in plain[0]  # no silent subject order: ask for one
    with pytest.raises(ValueError, match=r"\['02'\] of the responses are not in the subject"):
        BrainWindows(stimuli, responses, subjects=["01"])
    windows = BrainWindows(stimuli, responses, subjects=["02", "01"])
    batch = BrainWindowCollator()([windows[i] for i in range(len(windows))])
    ids = batch["subject_ids"]
    assert ids.dtype == torch.long and set(ids.tolist()) == {0, 1}
    assert batch["labels"].shape == (len(windows), 9)
    assert torch.all(batch["labels"][ids == 1, 5:] == 0)


def test_collator_pads_labels_to_the_widest_subject_of_the_batch(tmp_path):
    make_folder(tmp_path, {"01": 5, "02": 9})
    windows = BrainWindows(
        load(tmp_path, STIMULI), load(tmp_path, RESPONSES), subjects=["01", "02"]
    )
    small = [windows[i] for i in range(len(windows)) if windows[i]["subject_ids"] == 0]
    large = [windows[i] for i in range(len(windows)) if windows[i]["subject_ids"] == 1]
    collate = BrainWindowCollator(label_width=9)  # the model's num_voxels
    assert collate(small[:3])["labels"].shape == (3, 5)  # only the 5-voxel subject: 5 wide
    mixed = collate([small[0], large[0]])["labels"]
    assert mixed.shape == (2, 9) and torch.all(mixed[0, 5:] == 0)
    np.testing.assert_array_equal(mixed[1].numpy(), large[0]["labels"])
    with pytest.raises(ValueError, match="9 voxels, more than label_width=5"):
        BrainWindowCollator(label_width=5)([small[0], large[0]])
    with pytest.raises(ValueError, match="label_width must be a positive voxel count"):
        BrainWindowCollator(label_width=0)


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
        ValueError, match=r"\(WindowConfig.tr=2.0 s\): sub-01_task-story_run-1 at TR 1.5 s"
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
    assert BrainWindowCollator(label_width=5)(items)["labels"].shape == (2, 3)
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


def rewrite_responses(root, edit) -> None:
    """Apply ``edit(pyarrow table) -> table`` to every responses shard of a folder."""
    import pyarrow.parquet as pq

    for shard in sorted((root / RESPONSES).glob("*.parquet")):
        write_shard(edit(pq.read_table(shard)), shard)


def set_reference(root, seconds: float) -> None:
    """Give every run of a hand-made folder a slice-time reference of ``seconds``."""
    import pyarrow as pa

    def edit(table):
        index = table.column_names.index(REFERENCE_COLUMN)
        return table.set_column(index, REFERENCE_COLUMN, pa.array([seconds], pa.float64()))

    rewrite_responses(root, edit)


def test_the_slice_time_reference_moves_every_window_end(tmp_path):
    made = make_folder(tmp_path, {"01": 7})
    set_reference(tmp_path, 0.75)  # fMRIPrep: the middle of a 1.5-s TR
    windows = BrainWindows(load(tmp_path, STIMULI), load(tmp_path, RESPONSES))
    np.testing.assert_array_equal(windows.tr_times(0), np.arange(12) * 1.5 + 0.75 - 3.0)
    items = items_by_tr(windows, "01")
    # end = 1.5 t + 0.75 - 3 s must lie in [1.5, 10]: TRs 3..8, as at reference 0, but later
    assert sorted(items) == [3, 4, 5, 6, 7, 8]
    for t, item in items.items():
        end = round((1.5 * t + 0.75 - 3.0) * SR)
        start = max(end - 6 * 24_000, 0)
        np.testing.assert_array_equal(item["input_values"], made["wave"][start:end])
    assert windows.window_bounds(0)[1] == round((1.5 * 3 + 0.75 - 3.0) * SR)
    bad = tmp_path / "bad"
    make_folder(bad, {"01": 7})
    set_reference(bad, 1.5)  # a whole TR: not a time within the TR
    with pytest.raises(ValueError, match=r"responses table row 0: slice-time reference 1.5 s"):
        BrainWindows(load(bad, STIMULI), load(bad, RESPONSES))


def drop_reference_column(root) -> None:
    """Make a folder look prepared by an older wav2brain: no reference column, nor in the card."""
    import yaml

    rewrite_responses(root, lambda table: table.drop_columns([REFERENCE_COLUMN]))
    _, header, body = (root / CARD_NAME).read_text().split("---\n", 2)
    meta = yaml.safe_load(header)
    for info in meta["dataset_info"]:
        info["features"] = [f for f in info["features"] if f["name"] != REFERENCE_COLUMN]
    (root / CARD_NAME).write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{body}")


def test_folders_without_the_reference_column_read_as_acquisition_start(tmp_path, caplog):
    made = make_folder(tmp_path, {"01": 7})
    drop_reference_column(tmp_path)
    responses = load(tmp_path, RESPONSES)
    assert REFERENCE_COLUMN not in responses.column_names
    with caplog.at_level("WARNING", logger="wav2brain.data.timing"):
        windows = BrainWindows(load(tmp_path, STIMULI), responses)
    assert "no slice_time_reference column" in caplog.text and "0 s" in caplog.text
    np.testing.assert_array_equal(windows.tr_times(0), np.arange(12) * 1.5 - 3.0)
    item = items_by_tr(windows, "01")[5]
    np.testing.assert_array_equal(item["input_values"], made["wave"][: round(4.5 * SR)])


def brain_model(**kwargs):
    """A tiny untrained Wav2Vec2ForBrainEncoding (TR 1.5 s, 6 TRs unless given)."""
    from conftest import tiny_wav2vec2_kwargs
    from wav2brain.modeling import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    torch.manual_seed(0)
    settings = {"tr": 1.5, "history_trs": 6, **kwargs}
    return Wav2Vec2ForBrainEncoding(
        Wav2Vec2BrainEncodingConfig(**tiny_wav2vec2_kwargs(), **settings)
    )


def test_for_model_takes_tr_history_subjects_and_normalisation_from_the_model(tmp_path):
    made = make_folder(tmp_path, {"01": 5, "02": 9})
    cache = {"cache_dir": str(tmp_path / ".cache")}
    model = brain_model(subject_voxels={"02": 9, "01": 5}, history_trs=3)
    windows = BrainWindows.for_model(tmp_path, model, load_kwargs=cache, lag_trs=1)
    assert windows.config == WindowConfig(history_trs=3, lag_trs=1, tr=1.5)
    assert windows.subject_to_id == {"02": 0, "01": 1}
    item = windows[0]
    assert item["subject_ids"] == 1 and len(item["labels"]) == 5
    start, end = windows.window_bounds(0)
    np.testing.assert_array_equal(item["input_values"], made["wave"][start:end])
    assert end - start <= 3 * 24_000  # at most three TRs of history

    model.config.do_normalize = True  # what the modeling config carries for lv60 checkpoints
    normalised = BrainWindows.for_model(tmp_path, model.config, load_kwargs=cache)
    assert normalised.config.do_normalize
    for index in (0, len(normalised) - 1):
        start, end = normalised.window_bounds(index)
        window = normalised[index]["input_values"]
        np.testing.assert_array_equal(window, normalize_audio(made["wave"][start:end]))
        assert abs(float(window.mean())) < 1e-4 and abs(float(window.std()) - 1) < 1e-3


def test_for_model_refuses_what_does_not_fit_the_model(tmp_path):
    make_folder(tmp_path, {"01": 5, "02": 9})
    cache = {"cache_dir": str(tmp_path / ".cache")}
    model = brain_model(subject_voxels={"01": 5, "02": 9})
    with pytest.raises(ValueError, match=r"takes \['history_trs', 'tr'\] from the model"):
        BrainWindows.for_model(tmp_path, model, load_kwargs=cache, tr=1.5, history_trs=4)
    other_tr = brain_model(subject_voxels={"01": 5, "02": 9}, tr=2.0)
    with pytest.raises(
        ValueError,
        match=r"2 run\(s\) have a TR other than the model's TR \(WindowConfig.tr=2.0 s\): "
        r"sub-01_task-story_run-1 at TR 1.5 s, sub-02_task-story_run-1 at TR 1.5 s",
    ):
        BrainWindows.for_model(tmp_path, other_tr, load_kwargs=cache)
    with pytest.raises(ValueError, match=r"subjects \['02'\] of the responses are not in"):
        BrainWindows.for_model(tmp_path, brain_model(subject_voxels={"01": 5}), load_kwargs=cache)
    wrong = brain_model(subject_voxels={"01": 5, "02": 8})
    with pytest.raises(ValueError, match="subject '02': 9 voxels in the data, 8 in the model"):
        BrainWindows.for_model(tmp_path, wrong, load_kwargs=cache)
    with pytest.raises(ValueError, match="subject '01': 5 voxels in the data, 9 in the model"):
        BrainWindows.for_model(tmp_path, brain_model(num_voxels=9), load_kwargs=cache)


def test_five_and_nine_voxel_subjects_train_through_the_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    make_folder(tmp_path, {"01": 5, "02": 9})
    model = brain_model(subject_voxels={"01": 5, "02": 9}).train()
    windows = BrainWindows.for_model(
        tmp_path, model, load_kwargs={"cache_dir": str(tmp_path / ".cache")}
    )
    collator = BrainWindowCollator(label_width=model.config.num_voxels)
    # sequential batches of 4 over 6 items of 01 then 6 of 02: [01 x4], [01 x2, 02 x2], [02 x4]
    batches = [collator([windows[i] for i in range(s, s + 4)]) for s in (0, 4, 8)]
    assert [b["labels"].shape[1] for b in batches] == [5, 9, 9]
    assert batches[0]["subject_ids"].tolist() == [0, 0, 0, 0]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        train_sampling_strategy="sequential",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=windows,
        eval_dataset=windows,
        data_collator=collator,
    )
    result = trainer.train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"])


def readme_python_example() -> str:
    """The first Python block under the README's ``## Python example``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python example", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_example_runs_as_written(narratives, tmp_path, monkeypatch):
    """The README's example, with the dataset and checkpoint names pointed at local stand-ins.

    The fabricated BOLD is noise, from which nilearn's EPI mask keeps nothing, so the mask
    computation is replaced by an all-brain mask; everything else runs as printed.
    """
    import datasets
    import nibabel as nib
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from conftest import tiny_wav2vec2_kwargs
    from wav2brain.data import masks

    code = readme_python_example()
    assert code.count('"ds002345"') == 1 and code.count('"facebook/wav2vec2-base"') == 1
    checkpoint = tmp_path / "wav2vec2-tiny"
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs())).save_pretrained(checkpoint)
    code = code.replace('"ds002345"', repr(str(narratives)))
    code = code.replace('"facebook/wav2vec2-base"', repr(str(checkpoint)))

    def whole_grid(paths, **kwargs):
        image = nib.load(str(paths[0]))
        return nib.Nifti1Image(np.ones(image.shape[:3], np.uint8), image.affine)

    monkeypatch.setattr(masks, "compute_mask", whole_grid)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out, windows, model = namespace["out"], namespace["windows"], namespace["model"]
    assert windows.config == WindowConfig(tr=1.5, history_trs=6, full_windows_only=True)
    assert out.predictions.shape[0] == 2 and torch.isfinite(out.loss)
    assert (tmp_path / "refined-wav2vec2" / "config.json").is_file()
    assert set(model.config.subjects) == set(windows.subject_voxels)
