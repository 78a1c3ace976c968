"""Acceptance cases of the data layer: mistakes a tired researcher makes, each refused by name.

Each test pairs the mistake with a negative control (the same input, corrected, is accepted).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_prepare import make_bids
from wav2brain.data.bids import discover_runs, read_mapping_table
from wav2brain.data.derivatives import pair_derivatives
from wav2brain.data.prepare import prepare_dataset

SPACE = "MNI152NLin2009cAsym"
ALPHA = "sub-01/func/sub-01_task-alpha_bold.nii.gz"
BETA = "sub-01/func/sub-01_task-beta_bold.nii.gz"
HEADER = "subject\ttask\trun\tbold\tstimulus\tonset"


@pytest.fixture
def root(tmp_path) -> Path:
    """Two subjects, tasks alpha/beta: 10 TRs of 1.5 s, 6-s WAVs."""
    make_bids(tmp_path / "bids")
    return tmp_path / "bids"


def table(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join((header, *rows)) + "\n")
    return path


@pytest.mark.parametrize(
    ("column", "known", "value"), [("duraton", "duration", 6), ("TR", "tr", 1.5)]
)
def test_misspelt_mapping_column_is_an_error(root, tmp_path, column, known, value):
    bad = table(
        tmp_path / "map.tsv",
        f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t3\t{value}",
        header=f"{HEADER}\t{column}",
    )
    with pytest.raises(
        ValueError, match=rf"map.tsv: column\(s\) '{column}' \(expected '{known}'\)"
    ):
        read_mapping_table(bad, root=root)
    good = table(
        tmp_path / "ok.tsv",
        f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t3\t{value}",
        header=f"{HEADER}\t{known}",
    )
    (run,) = read_mapping_table(good, root=root)  # negative control: the column spelt right
    assert run.onset == 3.0


def test_bookkeeping_column_beside_its_known_twin_is_only_warned_about(root, tmp_path):
    """``run`` is present, so ``runs`` is not taken for it (a column like nothing absent)."""
    path = table(
        tmp_path / "map.tsv",
        f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t3\tx",
        header=f"{HEADER}\truns",
    )
    with pytest.warns(UserWarning, match=r"\['runs'\] are not read"):
        read_mapping_table(path, root=root)


def test_duration_longer_than_the_wav_names_the_row(root, tmp_path):
    header = f"{HEADER}\tduration"
    bad = table(
        tmp_path / "map.tsv", f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t0\t6.5", header=header
    )
    with pytest.raises(
        ValueError, match=r"map.tsv, row 1 \(line 2\): duration 6.5 s .*alpha_audio.wav \(6.000 s"
    ):
        read_mapping_table(bad, root=root)
    good = table(tmp_path / "ok.tsv", f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t0\t6", header=header)
    (run,) = read_mapping_table(good, root=root)
    assert run.duration == 6.0


def test_run_7_and_run_07_are_one_run(root, tmp_path):
    bad = table(
        tmp_path / "map.tsv",
        f"01\talpha\t7\t{ALPHA}\talpha_audio.wav\t0",
        f"01\talpha\t07\t{BETA}\talpha_audio.wav\t0",
    )
    with pytest.raises(
        ValueError, match=r"several files describe the run sub-01_task-alpha_run-7: .*row 2"
    ):
        discover_runs(root, mapping=bad)
    good = table(
        tmp_path / "ok.tsv",
        f"01\talpha\t7\t{ALPHA}\talpha_audio.wav\t0",
        f"01\talpha\t08\t{BETA}\talpha_audio.wav\t0",
    )
    assert [r.run for r in discover_runs(root, mapping=good)] == ["7", "08"]


def test_one_bold_file_in_two_rows_is_an_error(root, tmp_path):
    bad = table(
        tmp_path / "map.tsv",
        f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t0",
        f"02\talpha\t\t{ALPHA}\talpha_audio.wav\t0",
    )
    with pytest.raises(
        ValueError, match=r"one BOLD file .*alpha_bold.nii.gz is given 2 times.*row 2"
    ):
        discover_runs(root, mapping=bad)
    other = table(  # negative control: the same scan for two stimuli is two runs
        tmp_path / "ok.tsv",
        f"01\talpha\t\t{ALPHA}\talpha_audio.wav\t0",
        f"01\tbeta\t\t{ALPHA}\tbeta_audio.wav\t0",
    )
    assert len(discover_runs(root, mapping=other)) == 2


@pytest.mark.parametrize("onset", [3000.0, -20.0])
def test_array_outside_its_wav_is_refused_before_any_work(root, tmp_path, onset):
    np.save(root / "resp.npy", np.random.default_rng(0).standard_normal((10, 5)).astype("f4"))
    header = f"{HEADER}\ttr"
    bad = table(
        tmp_path / "map.tsv", f"01\talpha\t\tresp.npy\talpha_audio.wav\t{onset}\t1.5", header=header
    )
    with pytest.raises(ValueError, match=r"map.tsv, row 1 \(line 2\)\): 10 volumes .*overlapping"):
        prepare_dataset(root, tmp_path / "out", mapping=bad, progress=False)
    assert not (tmp_path / "out").exists()
    good = table(
        tmp_path / "ok.tsv", "01\talpha\t\tresp.npy\talpha_audio.wav\t-1.5\t1.5", header=header
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no alignment
        prepare_dataset(root, tmp_path / "out", mapping=good, progress=False)
    assert (tmp_path / "out" / "README.md").is_file()


def fmriprep_tree(root: Path, slice_timing: list | None, description: dict) -> Path:
    """Derivatives without sidecars for sub-01's runs; raw sidecars get ``slice_timing``."""
    tree = root / "derivatives" / "fmriprep"
    tree.mkdir(parents=True)
    (tree / "dataset_description.json").write_text(json.dumps(description))
    for task in ("alpha", "beta"):
        raw = root / f"sub-01/func/sub-01_task-{task}_bold.nii.gz"
        sidecar = raw.with_name(raw.name.replace(".nii.gz", ".json"))
        meta = json.loads(sidecar.read_text())
        if slice_timing is not None:
            meta["SliceTiming"] = slice_timing
        sidecar.write_text(json.dumps(meta))
        func = tree / "sub-01" / "func"
        func.mkdir(parents=True, exist_ok=True)
        stem = f"sub-01_task-{task}_space-{SPACE}"
        shutil.copyfile(raw, func / f"{stem}_desc-preproc_bold.nii.gz")
        mask = nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))
        mask.to_filename(str(func / f"{stem}_desc-brain_mask.nii.gz"))
    return tree


