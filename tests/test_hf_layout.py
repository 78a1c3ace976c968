"""The folder layout: Parquet shards + card that ``datasets.load_dataset`` reads offline."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from wav2brain.data.alignments import AlignedToken, Alignment
from wav2brain.data.hf_layout import (
    CARD_NAME,
    RESPONSES,
    STIMULI,
    CardText,
    DatasetSummary,
    RunSummary,
    StimulusSummary,
    decode_audio,
    encode_audio,
    response_table,
    stimulus_table,
    write_card,
    write_shard,
)


def exact_wave(n_samples: int) -> np.ndarray:
    """A ramp of 16-bit values, so FLAC storage round-trips it exactly (float32 [samples])."""
    return (((np.arange(n_samples) % 20_000) - 10_000) / 32_768).astype(np.float32)


def make_folder(
    root: Path,
    voxels: dict[str, int],
    n_trs: int = 12,
    tr: float = 1.5,
    onset: float = 3.0,
    seed: int = 0,
) -> dict:
    """Write a tiny prepared folder by hand: one 10-s stimulus, one run per subject."""
    rng = np.random.default_rng(seed)
    wave = exact_wave(160_000)
    alignment = Alignment(
        words=[AlignedToken("hello", 0.5, 0.9), AlignedToken("world", 1.0, 1.4)],
        phonemes=[AlignedToken("HH", 0.5, 0.6)],
    )
    write_shard(stimulus_table("story", wave, alignment), root / STIMULI / "story.parquet")
    bolds, runs = {}, []
    for subject, n_vox in voxels.items():
        bold = rng.standard_normal((n_trs, n_vox)).astype(np.float32)
        bold[:, 0] = 0.0
        meta = dict(
            subject=subject,
            session=None,
            task="story",
            run="1",
            stimulus_id="story",
            onset=onset,
            tr=tr,
            space="MNI",
        )
        shard = f"{RESPONSES}/sub-{subject}_task-story_run-1.parquet"
        write_shard(response_table(meta, bold, np.array([0])), root / shard)
        bolds[subject] = bold
        runs.append(
            RunSummary(shard, subject, "story", "1", None, "story", "MNI", n_trs, n_vox, tr, 1)
        )
    summary = DatasetSummary(
        stimuli=[StimulusSummary(f"{STIMULI}/story.parquet", "story", 10.0, 2, 1)],
        runs=runs,
        cleaning={"standardize": True},
        mask={"file": None, "n_voxels": max(voxels.values())},
    )
    write_card(root, summary, CardText(pretty_name="Tiny", license="cc0-1.0", source="## Src"))
    return {"wave": wave, "bolds": bolds}


def load(root: Path, name: str, **kwargs):
    """``load_dataset(root, name, split="train")`` with its cache inside the test folder."""
    from datasets import load_dataset

    return load_dataset(str(root), name, split="train", cache_dir=str(root / ".cache"), **kwargs)


def test_load_dataset_reads_both_tables_offline(tmp_path):
    from datasets import Array2D

    made = make_folder(tmp_path, {"01": 7, "02": 7})
    responses = load(tmp_path, RESPONSES)
    stimuli = load(tmp_path, STIMULI)
    assert isinstance(responses.features["bold"], Array2D)
    assert responses.features["bold"].shape == (None, 7)
    assert responses.num_rows == 2 and stimuli.num_rows == 1
    row = responses.with_format("numpy")[
        int(np.flatnonzero(np.array(responses["subject"]) == "02")[0])
    ]
    np.testing.assert_array_equal(row["bold"], made["bolds"]["02"])
    assert row["bold"].dtype == np.float32
    assert row["dropped_voxel_indices"].tolist() == [0]
    assert row["onset"] == 3.0 and row["n_trs"] == 12 and row["n_voxels"] == 7
    stim = stimuli[0]
    assert stim["words"][1] == {"label": "world", "start": 1.0, "end": 1.4}
    assert stim["phonemes"][0]["label"] == "HH"
    assert stim["audio"]["path"] == "story.flac"
    wave = decode_audio(stim["audio"])
    np.testing.assert_array_equal(wave, made["wave"])
    assert stim["duration"] == pytest.approx(10.0)


def test_streaming_reads_the_same_rows(tmp_path):
    made = make_folder(tmp_path, {"01": 5})
    row = next(iter(load(tmp_path, RESPONSES, streaming=True)))
    np.testing.assert_array_equal(np.asarray(row["bold"], np.float32), made["bolds"]["01"])
    stim = next(iter(load(tmp_path, STIMULI, streaming=True)))
    assert stim["id"] == "story"
    np.testing.assert_array_equal(decode_audio(stim["audio"]), made["wave"])


def test_runs_with_different_voxel_counts_load_as_nested_lists(tmp_path):
    from datasets import List

    made = make_folder(tmp_path, {"01": 5, "02": 9})
    responses = load(tmp_path, RESPONSES)
    assert isinstance(responses.features["bold"], List)
    by_subject = {r["subject"]: r for r in responses.with_format("numpy")}
    assert by_subject["02"]["bold"].shape == (12, 9)
    np.testing.assert_array_equal(np.stack(by_subject["01"]["bold"]), made["bolds"]["01"])


def test_card_has_configs_features_and_counts(tmp_path):
    make_folder(tmp_path, {"01": 4})
    text = (tmp_path / CARD_NAME).read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == [STIMULI, RESPONSES]
    assert header["configs"][1]["data_files"][0]["path"] == "responses/*.parquet"
    assert header["license"] == "cc0-1.0"
    info = {i["config_name"]: i for i in header["dataset_info"]}
    assert info[RESPONSES]["splits"][0]["num_examples"] == 1
    names = [f["name"] for f in info[STIMULI]["features"]]
    assert {"id", "audio", "duration", "words", "phonemes"} <= set(names)
    assert "## Src" in text and "dropped" in text and '"standardize": true' in text


def test_bold_is_one_column_float32_without_dictionary(tmp_path):
    make_folder(tmp_path, {"01": 6})
    path = next((tmp_path / RESPONSES).glob("*.parquet"))
    schema = pq.read_schema(path)
    assert str(schema.field("bold").type) == "list<element: fixed_size_list<element: float>[6]>"
    column = pq.ParquetFile(path).metadata.row_group(0).column(schema.get_field_index("bold"))
    assert "PLAIN_DICTIONARY" not in column.encodings and "RLE_DICTIONARY" not in column.encodings


def test_audio_above_full_scale_is_kept_as_float_wav():
    wave = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    cell = encode_audio(wave, "loud")
    assert cell["path"] == "loud.wav"
    np.testing.assert_array_equal(decode_audio(cell), wave)


def test_decode_audio_refuses_wrong_rate_and_empty_cells():
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(100, np.float32), 8000, format="WAV")
    with pytest.raises(ValueError, match="8000 Hz, expected 16000"):
        decode_audio({"bytes": buffer.getvalue(), "path": "x.wav"})
    with pytest.raises(ValueError, match="neither bytes nor a path"):
        decode_audio({"bytes": None, "path": None})


def test_encode_audio_refuses_multichannel():
    with pytest.raises(ValueError, match="mono"):
        encode_audio(np.zeros((10, 2), np.float32), "stereo")


def test_write_shard_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    import wav2brain.data.hf_layout as layout

    table = stimulus_table("s", np.zeros(1600, np.float32), None)

    def broken(table, where, **kwargs):
        Path(where).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(layout.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_shard(table, tmp_path / "stimuli" / "s.parquet")
    assert list((tmp_path / "stimuli").iterdir()) == []


def card_header(root: Path) -> dict:
    return yaml.safe_load((root / CARD_NAME).read_text().split("---")[1])


def test_card_fingerprints_every_byte_of_every_table(tmp_path):
    import wav2brain.data.hf_layout as layout

    make_folder(tmp_path, {"01": 4})
    header = card_header(tmp_path)
    files = layout.table_files(tmp_path, DatasetSummary())
    for config in header["configs"]:
        name = config["config_name"]
        assert config["description"] == layout.FINGERPRINT_PREFIX + files[name].fingerprint
        assert files[name].fingerprint in (tmp_path / CARD_NAME).read_text()  # shown in the body
    shard = next((tmp_path / RESPONSES).glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size
    shard.write_bytes(bytes(data))
    changed = layout.table_files(tmp_path, DatasetSummary())
    assert changed[RESPONSES].num_bytes == files[RESPONSES].num_bytes
    assert changed[RESPONSES].fingerprint != files[RESPONSES].fingerprint
    assert changed[STIMULI] == files[STIMULI]
    shard.rename(shard.with_name("sub-01_renamed.parquet"))
    assert layout.table_files(tmp_path, DatasetSummary())[RESPONSES] != changed[RESPONSES]


def test_the_masks_the_card_describes_belong_to_the_responses_fingerprint(tmp_path):
    import wav2brain.data.hf_layout as layout

    make_folder(tmp_path, {"01": 4})
    (tmp_path / "mask.nii.gz").write_bytes(b"mask one")
    with_mask = DatasetSummary(mask={"files": {"mask.nii.gz": {"n_voxels": 4}}})
    before = layout.table_files(tmp_path, with_mask)
    (tmp_path / "mask.nii.gz").write_bytes(b"mask two")
    after = layout.table_files(tmp_path, with_mask)
    assert after[RESPONSES].n_files == 2
    assert after[RESPONSES].fingerprint != before[RESPONSES].fingerprint
    assert after[STIMULI] == before[STIMULI]


def reprepare(root: Path, onset: float) -> None:
    """Delete ``root`` if present and write it again with every run at ``onset`` (s)."""
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    make_folder(root, {"01": 5, "02": 5}, onset=onset)


def onsets(root: Path, cache: Path) -> list[float]:
    from datasets import load_dataset

    responses = load_dataset(str(root), RESPONSES, split="train", cache_dir=str(cache))
    return sorted(set(responses["onset"]))


def test_a_reprepared_folder_loads_as_its_new_shards(tmp_path):
    root, cache = tmp_path / "prep", tmp_path / "hf-cache"
    reprepare(root, onset=3.0)
    assert onsets(root, cache) == [3.0]
    sizes = [p.stat().st_size for p in sorted((root / RESPONSES).glob("*.parquet"))]
    reprepare(root, onset=4.5)
    # the same card but for the values inside the shards: only the fingerprint tells them apart
    assert [p.stat().st_size for p in sorted((root / RESPONSES).glob("*.parquet"))] == sizes
    assert onsets(root, cache) == [4.5]


def test_same_named_folders_in_different_parents_load_their_own_rows(tmp_path):
    cache = tmp_path / "hf-cache"
    reprepare(tmp_path / "a" / "prep", onset=1.0)
    reprepare(tmp_path / "b" / "prep", onset=2.0)
    assert onsets(tmp_path / "a" / "prep", cache) == [1.0]
    assert onsets(tmp_path / "b" / "prep", cache) == [2.0]


def test_negative_control_without_content_hashes_the_old_rows_come_back(tmp_path, monkeypatch):
    """With the content hash replaced by a constant, the two tests above would fail."""
    import wav2brain.data.hf_layout as layout

    monkeypatch.setattr(layout, "file_sha256", lambda path: "0" * 64)
    root, cache = tmp_path / "prep", tmp_path / "hf-cache"
    reprepare(root, onset=3.0)
    assert onsets(root, cache) == [3.0]
    reprepare(root, onset=4.5)
    assert onsets(root, cache) == [3.0]  # stale: datasets' cache key did not change
    reprepare(tmp_path / "a" / "prep", onset=1.0)
    assert onsets(tmp_path / "a" / "prep", cache) == [3.0]  # another folder's rows
