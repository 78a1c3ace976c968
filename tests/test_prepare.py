"""prepare_dataset / `wav2brain prepare`: BIDS in, a complete Hugging Face folder out, resumably."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from test_hf_layout import load
from wav2brain.atomic import PARTIAL_SUFFIX
from wav2brain.data.fmri import CleaningConfig
from wav2brain.data.hf_layout import CARD_NAME, MASK_NAME, RESPONSES, STIMULI
from wav2brain.data.prepare import MANIFEST_NAME, prepare_dataset

TR = 1.5
RAW = CleaningConfig(detrend=False, standardize=False)


def write_run(
    root: Path,
    subject: str,
    task: str,
    data: np.ndarray,
    onset: float = 3.0,
    duration: float = 6.0,
    zoom: float = 3.0,
) -> Path:
    """One BIDS run: 4D NIfTI, sidecar with the TR, events naming ``<task>_audio.wav``."""
    func = root / f"sub-{subject}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{subject}_task-{task}"
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([zoom, zoom, zoom, 1.0]))
    img.header.set_zooms((zoom, zoom, zoom, TR))
    img.to_filename(str(func / f"{stem}_bold.nii.gz"))
    (func / f"{stem}_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
    (func / f"{stem}_events.tsv").write_text(
        f"onset\tduration\ttrial_type\tstim_file\n{onset}\t{duration}\tstory\t{task}_audio.wav\n"
    )
    return func / f"{stem}_bold.nii.gz"


def make_bids(
    root: Path, subjects=("01", "02"), tasks=("alpha", "beta"), n_trs: int = 10, seed: int = 0
) -> dict:
    """A tiny BIDS dataset: 6-s stereo 22.05 kHz stories, 4×4×3 grids, TR 1.5 s, onset 3 s."""
    rng = np.random.default_rng(seed)
    (root / "stimuli").mkdir(parents=True)
    for task in tasks:
        stereo = 0.2 * rng.standard_normal((6 * 22_050, 2))
        sf.write(root / "stimuli" / f"{task}_audio.wav", stereo, 22_050)
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.8.0"}')
    images = {}
    for subject in subjects:
        for task in tasks:
            data = 100 + rng.standard_normal((4, 4, 3, n_trs))
            images[(subject, task)] = write_run(root, subject, task, data)
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[1:3, 1:4, :] = 1
    nib.Nifti1Image(mask, np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(str(root / "mask.nii.gz"))
    return {"images": images, "mask": root / "mask.nii.gz"}


@pytest.fixture
def bids(tmp_path):
    made = make_bids(tmp_path / "bids")
    made["root"] = tmp_path / "bids"
    return made


def test_columns_follow_the_mask_and_values_match_nilearn(bids, tmp_path):
    from nilearn.masking import apply_mask

    out = prepare_dataset(
        bids["root"], tmp_path / "hf", mask=bids["mask"], cleaning=RAW, progress=False
    )
    responses = load(out, RESPONSES).with_format("numpy")
    assert responses.num_rows == 4
    saved_mask = nib.load(str(out / MASK_NAME))
    for row in responses:
        expected = apply_mask(str(bids["images"][(row["subject"], row["task"])]), saved_mask)
        np.testing.assert_allclose(row["bold"], expected, rtol=1e-6)
        assert row["bold"].shape == (10, 18) and row["n_voxels"] == 18
        assert row["onset"] == 3.0 and row["tr"] == TR and row["mask"] == MASK_NAME
        assert row["stimulus_id"] == row["task"]
    assert int(np.asarray(saved_mask.dataobj).sum()) == 18
    stimuli = load(out, STIMULI)
    assert sorted(stimuli["id"]) == ["alpha", "beta"]
    assert stimuli[0]["sampling_rate"] == 16_000 and stimuli[0]["duration"] == pytest.approx(6.0)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True


def test_cleaning_matches_load_bold_and_trimming_moves_the_onset(bids, tmp_path):
    from wav2brain.data.bids import discover_runs
    from wav2brain.data.fmri import load_bold

    cleaning = CleaningConfig(trim_start_trs=1)
    out = prepare_dataset(
        bids["root"],
        tmp_path / "hf",
        mask=bids["mask"],
        cleaning=cleaning,
        subjects=["01"],
        tasks=["beta"],
        progress=False,
    )
    row = load(out, RESPONSES).with_format("numpy")[0]
    run = discover_runs(bids["root"], subjects=["01"], tasks=["beta"])[0]
    oracle = load_bold(run, mask=bids["mask"], cleaning=cleaning)
    np.testing.assert_allclose(row["bold"], oracle.data, rtol=1e-6)
    assert row["onset"] == pytest.approx(3.0 - TR) and row["n_trs"] == 9


def test_constant_voxels_are_zeroed_counted_and_keep_their_column(tmp_path):
    made = make_bids(tmp_path / "bids", subjects=("01",), tasks=("alpha",))
    image = nib.load(str(made["images"][("01", "alpha")]))
    data = np.asarray(image.dataobj).copy()
    data[1, 1, 0, :] = 5.0  # the first voxel of the mask in C order
    nib.Nifti1Image(data, image.affine, image.header).to_filename(
        str(made["images"][("01", "alpha")])
    )
    with pytest.warns(UserWarning, match="dropped 1"):
        out = prepare_dataset(tmp_path / "bids", tmp_path / "hf", mask=made["mask"], progress=False)
    row = load(out, RESPONSES).with_format("numpy")[0]
    assert row["dropped_voxels"] == 1 and row["dropped_voxel_indices"].tolist() == [0]
    assert row["bold"].shape == (10, 18)
    assert np.all(row["bold"][:, 0] == 0) and np.all(np.abs(row["bold"][:, 1:].std(0) - 1) < 0.1)
    assert "dropped voxels" in (out / CARD_NAME).read_text()


def test_mask_is_computed_when_none_is_given(tmp_path):
    from wav2brain.data.masks import compute_mask

    root = tmp_path / "bids"
    make_bids(root, subjects=("01",))
    rng = np.random.default_rng(3)
    paths = []
    for task in ("alpha", "beta"):
        data = 5 + rng.random((12, 12, 8, 10))
        data[3:9, 3:9, 2:6] += 100
        paths.append(write_run(root, "01", task, data))
    out = prepare_dataset(root, tmp_path / "hf", progress=False)
    mask = np.asarray(nib.load(str(out / MASK_NAME)).dataobj)
    rows = load(out, RESPONSES)
    oracle = np.asarray(compute_mask(paths).dataobj)
    np.testing.assert_array_equal(mask, oracle)
    assert 0 < mask.sum() < mask.size and not mask[0, 0, 0]
    assert set(rows["n_voxels"]) == {int(mask.sum())}
    assert "compute_epi_mask" in (out / CARD_NAME).read_text()


def test_interrupted_preparation_is_incomplete_then_resumes(bids, tmp_path, monkeypatch):
    import wav2brain.data.prepare as prepare_module

    real = prepare_module._write_run
    calls = []
    interrupt_at = [2]

    def counting(run, *args, **kwargs):
        calls.append(run.key)
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return real(run, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "_write_run", counting)
    out = tmp_path / "hf"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(bids["root"], out, mask=bids["mask"], progress=False)
    assert not (out / CARD_NAME).exists()
    assert json.loads((out / MANIFEST_NAME).read_text())["complete"] is False
    first = out / RESPONSES / f"{calls[0]}.parquet"
    assert [p.name for p in (out / RESPONSES).iterdir()] == [first.name]
    stamp = first.stat().st_mtime_ns

    calls.clear()
    interrupt_at[0] = 0
    prepare_dataset(bids["root"], out, mask=bids["mask"], progress=False)
    assert len(calls) == 3 and first.stat().st_mtime_ns == stamp
    assert (out / CARD_NAME).is_file() and load(out, RESPONSES).num_rows == 4
    card_stamp = (out / CARD_NAME).stat().st_mtime_ns
    calls.clear()
    prepare_dataset(bids["root"], out, mask=bids["mask"], progress=False)
    assert calls == [] and (out / CARD_NAME).stat().st_mtime_ns == card_stamp


def test_a_failed_shard_write_leaves_nothing_half_written(bids, tmp_path, monkeypatch):
    import wav2brain.data.hf_layout as layout

    real = layout.pq.write_table

    def failing(table, where, **kwargs):
        if "bold" in table.column_names:
            Path(where).write_bytes(b"half a file")
            raise OSError("disk full")
        return real(table, where, **kwargs)

    monkeypatch.setattr(layout.pq, "write_table", failing)
    out = tmp_path / "hf"
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(bids["root"], out, mask=bids["mask"], progress=False)
    leftovers = [p for p in out.rglob("*") if PARTIAL_SUFFIX in p.name]
    assert leftovers == [] and not (out / CARD_NAME).exists()
    assert list((out / RESPONSES).glob("*.parquet")) == []


def test_resume_with_other_settings_and_foreign_folders_are_refused(bids, tmp_path, monkeypatch):
    out = prepare_dataset(
        bids["root"], tmp_path / "hf", mask=bids["mask"], subjects=["01"], progress=False
    )
    with pytest.raises(ValueError, match=r"other settings \(differing: cleaning\)"):
        prepare_dataset(
            bids["root"], out, mask=bids["mask"], subjects=["01"], cleaning=RAW, progress=False
        )
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty folder without wav2brain_prepare.json"):
        prepare_dataset(bids["root"], foreign, mask=bids["mask"], progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_bad_roots_filters_and_masks_are_named(bids, tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(FileNotFoundError, match="BIDS root not found.*nowhere"):
        prepare_dataset(tmp_path / "nowhere", out)
    with pytest.raises(ValueError, match=r"subjects \['99'\] match no run; labels found: \['01'"):
        prepare_dataset(bids["root"], out, subjects=["99"])
    with pytest.raises(FileNotFoundError, match="mask file not found.*absent.nii.gz"):
        prepare_dataset(bids["root"], out, mask=tmp_path / "absent.nii.gz")
    assert not out.exists()


def test_short_scans_and_mixed_grids_fail_before_any_writing(tmp_path):
    root = tmp_path / "bids"
    make_bids(root, subjects=("01",), tasks=("alpha", "beta"))
    short = write_run(root, "01", "alpha", np.ones((4, 4, 3, 4)) + 100)
    out = tmp_path / "hf"
    with pytest.raises(ValueError, match=f"{short.name}.*4 volumes"):
        prepare_dataset(root, out)
    assert not out.exists()
    other = write_run(
        root, "01", "alpha", 100 + np.random.default_rng(1).random((5, 4, 3, 10)), zoom=2.0
    )
    with pytest.raises(
        ValueError, match=f"subject '01' has runs with different voxel grids.*{other.name}"
    ):
        prepare_dataset(root, out)
    assert not out.exists()


def test_an_end_trim_into_the_stimulus_fails_before_any_writing(bids, tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(ValueError, match="trim"):
        prepare_dataset(bids["root"], out, cleaning=CleaningConfig(trim_end_trs=6))
    assert not out.exists()


def test_mapping_arrays_with_different_column_counts_are_refused(tmp_path):
    root = tmp_path / "bids"
    make_bids(root, subjects=("01",), tasks=("alpha", "beta"))
    rows = ["subject\ttask\trun\tbold\tstimulus\tonset\ttr"]
    for task, columns in (("alpha", 5), ("beta", 7)):
        np.save(root / f"{task}.npy", np.random.default_rng(0).standard_normal((8, columns)))
        rows.append(f"01\t{task}\t\t{task}.npy\t{task}_audio.wav\t0\t1.5")
    (root / "map.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"different voxel counts \(5 vs 7 columns\).*beta.npy"):
        prepare_dataset(root, tmp_path / "hf", mapping=root / "map.tsv")


FMRIPREP_PATTERNS = ("trans_*", "a_comp_cor_0[0-5]", "framewise_displacement")
FMRIPREP_CHOSEN = ["trans_x", "trans_y"] + [f"a_comp_cor_0{i}" for i in range(6)]
FMRIPREP_CHOSEN.append("framewise_displacement")


def write_confounds(bold: Path, n_rows: int, seed: int = 0) -> Path:
    """An fMRIPrep-style ``desc-confounds_timeseries.tsv`` beside ``bold`` (n/a in FD's row 0)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    names = ["csf", "trans_x", "trans_y", "rot_x"] + [f"a_comp_cor_0{i}" for i in range(8)]
    table = pd.DataFrame(rng.standard_normal((n_rows, len(names))), columns=names)
    table["framewise_displacement"] = np.abs(rng.standard_normal(n_rows)) + 0.2
    table.loc[0, "framewise_displacement"] = np.nan
    stem = bold.name[: -len("_bold.nii.gz")]
    path = bold.with_name(f"{stem}_desc-confounds_timeseries.tsv")
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


@pytest.mark.parametrize(("start", "end"), [(0, 0), (2, 1)])
def test_confounds_are_regressed_like_nilearn_clean(tmp_path, start, end):
    import pandas as pd
    from nilearn.masking import apply_mask
    from nilearn.signal import clean

    made = make_bids(tmp_path / "bids", subjects=("01",), tasks=("alpha",), n_trs=30)
    bold = made["images"][("01", "alpha")]
    table = pd.read_csv(write_confounds(bold, 30), sep="\t")
    cleaning = CleaningConfig(
        detrend=False, trim_start_trs=start, trim_end_trs=end, confound_columns=FMRIPREP_PATTERNS
    )
    out = prepare_dataset(
        tmp_path / "bids",
        tmp_path / "hf",
        mask=made["mask"],
        cleaning=cleaning,
        progress=False,
    )
    row = load(out, RESPONSES).with_format("numpy")[0]
    confounds = table[FMRIPREP_CHOSEN].to_numpy()[start : 30 - end]
    confounds = pd.DataFrame(confounds).bfill().to_numpy()  # nilearn's rule: row 0 copies row 1
    signals = apply_mask(str(bold), str(made["mask"]))[start : 30 - end]
    expected = clean(
        signals, detrend=False, standardize="zscore_sample", confounds=confounds, t_r=TR
    )
    np.testing.assert_allclose(row["bold"], expected, atol=1e-5)
    unconfounded = clean(signals, detrend=False, standardize="zscore_sample", t_r=TR)
    assert np.abs(row["bold"] - unconfounded).max() > 0.1
    text = (out / CARD_NAME).read_text()
    assert '"confounds_used"' in text and '"a_comp_cor_05"' in text
    assert '"a_comp_cor_06"' not in text and '"trans_*"' in text
    settings = json.loads((out / MANIFEST_NAME).read_text())["settings"]
    assert settings["runs"][0]["confound_columns"] == FMRIPREP_CHOSEN


def test_bad_confounds_fail_before_any_writing(tmp_path):
    import pandas as pd

    made = make_bids(tmp_path / "bids", subjects=("01",), tasks=("alpha", "beta"), n_trs=12)
    root, out = tmp_path / "bids", tmp_path / "hf"
    alpha, beta = made["images"][("01", "alpha")], made["images"][("01", "beta")]
    write_confounds(alpha, 12)
    cleaning = CleaningConfig(confound_columns=FMRIPREP_PATTERNS)
    with pytest.raises(ValueError, match=f"{beta.name}: confound columns .* no confounds table"):
        prepare_dataset(root, out, cleaning=cleaning, progress=False)
    argv = ["prepare", str(root), "--out", str(out), "--quiet", "--confounds", "trans_*", "rot_*"]
    with pytest.raises(ValueError, match=f"{beta.name}: confound columns \\['trans_\\*', 'rot_"):
        run_command(argv)
    assert not out.exists()
    short = write_confounds(beta, 11)
    with pytest.raises(ValueError, match=f"{short.name} have 11 rows but .*{beta.name} has 12 vol"):
        prepare_dataset(root, out, cleaning=cleaning, progress=False)
    write_confounds(beta, 12)
    with pytest.raises(ValueError, match=r"no column matches \['wm'\]; available columns: \['csf'"):
        prepare_dataset(
            root, out, cleaning=CleaningConfig(confound_columns=("csf", "wm")), progress=False
        )
    table = pd.read_csv(short, sep="\t")
    table.loc[5, "trans_x"] = np.nan
    table.to_csv(short, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(ValueError, match="confound 'trans_x' is n/a or infinite at row 5"):
        prepare_dataset(root, out, cleaning=cleaning, progress=False)
    assert not out.exists()


def test_mapping_table_confounds_reach_preprocessed_arrays(tmp_path):
    from nilearn.signal import clean

    root = tmp_path / "bids"
    make_bids(root, subjects=("01",), tasks=("alpha",))
    rng = np.random.default_rng(3)
    motion = rng.standard_normal(20)
    np.save(root / "alpha.npy", rng.standard_normal((20, 6)) + 2 * motion[:, None])
    lines = "\n".join(f"{value}\t{rng.standard_normal()}" for value in motion)
    (root / "motion.tsv").write_text(f"motion\tother\n{lines}\n")
    (root / "map.tsv").write_text(
        "subject\ttask\trun\tbold\tstimulus\tonset\ttr\tconfounds\n"
        "01\talpha\t\talpha.npy\talpha_audio.wav\t0\t1.5\tmotion.tsv\n"
    )
    cleaning = CleaningConfig(detrend=False, confound_columns=("motion",))
    out = prepare_dataset(
        root, tmp_path / "hf", mapping=root / "map.tsv", cleaning=cleaning, progress=False
    )
    row = load(out, RESPONSES).with_format("numpy")[0]
    expected = clean(
        np.load(root / "alpha.npy"),
        detrend=False,
        standardize="zscore_sample",
        confounds=motion[:, None],
        t_r=TR,
    )
    np.testing.assert_allclose(row["bold"], expected, atol=1e-5)


def run_command(argv: list[str]) -> int:
    """Parse ``wav2brain prepare`` arguments with the command's own parser and run it."""
    import argparse

    from wav2brain.commands import prepare as command

    parser = argparse.ArgumentParser(prog="wav2brain")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prepare_writes_the_folder_and_reports_errors(bids, tmp_path, capsys):
    out = tmp_path / "hf"
    card = tmp_path / "card.md"
    card.write_text("## Source\n\nA tiny fabricated dataset.")
    status = run_command(
        [
            "prepare",
            str(bids["root"]),
            "--out",
            str(out),
            "--mask",
            str(bids["mask"]),
            "--subjects",
            "sub-02",
            "--no-detrend",
            "--quiet",
            "--card",
            str(card),
            "--license",
            "cc0-1.0",
            "--trim-start",
            "1",
            "--drift-order",
            "2",
        ]
    )
    assert status == 0 and capsys.readouterr().out.strip() == str(out)
    responses = load(out, RESPONSES)
    assert set(responses["subject"]) == {"02"} and set(responses["n_trs"]) == {9}
    text = (out / CARD_NAME).read_text()
    assert "A tiny fabricated dataset." in text and "license: cc0-1.0" in text
    assert '"detrend": false' in text and '"trim_start_trs": 1' in text
    assert '"drift_order": 2' in text
    with pytest.raises(FileNotFoundError, match="--card file not found"):
        run_command(
            [
                "prepare",
                str(bids["root"]),
                "--out",
                str(tmp_path / "x"),
                "--card",
                str(tmp_path / "missing.md"),
            ]
        )
    with pytest.raises(FileNotFoundError, match="BIDS root not found"):
        run_command(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from wav2brain.simulation import SimulationConfig, simulate_dataset

    root = tmp_path_factory.mktemp("sim") / "bids"
    os.environ.setdefault("TQDM_DISABLE", "1")
    return simulate_dataset(root, SimulationConfig())


def test_simulated_dataset_round_trip_to_a_forward_pass(simulated, tmp_path):
    import torch

    from test_windows import tiny_model
    from wav2brain.data.windows import BrainWindowCollator, BrainWindows

    mask = simulated / "derivatives" / "ground_truth" / "brain_mask.nii.gz"
    out = prepare_dataset(simulated, tmp_path / "hf", mask=mask, progress=False)
    windows = BrainWindows.from_folder(
        out, subjects=["001", "002"], cache_dir=str(tmp_path / "cache")
    )
    assert len(windows) > 0
    voxels = windows.subject_voxels["001"]
    assert voxels == int(np.asarray(nib.load(str(mask)).dataobj).astype(bool).sum())
    batch = BrainWindowCollator()([windows[i] for i in (0, len(windows) - 1)])
    model = tiny_model(num_voxels=None, subject_voxels=windows.subject_voxels)
    with torch.no_grad():
        output = model(**batch)
    assert output.predictions.shape == (2, voxels) and torch.isfinite(output.loss)


def load_script(name: str):
    """Import ``dataset_scripts/<name>.py`` (scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dataset_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 20
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "phone"
        xmin = 0
        xmax = 20
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 1.5
            text = "S"
        intervals [2]:
            xmin = 1.5
            xmax = 2.0
            text = "OW"
    item [2]:
        class = "IntervalTier"
        name = "word"
        xmin = 0
        xmax = 20
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 2.0
            text = "SOULS"
"""


def test_lebel_converter_on_the_real_layout_with_stand_in_binaries(real_layouts, tmp_path):
    import shutil

    import h5py

    root = tmp_path / "ds003020"
    shutil.copytree(real_layouts / "ds003020", root)
    respdict = json.loads((root / "derivative" / "respdict.json").read_text())
    n_rows = respdict["souls"] - 20  # DERIVED_SHAPES.tsv: (respdict - 20, voxels)
    responses = root / "derivative" / "preprocessed_data" / "UTS01"
    responses.mkdir(parents=True)
    data = np.random.default_rng(0).standard_normal((n_rows, 6))
    with h5py.File(responses / "souls.hf5", "w") as handle:
        handle["data"] = data
    (root / "stimuli").mkdir(exist_ok=True)
    sf.write(root / "stimuli" / "souls.wav", 0.1 * np.ones((20 * 11_025, 2)), 11_025)
    (root / "derivative" / "TextGrids").mkdir(exist_ok=True)
    (root / "derivative" / "TextGrids" / "souls.TextGrid").write_text(TEXTGRID)

    lebel = load_script("lebel")
    rows = lebel.mapping_rows(root, lebel.DEFAULT_ONSET_S)
    assert [(r["subject"], r["task"], r["tr"], r["onset"]) for r in rows] == [
        ("UTS01", "souls", "2.0", "-10.0")
    ]
    out = tmp_path / "hf"
    assert lebel.main([str(root), "--out", str(out), "--quiet", "--no-detrend"]) == 0
    row = load(out, RESPONSES).with_format("numpy")[0]
    assert row["subject"] == "UTS01" and row["onset"] == -10.0 and row["tr"] == 2.0
    assert row["bold"].shape == (n_rows, 6)
    expected = (data - data.mean(0)) / data.std(0, ddof=1)
    np.testing.assert_allclose(row["bold"], expected, atol=1e-4)
    stimulus = load(out, STIMULI)[0]
    assert stimulus["words"] == [{"label": "SOULS", "start": 0.0, "end": 2.0}]
    assert [p["label"] for p in stimulus["phonemes"]] == ["S", "OW"]
    text = (out / CARD_NAME).read_text()
    assert "license: cc0-1.0" in text and "LeBel" in text and "-10 s" in text


def test_lebel_converter_needs_responses(real_layouts, tmp_path):
    lebel = load_script("lebel")
    with pytest.raises(FileNotFoundError, match="preprocessed_data"):
        lebel.mapping_rows(real_layouts / "ds003020", -10.0)


def test_generic_and_narratives_cards(real_layouts, bids, tmp_path):
    generic = load_script("generic_bids")
    card = generic.card_from_description(real_layouts / "ds002345", "story")
    assert card.pretty_name == "Narratives" and card.license == "cc0-1.0"
    assert "Nastase" in card.source and "10.18112/openneuro.ds002345.v1.1.4" in card.source
    bare = generic.card_from_description(bids["root"], "story")
    assert bare.license == "other" and "not stated" in bare.source
    with pytest.raises(FileNotFoundError, match="dataset_description.json not found"):
        generic.card_from_description(tmp_path, "story")
    narratives = load_script("narratives")
    out = tmp_path / "hf"
    argv = [str(bids["root"]), "--out", str(out), "--mask", str(bids["mask"]), "--quiet"]
    assert narratives.main(argv + ["--tasks", "alpha"]) == 0
    text = (out / CARD_NAME).read_text()
    assert "Narratives (ds002345)" in text and "license: cc0-1.0" in text and "1.52 s" in text