def test_derivative_of_unknown_slice_timing_needs_the_reference(root, tmp_path):
    tree = fmriprep_tree(root, [0.0, 0.5, 1.0], {"Name": "copied images", "BIDSVersion": "1.8.0"})
    kwargs = dict(subjects=["01"], derivatives=tree, progress=False)
    with pytest.raises(
        ValueError,
        match=r"sub-01_task-alpha .*slice-time reference unknown.*SliceTiming spans 0-1 s; pass "
        r"--slice-time-reference .*the middle, 0.5 s",
    ):
        prepare_dataset(root, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = prepare_dataset(root, tmp_path / "out", slice_time_reference=0.5, **kwargs)
    from test_hf_layout import load
    from wav2brain.data.hf_layout import RESPONSES

    assert set(load(out, RESPONSES)["slice_time_reference"]) == {0.5}


def test_derivative_slice_timing_is_known_without_a_doubt(root, tmp_path):
    """Negative controls: no raw SliceTiming (nothing to correct), or fMRIPrep < 20.2 named."""
    tree = fmriprep_tree(root, None, {"Name": "copied images", "BIDSVersion": "1.8.0"})
    runs = pair_derivatives(discover_runs(root, subjects="01"), root, tree)
    assert {r.slice_time_reference for r in runs} == {0.0}
    shutil.rmtree(tree)
    old = {"Name": "fMRIPrep", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "1.5.0"}]}
    masks = fmriprep_tree(root, [0.0, 0.5, 1.0], old)
    cleaned = root / "derivatives" / "cleaned"  # images without a pipeline, masks from fMRIPrep
    shutil.copytree(masks, cleaned)
    (cleaned / "dataset_description.json").write_text('{"Name": "cleaned"}')
    runs = pair_derivatives(discover_runs(root, subjects="01"), root, cleaned, masks_from=masks)
    assert {r.slice_time_reference for r in runs} == {0.5}
    assert all("fMRIPrep 1.5.0" in r.slice_time_source for r in runs)
    assert not any(math.isnan(r.slice_time_reference) for r in runs)


