"""Neurolinguistic selectivity (``wav2brain.anchoring.selectivity``): a unit built to respond to
one phonetic class is found with it, a unit that responds to nothing is not, streaming equals
one block, bad input is refused, and the command runs on the simulated dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wav2brain.anchoring.phonetics import phonetic_class
from wav2brain.anchoring.selectivity import (
    FrameGeometry,
    SelectivityConfig,
    accumulate,
    check_alignments,
    summarize,
)

LABELS = ("s", "z", "f", "v", "t", "d", "k", "m", "n", "ɪ", "æ", "ə", "iː", "l")


def _alignment(rng: np.random.Generator, n_words: int = 300):
    """Random words of 3 phonemes (80 ms each, 20-ms gaps between words)."""
    words, phonemes, t = [], [], 0.1
    for _ in range(n_words):
        start = t
        for _ in range(3):
            phonemes.append({"label": str(rng.choice(LABELS)), "start": t, "end": t + 0.08})
            t += 0.08
        words.append({"label": "w", "start": start, "end": t})
        t += 0.02
    return words, phonemes, int((t + 0.2) * 50)


def _activations(phonemes, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Unit 0 responds (+1) during fricatives, unit 1 is noise, unit 2 is constant."""
    centres = (np.arange(n_frames) * 320 + 200) / 16000
    values = rng.standard_normal((n_frames, 3))
    values[:, 2] = 0.5
    for p in phonemes:
        if phonetic_class(p["label"])[0] == "fricative":
            values[(centres >= p["start"]) & (centres < p["end"]), 0] += 1.0
    return values


def _chunks(values: np.ndarray, size: int):
    for start in range(0, len(values), size):
        yield start, {"layer_01": values[start : start + size]}


def test_class_unit_is_found_and_noise_unit_is_not():
    rng = np.random.default_rng(0)
    words, phonemes, n_frames = _alignment(rng)
    values = _activations(phonemes, n_frames, rng)
    config = SelectivityConfig()
    stats = accumulate(_chunks(values, 37), phonemes, words, n_frames, config)
    result = summarize(stats, "hidden_states", config)
    units = result.units.set_index("unit")
    assert units.loc[0, "best_class"] == "fricative"
    assert units.loc[0, "best_class_feature"] == "manner"
    assert units.loc[0, "psi_max"] > 0 and units.loc[0, "best_phoneme"] in {"s", "z", "f", "v"}
    assert pd.isna(units.loc[1, "best_class"]) and units.loc[1, "psi_max"] <= 1
    assert units.loc[2, "constant"] and pd.isna(units.loc[2, "best_class"])
    assert result.summary["constant_units"] == 1
    assert not result.units[["psi_mean", "word_onset_t", "word_onset_p"]].isna().any().any()
    one = summarize(accumulate(_chunks(values, n_frames), phonemes, words, n_frames, config),
                    "hidden_states", config)  # fmt: skip
    np.testing.assert_allclose(one.units["psi_mean"], result.units["psi_mean"])
    np.testing.assert_allclose(one.units["word_onset_t"], result.units["word_onset_t"])


def test_word_onset_unit_is_found():
    rng = np.random.default_rng(1)
    words, phonemes, n_frames = _alignment(rng)
    values = rng.standard_normal((n_frames, 2))
    centres = (np.arange(n_frames) * 320 + 200) / 16000
    for w in words:
        values[np.abs(centres - w["start"]) <= 0.04, 0] += 2.0
    result = summarize(accumulate(_chunks(values, 50), phonemes, words, n_frames), "hidden_states",
                       SelectivityConfig())  # fmt: skip
    units = result.units.set_index("unit")
    assert units.loc[0, "word_onset_t"] > 5 and units.loc[0, "word_onset_p"] < 1e-6
    assert abs(units.loc[1, "word_onset_t"]) < 4
    assert result.summary["word_peak_layer"] == 1


def test_phoneme_windows_are_centred_and_clipped():
    from wav2brain.anchoring.selectivity import token_windows

    phonemes = [
        {"label": "s", "start": 0.1, "end": 0.2},
        {"label": "t", "start": 0.3, "end": 0.305},
    ]
    starts, stops, names = token_windows(phonemes, [], 100, FrameGeometry(), SelectivityConfig())
    assert names == ["s", "t"]
    # midpoint 0.15 s: frames whose centres (i * 0.02 + 0.0125) lie in [0.13, 0.17]
    assert (starts[0], stops[0]) == (6, 8)
    assert stops[1] - starts[1] == 1  # a 5-ms phoneme: its nearest frame


def test_no_alignment_names_the_stimulus():
    rows = [{"id": "story01", "words": [{"label": "a", "start": 0, "end": 1}],
             "phonemes": [{"label": "a", "start": 0, "end": 1}]},
            {"id": "story02", "words": [], "phonemes": []}]  # fmt: skip
    with pytest.raises(ValueError, match=r"\['story02'\] have no word/phoneme alignment"):
        check_alignments(rows, "ds/stimuli")


