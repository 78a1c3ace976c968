"""One scan-time rule (wav2brain.data.timing): its unit tests, where prepare stores the reference,
and a check that training windows and feature rows agree to the sample on the real layouts."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_hf_layout import load
from test_prepare import make_bids, run_command
from wav2brain.data.hf_layout import CARD_NAME, RESPONSES, RunSummary, timing_text
from wav2brain.data.prepare import prepare_dataset, with_reference
from wav2brain.data.timing import (
    REFERENCE_COLUMN,
    REFERENCE_CORRECTED,
    REFERENCE_NONE,
    REFERENCE_USER,
    check_reference,
    check_tr,
    first_sample_time,
    sample_times,
    slice_time_reference,
    stored_references,
)
from wav2brain.data.windows import BrainWindows, WindowConfig
from wav2brain.features.frontend import FrameGeometry
from wav2brain.features.pipeline import RunTiming, entry_grid
from wav2brain.features.resample import TRGridConfig, grid_phase, row_offset, run_grid

SR = 16_000
WAV2VEC2 = FrameGeometry((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
"""The wav2vec2 front end: 320 samples per frame, 50 Hz."""

# ---------------------------------------------------------------------------------- the rule


def test_tr_k_samples_at_k_tr_plus_reference_minus_onset():
    times = sample_times(np.arange(4), 1.5, 3.0, 0.75)
    np.testing.assert_array_equal(times, [-2.25, -0.75, 0.75, 2.25])
    assert sample_times([2], 2.0, -10.0)[0] == 14.0  # LeBel: sound 10 s before row 0
    assert first_sample_time(1.5, 3.0, 0.75) == -2.25
    assert sample_times(np.array([], np.int64), 1.5, 0.0).shape == (0,)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sample_times(np.array([0.5]), 1.5, 0.0), "TR indices must be integers"),
        (lambda: sample_times([0], 1.5, float("nan")), "onset must be a finite number"),
        (lambda: sample_times([0], 1.5, 0.0, 1.5), r"reference 1.5 s must lie in \[0, TR=1.5\)"),
        (lambda: sample_times([0], 1.5, 0.0, -0.1), r"reference -0.1 s must lie in"),
        (lambda: first_sample_time(2.0, 0.0, float("inf")), "reference inf s"),
        (lambda: check_reference(750.0, 1.5, "sub-01 run 1"), r"sub-01 run 1: slice-time"),
    ],
)
def test_bad_times_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_reference_comes_from_the_sidecar_only_when_slices_were_corrected():
    assert slice_time_reference({}, 1.5) == (0.0, REFERENCE_NONE)
    raw = {"SliceTiming": [0.0, 0.75, 0.25, 1.0], "StartTime": 0.75}
    assert slice_time_reference(raw, 1.5) == (0.0, REFERENCE_NONE)  # raw: no slice was moved
    fmriprep = {"SliceTimingCorrected": True, "StartTime": 0.698}
    assert slice_time_reference(fmriprep, 1.5) == (0.698, REFERENCE_CORRECTED)
    with pytest.raises(ValueError, match="SliceTimingCorrected but gives no StartTime"):
        slice_time_reference({"SliceTimingCorrected": True}, 1.5)
    with pytest.raises(ValueError, match=r"sidecar StartTime: slice-time reference 1.6 s"):
        slice_time_reference({"SliceTimingCorrected": True, "StartTime": 1.6}, 1.5)


def test_tr_sources_agree_or_fail_naming_every_source():
    sources = {"mapping table runs.tsv row 2": 2.0, "sidecar a.json": None, "header a.nii": 2.01}
    assert check_tr(sources, "run a") == 2.0
    with pytest.raises(ValueError, match=r"run a: TR sources disagree by more than 1%: .*2.0.*2.5"):
        check_tr({"table row 1": 2.0, "header": 2.5}, "run a")
    with pytest.raises(ValueError, match=r"TR 2000.0 from table row 1 .*milliseconds"):
        check_tr({"table row 1": 2000.0}, "run a")
    with pytest.raises(ValueError, match=r"TR 0.1 from header is outside 0.2-20.0 s"):
        check_tr({"header": 0.1}, "run a")
    with pytest.raises(ValueError, match=r"run a: no TR found \(looked in sidecar, header\)"):
        check_tr({"sidecar": None, "header": None}, "run a")


def test_stored_references_are_checked_and_old_tables_read_as_zero(caplog):
    table = {"tr": [1.5, 2.0], REFERENCE_COLUMN: [0.75, 0.0]}
    np.testing.assert_array_equal(stored_references(table, "DIR/responses"), [0.75, 0.0])
    with pytest.raises(ValueError, match=r"DIR/responses row 1: slice-time reference 2.0 s"):
        stored_references({"tr": [1.5, 2.0], REFERENCE_COLUMN: [0.75, 2.0]}, "DIR/responses")
    with caplog.at_level("WARNING", logger="wav2brain.data.timing"):
        old = stored_references({"tr": [1.5, 1.5, 1.5]}, "DIR/responses")
    np.testing.assert_array_equal(old, [0.0, 0.0, 0.0])
    assert "DIR/responses has no slice_time_reference column" in caplog.text


# ---------------------------------------------------------------------- the features' TR grid


@pytest.mark.parametrize(
    ("tr", "onset", "reference"),
    [(1.5, 3.0, 0.0), (1.5, 3.0, 0.75), (2.0, -10.0, 1.0), (1.52, 4.4, 0.1)],
)
def test_run_grid_times_are_the_rule_bit_for_bit(tr, onset, reference):
    grid = run_grid(tr, onset, 300, reference)
    assert np.array_equal(grid.times(), sample_times(np.arange(300), tr, onset, reference))
    timing = RunTiming(tr, onset, reference)
    assert timing.grid(300) == grid
    assert timing.phase_s == grid_phase(tr, onset, reference)
    assert 0 <= timing.phase_s < tr
    whole_trs = (grid.first_time_s - timing.phase_s) / tr  # the phase is TR 0's time mod TR
    assert abs(whole_trs - round(whole_trs)) < 1e-6


def test_reference_and_onset_enter_the_grid_phase_as_their_difference():
    # mid-TR sampling of a story at scan time 3.75 s is acquisition-start sampling at 3.0 s
    assert grid_phase(1.5, 3.75, 0.75) == grid_phase(1.5, 3.0, 0.0) == 0.0
    assert grid_phase(1.5, 3.0, 0.75) == 0.75
    assert grid_phase(1.5, 3.0, 0.75) != grid_phase(1.5, 3.0, 0.0)  # a reference moves the phase
    stimulus = entry_grid(RunTiming(1.5, 3.0, 0.0), 500, 50.0, TRGridConfig())
    with pytest.raises(ValueError, match="not on the stimulus grid"):
        row_offset(stimulus, RunTiming(1.5, 3.0, 0.75).grid(20))
    assert row_offset(stimulus, RunTiming(1.5, 3.75, 0.75).grid(20)) == row_offset(
        stimulus, RunTiming(1.5, 3.0, 0.0).grid(20)
    )


def test_run_timing_is_read_from_a_responses_row_and_checked():
    row = {"tr": 1.5, "onset": 3.0, REFERENCE_COLUMN: 0.75, "subject": "01"}
    assert RunTiming.from_row(row) == RunTiming(1.5, 3.0, 0.75)
    assert RunTiming.from_row({"tr": 1.5, "onset": 3.0}) == RunTiming(1.5, 3.0, 0.0)
    with pytest.raises(ValueError, match=r"RunTiming: slice-time reference 1.5 s"):
        RunTiming(1.5, 3.0, 1.5)
    with pytest.raises(ValueError, match="TR must be a positive number of seconds"):
        run_grid(0.0, 3.0, 10)


# ------------------------------------------------------------------ prepare stores the reference


def test_prepare_stores_the_reference_per_run_and_in_the_card(tmp_path):
    made = make_bids(tmp_path / "bids", subjects=("01",), tasks=("alpha",))
    out = prepare_dataset(tmp_path / "bids", tmp_path / "raw", mask=made["mask"], progress=False)
    row = load(out, RESPONSES)[0]
    assert row[REFERENCE_COLUMN] == 0.0
    assert f"slice-time reference 0 s, {REFERENCE_NONE}: every run" in (out / CARD_NAME).read_text()
    assert (
        run_command(
            [
                "prepare",
                str(tmp_path / "bids"),
                "--out",
                str(tmp_path / "mid"),
                "--mask",
                str(made["mask"]),
                "--slice-time-reference",
                "0.75",
                "--quiet",
            ]
        )
        == 0
    )
    mid = tmp_path / "mid"
    assert load(mid, RESPONSES)[0][REFERENCE_COLUMN] == 0.75
    card = (mid / CARD_NAME).read_text()
    assert f"slice-time reference 0.75 s, {REFERENCE_USER}: every run" in card
    assert "`k * tr + slice_time_reference - onset`" in card
    windows = BrainWindows.from_folder(mid, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(windows.tr_times(0), np.arange(10) * 1.5 + 0.75 - 3.0)
    with pytest.raises(ValueError, match="prepared with other settings"):  # no silent mix
        prepare_dataset(tmp_path / "bids", mid, mask=made["mask"], slice_time_reference=0.5)


def test_a_reference_outside_the_tr_fails_before_anything_is_written(tmp_path):
    made = make_bids(tmp_path / "bids", subjects=("01",), tasks=("alpha",))
    with pytest.raises(ValueError, match=r"sub-01_task-alpha: slice-time reference 1.5 s"):
        prepare_dataset(tmp_path / "bids", tmp_path / "out", slice_time_reference=1.5)
    argv = ["prepare", str(tmp_path / "bids"), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"slice-time reference -0.5 s must lie in \[0, TR=1.5\)"):
        run_command(argv + ["--mask", str(made["mask"]), "--slice-time-reference", "-0.5"])
    assert not (tmp_path / "out").exists()


def test_a_bad_reference_from_discovery_is_named_with_its_source(tmp_path):
    from wav2brain.data.bids import RunSpec

    run = RunSpec(
        subject="01",
        task="a",
        run=None,
        session=None,
        bold_path=tmp_path / "sub-01_task-a_bold.nii.gz",
        stimulus_path=tmp_path / "a.wav",
        stimulus_id="a",
        onset=0.0,
        tr=2.0,
        slice_time_reference=2.5,
        slice_time_source=REFERENCE_CORRECTED,
    )
    with pytest.raises(
        ValueError, match=r"sub-01_task-a \(slice-time corrected \(sidecar StartTime\)\): slice"
    ):
        with_reference([run], None)
    assert with_reference([run], 0.5)[0].slice_time_reference == 0.5


def test_the_card_lists_each_reference_of_a_mixed_dataset():
    def summary(name: str, reference: float, source: str) -> RunSummary:
        return RunSummary(f"responses/{name}.parquet", "01", "t", None, None, "s", "MNI", 10, 5,
                          1.5, 0, reference, source)  # fmt: skip

    text = timing_text(
        [
            summary("sub-01_task-a", 0.0, REFERENCE_NONE),
            summary("sub-02_task-a", 0.7, REFERENCE_CORRECTED),
            summary("sub-03_task-a", 0.7, REFERENCE_CORRECTED),
        ]
    )
    assert f"- slice-time reference 0 s, {REFERENCE_NONE}: 1 run(s): sub-01_task-a" in text
    assert (
        f"- slice-time reference 0.7 s, {REFERENCE_CORRECTED}: 2 run(s): sub-02_task-a, "
        "sub-03_task-a"
    ) in text


# ------------------------------------------------- windows and feature rows agree to the sample


def disagreements(windows: BrainWindows, timings: dict[int, RunTiming]) -> list[tuple[int, int]]:
    """(response row, TR) pairs where the training window and the feature row disagree.

    For every run, the feature side is built as ``wav2brain extract`` builds it from
    ``timings[row]``: the run's grid and the cache entry's stimulus grid (:func:`entry_grid`), the
    run's rows found in the entry by :func:`row_offset`. The windows side is the BrainWindows time
    of each TR and the end sample of each of its items. They must agree exactly in seconds (run
    grid) and in samples (entry rows, every TR, and every item's window end).
    """
    bad: list[tuple[int, int]] = []
    n_samples = dict(zip(windows.stimuli["id"], windows.stimuli["n_samples"], strict=True))
    config = TRGridConfig()
    feature_samples = {}
    for row, timing in timings.items():
        n_trs = int(windows.responses[row]["n_trs"])
        stimulus = windows.responses[row]["stimulus_id"]
        run = timing.grid(n_trs)
        entry = entry_grid(timing, WAV2VEC2.n_frames(n_samples[stimulus]), 50.0, config)
        try:
            offset = row_offset(entry, run)
        except ValueError:  # not even on the same sub-TR phase
            bad += [(row, t) for t in range(n_trs)]
            continue
        entry_times = entry.times(offset, offset + n_trs)
        window_times = windows.tr_times(row)
        samples = np.round(entry_times * SR).astype(np.int64)
        differ = (run.times() != window_times) | (samples != np.round(window_times * SR))
        bad += [(row, int(t)) for t in np.flatnonzero(differ)]
        feature_samples[row] = samples
    for index in range(len(windows)):
        row, t = windows.locate(index)
        if row in feature_samples and windows.window_bounds(index)[1] != feature_samples[row][t]:
            bad.append((row, t))
    return sorted(set(bad))


def read_timings(windows: BrainWindows) -> dict[int, RunTiming]:
    """Each run's timing as ``wav2brain extract`` reads it from the responses table."""
    columns = windows.responses.select_columns(["tr", "onset", REFERENCE_COLUMN]).to_pandas()
    return {
        row: RunTiming.from_row(values) for row, values in enumerate(columns.to_dict("records"))
    }


def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dataset_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_folders(narratives, lebel, tmp_path_factory) -> dict[str, BrainWindows]:
    """Every story run of the real Narratives and LeBel layouts, prepared and windowed.

    Narratives keeps the default reference (0 s, raw data); LeBel is prepared with a reference
    of 1 s (half its 2-s TR, as fMRIPrep output would have), so both kinds of run are checked.
    """
    from wav2brain.data.bids import read_mapping_table

    out = tmp_path_factory.mktemp("prepared")
    first = next(narratives.glob("sub-001/func/*_bold.nii.gz"))
    image = nib.load(str(first))
    mask = nib.Nifti1Image(np.ones(image.shape[:3], np.uint8), image.affine)
    lebel_script = load_script("lebel")
    rows = lebel_script.mapping_rows(lebel, lebel_script.DEFAULT_ONSET_S)
    table = lebel_script.write_mapping(rows, out / "lebel_mapping.tsv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped shapes runs
        narratives_hf = prepare_dataset(
            narratives,
            out / "narratives",
            mask=mask,
            tasks=["pieman", "tunnel", "milkyway", "prettymouth"],
            align_on={"prettymouth": "first"},  # keep both disagreeing runs: every run is checked
            progress=False,
        )
        lebel_hf = prepare_dataset(
            lebel,
            out / "lebel",
            mapping=read_mapping_table(table, root=lebel),
            slice_time_reference=1.0,
            progress=False,
        )
    cache = {"cache_dir": str(out / "cache")}
    return {
        "narratives": BrainWindows.from_folder(narratives_hf, **cache),
        "lebel": BrainWindows.from_folder(lebel_hf, **cache),
    }


@pytest.mark.parametrize("name", ["narratives", "lebel"])
def test_windows_and_feature_rows_agree_on_every_run_of_the_real_layouts(real_folders, name):
    windows = real_folders[name]
    timings = read_timings(windows)
    # LeBel: 5 stories + 11 repeats of the held-out story, each repeat its own run, x 2 subjects
    expected_runs = {"narratives": 9, "lebel": 32}[name]
    assert len(timings) == expected_runs and len(windows) > 0
    references = {timing.reference_s for timing in timings.values()}
    assert references == ({0.0} if name == "narratives" else {1.0})
    assert disagreements(windows, timings) == []


def test_the_agreement_check_detects_a_one_sample_or_half_tr_error(real_folders):
    windows = real_folders["lebel"]
    timings = read_timings(windows)
    row = 3
    shifted = dict(timings)
    good = timings[row]
    shifted[row] = RunTiming(good.tr_s, good.onset_s, good.reference_s + 1 / SR)  # one sample
    found = disagreements(windows, shifted)
    assert found and {r for r, _ in found} == {row}
    shifted[row] = RunTiming(good.tr_s, good.onset_s + 0.5 * good.tr_s, good.reference_s)
    assert {r for r, _ in disagreements(windows, shifted)} == {row}
    shifted[row] = RunTiming(good.tr_s, good.onset_s, 0.0)  # the reference forgotten
    assert {r for r, _ in disagreements(windows, shifted)} == {row}
    # the windows side moved by one sample (a lag of 1/16000 s) disagrees on every run
    lagged = BrainWindows(
        windows.stimuli, windows.responses, WindowConfig(lag_trs=1 / (SR * good.tr_s))
    )
    assert {r for r, _ in disagreements(lagged, timings)} == set(timings)