def test_card_names_the_echo_that_was_kept(tmp_path):
    """Multi-echo raw data: refused without ``echo``; with it, the card's Runs table names the file."""
    root = tmp_path / "me"
    made = make_bids(root, subjects=("01",), tasks=("alpha",))
    image = made["images"][("01", "alpha")]
    for echo in (1, 2):
        shutil.copyfile(image, image.with_name(f"sub-01_task-alpha_echo-{echo}_bold.nii.gz"))
    image.unlink()
    with pytest.raises(ValueError, match=r"multi-echo run \(2 echoes"):
        prepare_dataset(root, tmp_path / "out", mask=made["mask"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = prepare_dataset(root, tmp_path / "out", mask=made["mask"], echo="2", progress=False)
    card = (out / "README.md").read_text()
    assert "| sub-01_task-alpha_echo-2_bold.nii.gz |" in card and "echo-1" not in card


def test_exclusion_entry_matching_nothing_is_named_in_a_warning(root, tmp_path):
    """Documented: a typo'd entry excludes nothing and is named; a correct one excludes its run."""
    listing = tmp_path / "exclude.txt"
    listing.write_text("sub-01_task-alpah  # typo\n")
    with pytest.warns(
        UserWarning, match=r"1 of 1 exclusion entries match no run here: sub-01_task-alpah"
    ):
        assert len(discover_runs(root, exclude=listing)) == 4
    listing.write_text("sub-01_task-alpha\n")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*exclusion entries")
        kept = discover_runs(root, tasks="alpha", exclude=listing)
    assert [run.key for run in kept] == ["sub-02_task-alpha"]


def write_textgrid(path: Path, tiers: dict[str, list[tuple[float, float, str]]]) -> Path:
    """A long-format Praat TextGrid of interval tiers ``{name: [(start, end, label), ...]}``."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "xmin = 0", "xmax = 6"]
    lines += ["tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for number, (name, intervals) in enumerate(tiers.items(), start=1):
        lines += [f"item [{number}]:", 'class = "IntervalTier"', f'name = "{name}"']
        lines += ["xmin = 0", "xmax = 6", f"intervals: size = {len(intervals)}"]
        for index, (start, end, label) in enumerate(intervals, start=1):
            lines += [
                f"intervals [{index}]:",
                f"xmin = {start}",
                f"xmax = {end}",
                f'text = "{label}"',
            ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tier_names_that_differ_between_textgrids_take_several_names(root, tmp_path):
    """Events files give no per-stimulus column: one --word-tier list serves both spellings."""
    words = [(0.0, 1.0, "hello"), (1.0, 2.0, "world")]
    phones = [(0.0, 0.5, "HH"), (0.5, 1.0, "AH")]
    write_textgrid(root / "stimuli" / "alpha_audio.TextGrid", {"Mot": words, "Phon": phones})
    write_textgrid(root / "stimuli" / "beta_audio.TextGrid", {"word": words, "phone": phones})
    kwargs = dict(subjects=["01"], mask=root / "mask.nii.gz", progress=False)
    with pytest.raises(ValueError, match=r"beta_audio.TextGrid: no word tier named 'Mot';"):
        prepare_dataset(root, tmp_path / "one", word_tier="Mot", phone_tier="Phon", **kwargs)
    out = prepare_dataset(
        root, tmp_path / "out", word_tier=["Mot", "word"], phone_tier=("Phon", "phone"), **kwargs
    )
    from test_hf_layout import load
    from wav2brain.data.hf_layout import STIMULI

    for row in load(out, STIMULI):
        assert [w["label"] for w in row["words"]] == ["hello", "world"]
        assert [p["label"] for p in row["phonemes"]] == ["HH", "AH"]
    with pytest.raises(ValueError, match=r"no word tier named 'Mot' or 'Wort'; tiers: \['word'"):
        prepare_dataset(root, tmp_path / "x", word_tier=["Mot", "Wort"], **kwargs)


def test_two_acquisitions_of_one_run_are_refused_until_the_table_can_name_them(root, tmp_path):
    rows = (
        f"01\talpha\t1\t{ALPHA}\talpha_audio.wav\t0\tmb4",
        f"01\talpha\t1\t{BETA}\talpha_audio.wav\t0\tmb8",
    )
    bad = table(tmp_path / "map.tsv", *rows, header=f"{HEADER}\tacquisition")
    with pytest.raises(ValueError, match=r"differ only by their acq- entity \('mb4', 'mb8'\)"):
        prepare_dataset(root, tmp_path / "out", mapping=bad, progress=False)
    assert not (tmp_path / "out").exists()
    good = table(  # negative control: distinct run labels are two rows the readers can tell apart
        tmp_path / "ok.tsv",
        rows[0],
        rows[1].replace("\t1\t", "\t2\t", 1),
        header=f"{HEADER}\tacquisition",
    )
    image = nib.load(str(root / ALPHA))
    mask = nib.Nifti1Image(np.ones(image.shape[:3], np.uint8), image.affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_dataset(root, tmp_path / "ok", mapping=good, mask=mask, progress=False)
    assert (tmp_path / "ok" / "README.md").is_file()