@pytest.mark.parametrize(
    ("field", "value"),
    [("alpha", 0.0), ("alpha", 0.7), ("min_tokens", 1), ("phoneme_window_s", -0.1)],
)
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        SelectivityConfig(**{field: value})


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The test-size simulation, prepared inside its brain mask (CLI)."""
    from wav2brain.cli import main
    from wav2brain.simulation import GROUND_TRUTH_DIR, SimulationConfig, simulate_dataset

    root = tmp_path_factory.mktemp("selectivity")
    bids = simulate_dataset(root / "bids", SimulationConfig())
    mask = str(bids / GROUND_TRUTH_DIR / "brain_mask.nii.gz")
    assert main(["prepare", str(bids), "--out", str(root / "ds"), "--mask", mask, "--quiet"]) == 0
    return bids, root / "ds"


def test_simulated_dataset_streamed_equals_whole_matrix_and_resumes(simulated, tmp_path, capsys):
    """On the simulated dataset (real espeak alignments, the ground-truth model), the command's
    streamed statistics equal those of the whole frames x units matrix in one block, and a rerun
    reuses every stimulus."""
    import json

    from wav2brain.cli import main
    from wav2brain.data.alignments import read_gentle_json
    from wav2brain.features.extract import ExtractionConfig, extract_activations
    from wav2brain.simulation import GROUND_TRUTH_DIR

    bids, dataset = simulated
    model_path = bids / GROUND_TRUTH_DIR / "model"
    out = tmp_path / "sel"
    argv = ["selectivity", "--dataset", str(dataset), "--model", str(model_path), "--out",
            str(out), "--tensor", "ffn_intermediate", "--chunk-seconds", "3"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tensor"] == "ffn_intermediate" and summary["phoneme_peak_layer"] in (1, 2)
    units = pd.read_parquet(out / "units.parquet")
    assert len(units) == 2 * 64 and not units[["psi_mean", "word_onset_t"]].isna().any().any()
    for name in ("phonemes", "classes", "layers"):
        assert len(pd.read_parquet(out / f"{name}.parquet")) > 0
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == [f"{kind}_layer_0{k}.png" for kind in ("classes", "phonemes") for k in (1, 2)]

    from transformers import Wav2Vec2Model

    from wav2brain.anchoring.selectivity import _merge, _stream_audio
    from wav2brain.data.hf_layout import decode_audio

    model = Wav2Vec2Model.from_pretrained(model_path)
    merged: dict = {}
    for row in _stream_audio(dataset, {"story01", "story02"}):
        task = row["id"]
        values = extract_activations(
            model,
            decode_audio(row["audio"]),
            ExtractionConfig(tensor="ffn_intermediate", chunk_seconds=3),
        )
        alignment = read_gentle_json(bids / "stimuli" / "gentle" / task / "align.json")
        n_frames = len(values["layer_01"])
        _merge(merged, accumulate([(0, values)], [vars(t) for t in alignment.phonemes],
                                  [vars(t) for t in alignment.words], n_frames))  # fmt: skip
    whole = summarize(merged, "ffn_intermediate", SelectivityConfig()).units
    np.testing.assert_allclose(whole["psi_mean"], units["psi_mean"])
    np.testing.assert_allclose(whole["word_onset_t"], units["word_onset_t"], rtol=1e-4, atol=1e-6)

    partials = {p: p.stat().st_mtime_ns for p in (out / "partial").glob("*.npz")}
    assert len(partials) == 2
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in partials} == partials
    pd.testing.assert_frame_equal(pd.read_parquet(out / "units.parquet"), units)


@pytest.mark.filterwarnings("ignore:stimulus 'story02'.*has no word/phoneme alignment")
def test_stimulus_without_alignment_is_named_before_the_model_loads(simulated, tmp_path, capsys):
    import shutil

    from wav2brain.cli import main
    from wav2brain.simulation import GROUND_TRUTH_DIR

    bids, _ = simulated
    copy = tmp_path / "bids"
    shutil.copytree(bids, copy)
    shutil.rmtree(copy / "stimuli" / "gentle" / "story02")
    mask = str(copy / GROUND_TRUTH_DIR / "brain_mask.nii.gz")
    dataset = tmp_path / "ds_unaligned"
    assert main(["prepare", str(copy), "--out", str(dataset), "--mask", mask, "--quiet"]) == 0
    argv = ["selectivity", "--dataset", str(dataset), "--model", str(tmp_path / "no_model"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2  # the model path does not exist: the alignment check came first
    assert "stimuli ['story02'] have no word/phoneme alignment" in capsys.readouterr().err
    assert main([*argv[:2], str(tmp_path), *argv[3:]]) == 2
    assert "not a prepared dataset folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    from wav2brain.anchoring.selectivity import stimulus_alignments

    with pytest.raises(ValueError, match=r"stimuli \['story02'\] have no word/phoneme"):
        stimulus_alignments(dataset)
    with pytest.raises(ValueError, match=r"stimuli \['story09'\] not in"):
        stimulus_alignments(dataset, ["story09"])
    assert [row["id"] for row in stimulus_alignments(dataset, ["story01"])] == ["story01"]
