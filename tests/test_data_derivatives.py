"""fMRIPrep derivatives on a fabricated tree of the real Narratives layout; nilearn is the oracle."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.interfaces.fmriprep import load_confounds
from nilearn.masking import apply_mask
from nilearn.signal import clean

from fabricate import fabricate_layout
from fabricate_fmriprep import SPACE, confound_columns, fabricate_fmriprep, write_volume
from test_hf_layout import load
from test_prepare import load_script
from wav2brain.cli import main as run_cli
from wav2brain.data import CleaningConfig, discover_runs, load_bold
from wav2brain.data.confounds import ConfoundStrategy, run_confounds, strategy_confounds
from wav2brain.data.derivatives import pair_derivatives
from wav2brain.data.hf_layout import CARD_NAME, MASK_NAME, RESPONSES
from wav2brain.data.prepare import MANIFEST_NAME, prepare_dataset

STRATEGY = ("motion", "wm_csf", "high_pass")


@pytest.fixture(scope="module")
def tree(real_layouts, tmp_path_factory) -> dict:
    """A raw Narratives copy with ``derivatives/fmriprep`` and ``derivatives/afni-nosmooth``."""
    raw = fabricate_layout(real_layouts / "ds002345", tmp_path_factory.mktemp("d") / "ds002345")
    return {"raw": raw, **fabricate_fmriprep(raw)}


@pytest.fixture
def copy(tree, tmp_path) -> dict:
    """A writable copy of the tree, for tests that break it."""
    raw = Path(shutil.copytree(tree["raw"], tmp_path / "ds002345", symlinks=True))
    return {
        "raw": raw,
        "fmriprep": raw / "derivatives/fmriprep",
        "afni": raw / "derivatives/afni-nosmooth",
    }


def raw_runs(raw: Path, **filters):
    return discover_runs(raw, **{"tasks": ["pieman", "milkyway"], **filters})


def test_runs_pair_with_image_mask_confounds_sidecar_and_slice_timing(tree):
    raw, fmriprep = tree["raw"], tree["fmriprep"]
    runs = raw_runs(raw)
    paired = pair_derivatives(runs, raw, fmriprep, space=SPACE)
    assert [r.key for r in paired] == [r.key for r in runs]
    for before, run in zip(runs, paired, strict=True):
        stem = before.bold_path.name[: -len("_bold.nii.gz")]
        folder = fmriprep / f"sub-{run.subject}" / "func"
        assert run.bold_path == folder / f"{stem}_space-{SPACE}_res-native_desc-preproc_bold.nii.gz"
        assert run.mask_path == folder / f"{stem}_space-{SPACE}_res-native_desc-brain_mask.nii.gz"
        assert run.confounds_path == folder / f"{stem}_desc-confounds_regressors.tsv"
        assert run.space == SPACE and run.onset == before.onset and run.tr == before.tr
        assert run.stimulus_path == before.stimulus_path
        if run.key in tree["sidecars"]:  # fMRIPrep 20.2+ style sidecar
            assert run.tr_sources[-1] == (
                f"derivative sidecar of {run.bold_path.stem[:-4]}.nii.gz",
                run.tr,
            )
            assert run.slice_time_reference == round(run.tr / 2 - 0.05, 3)
        else:  # fMRIPrep 1.5 wrote no StartTime: 3dTshift's default, the mean slice time
            times = json.loads(before.bold_path.with_name(f"{stem}_bold.json").read_text())[
                "SliceTiming"
            ]
            assert run.slice_time_reference == pytest.approx(np.mean(times))
            assert "inferred: fMRIPrep 1.5.0" in run.slice_time_source
    bold = load_bold(paired[0])  # no mask given: the derivative's, not a computed EPI mask
    assert bold.kept.size == 45 and bold.mask_img.shape == (4, 4, 3)
    surfaces = pair_derivatives(runs, raw, fmriprep, space="fsaverage6")
    assert (
        surfaces[0].bold_path.name == "sub-001_task-pieman_run-1_space-fsaverage6_hemi-L.func.gii"
    )
    assert surfaces[0].mask_path is None and surfaces[0].confounds_path == paired[0].confounds_path
    bold = load_bold(surfaces[0])  # both hemispheres, 6 vertices each; TR from TimeStep (ms)
    assert bold.data.shape[1] == 12 and bold.tr == 1.5


def test_a_multi_echo_run_pairs_with_the_combined_derivative(tree):
    raw = tree["raw"]
    runs = raw_runs(raw, subjects="001", tasks="pieman", runs="1")
    echo = [dataclasses.replace(runs[0], echo="2")]
    assert pair_derivatives(echo, raw, tree["fmriprep"])[0].bold_path == (
        pair_derivatives(runs, raw, tree["fmriprep"])[0].bold_path
    )


def test_surfaces_prepare_with_both_hemispheres(tree, tmp_path):
    raw = tree["raw"]
    out = prepare_dataset(
        raw,
        tmp_path / "hf",
        subjects=["038"],
        tasks=["pieman"],
        derivatives=tree["fmriprep"],
        space="fsaverage6",
        progress=False,
    )
    row = load(out, RESPONSES)[0]
    assert row["space"] == "fsaverage6" and row["n_voxels"] == 12 and row["tr"] == 1.5
    short = tmp_path / "short"
    shutil.copytree(tree["fmriprep"], short, symlinks=True)
    gifti = next(short.glob("sub-038/func/*pieman*hemi-L.func.gii"))
    image = nib.load(str(gifti))
    image.darrays = image.darrays[:100]  # a truncated surface: caught from the XML, before writing
    nib.save(image, str(gifti))
    with pytest.raises(ValueError, match=r"hemi-L.func.gii.*: 100 volumes x 1.5 s"):
        prepare_dataset(
            raw,
            tmp_path / "x",
            subjects=["038"],
            tasks=["pieman"],
            derivatives=short,
            space="fsaverage6",
            progress=False,
        )
    assert not (tmp_path / "x").exists()


def test_newer_fmriprep_without_slice_timing_keys_is_not_inferred(tree, tmp_path):
    raw, fmriprep = tree["raw"], tmp_path / "fmriprep"
    shutil.copytree(tree["fmriprep"], fmriprep, symlinks=True)
    description = json.loads((fmriprep / "dataset_description.json").read_text())
    description["GeneratedBy"][0]["Version"] = "23.1.0"
    (fmriprep / "dataset_description.json").write_text(json.dumps(description))
    run = next(
        r for r in pair_derivatives(raw_runs(raw), raw, fmriprep) if r.key not in tree["sidecars"]
    )
    # fMRIPrep 20.2+ writes SliceTimingCorrected; without it the correction is unknown, and
    # prepare refuses the run unless the reference is given (tests/test_acceptance_data.py)
    assert math.isnan(run.slice_time_reference) and "unknown" in run.slice_time_source


def test_missing_orphan_and_ambiguous_derivatives_are_named(copy):
    raw, fmriprep = copy["raw"], copy["fmriprep"]
    runs = raw_runs(raw, subjects="001")
    with pytest.raises(
        ValueError,
        match=r"sub-001_task-pieman_run-1 .*no derivative in space 'T1w', desc 'preproc'.*"
        r"spaces \['MNI152NLin2009cAsym', 'fsaverage6'\]",
    ):
        pair_derivatives(runs, raw, fmriprep, space="T1w")
    func = fmriprep / "sub-001" / "func"
    image = func / f"sub-001_task-pieman_run-1_space-{SPACE}_res-native_desc-preproc_bold.nii.gz"
    twin = image.with_name(image.name.replace("res-native", "res-2"))
    shutil.copyfile(image, twin)
    with pytest.raises(ValueError, match=r"2 derivatives in space .*res-2.*choose one with res"):
        pair_derivatives(runs, raw, fmriprep)
    assert pair_derivatives(runs, raw, fmriprep, res="native")[0].bold_path == image
    twin.unlink()
    orphan = image.with_name(image.name.replace("run-1", "run-3"))
    shutil.copyfile(image, orphan)
    with pytest.raises(ValueError, match=r"have no raw run in .*run-3_space"):
        pair_derivatives(runs, raw, fmriprep)
    orphan.unlink()
    # a run left out by a filter is no orphan: its raw file exists
    assert len(pair_derivatives(raw_runs(raw, subjects="001", runs="1"), raw, fmriprep)) == 1
    image.unlink()
    with pytest.raises(ValueError, match=r"sub-001_task-pieman_run-1 .*spaces \['fsaverage6'\]"):
        pair_derivatives(runs, raw, fmriprep)
    shutil.rmtree(fmriprep / "sub-001")
    with pytest.raises(ValueError, match="no derivative of this run under"):
        pair_derivatives(runs, raw, fmriprep)
    with pytest.raises(FileNotFoundError, match="derivatives folder not found"):
        pair_derivatives(runs, raw, raw / "nowhere")
    surface = next(copy["afni"].glob("sub-038/func/*pieman*hemi-R_desc-clean.func.gii"))
    surface.unlink()
    with pytest.raises(ValueError, match="has no right hemisphere"):
        pair_derivatives(raw_runs(raw, subjects="038"), raw, copy["afni"], "fsaverage6", "clean")


def oracle(run, cleaning: CleaningConfig, strategy=STRATEGY, extra=(), **options) -> np.ndarray:
    """nilearn alone: the derivative mask, load_confounds on the real fMRIPrep names, and the
    ``extra`` columns of the table with their first-row n/a back-filled (nilearn's rule)."""
    start, stop = cleaning.trim_start_trs, -cleaning.trim_end_trs or None
    frame, sample_mask = load_confounds(
        str(run.bold_path), strategy=strategy, demean=False, **options
    )
    assert sample_mask is None
    if extra:
        table = pd.read_csv(run.confounds_path, sep="\t")
        frame = pd.concat([frame, table[list(extra)].bfill()], axis=1)
    signals = apply_mask(str(run.bold_path), str(run.mask_path))[start:stop]
    return clean(
        signals,
        detrend=False,
        standardize="zscore_sample",
        confounds=frame.to_numpy()[start:stop],
        t_r=run.tr,
    )


@pytest.mark.parametrize("trims", [(0, 0), (2, 1)])
def test_prepare_uses_the_derivative_mask_and_regresses_the_strategy_like_nilearn(
    tree, tmp_path, trims
):
    raw, fmriprep = tree["raw"], tree["fmriprep"]
    cleaning = CleaningConfig(detrend=False, trim_start_trs=trims[0], trim_end_trs=trims[1])
    out = prepare_dataset(
        raw,
        tmp_path / "hf",
        subjects=["001"],
        tasks=["pieman"],
        cleaning=cleaning,
        derivatives=fmriprep,
        space=SPACE,
        confounds_strategy=STRATEGY,
        progress=False,
    )
    paired = pair_derivatives(raw_runs(raw, subjects="001", tasks="pieman"), raw, fmriprep)
    mask = nib.load(str(out / MASK_NAME))
    assert (
        np.asarray(mask.dataobj).sum() == 45
    )  # the derivative mask: 48 voxels less a corner column
    responses = load(out, RESPONSES).with_format("numpy")
    for row, run in zip(responses, paired, strict=True):
        expected = oracle(run, cleaning)
        np.testing.assert_allclose(row["bold"], expected, atol=2e-5)
        assert row["space"] == SPACE
        # negative control: the same run without confounds is far from the oracle
        plain = clean(
            apply_mask(str(run.bold_path), str(run.mask_path)),
            detrend=False,
            standardize="zscore_sample",
        )
        start, stop = trims[0], plain.shape[0] - trims[1]
        assert np.abs(plain[start:stop] - expected).max() > 0.3
    text = (out / CARD_NAME).read_text()
    assert (
        '"confounds_used"' in text
        and '"trans_x_derivative1_power2"' in text
        and '"cosine02"' in text
    )
    assert "desc-brain_mask" in text and '"a_comp_cor_00"' not in text
    settings = json.loads((out / MANIFEST_NAME).read_text())["settings"]
    assert settings["cleaning"]["confounds_strategy"]["strategy"] == list(STRATEGY)
    assert settings["runs"][0]["bold_path"] == str(paired[0].bold_path)


def test_strategy_and_column_patterns_combine(tree):
    raw = tree["raw"]
    runs = raw_runs(raw, subjects="001", tasks="pieman", runs="1")
    run = pair_derivatives(runs, raw, tree["fmriprep"])[0]
    n = nib.load(str(run.bold_path)).shape[3]
    strategy = ConfoundStrategy(("motion",), motion="basic")
    patterns = ("trans_x", "a_comp_cor_0[0-1]", "framewise_displacement")
    _, names = run_confounds(run.confounds_path, n, patterns, strategy)
    motion = list(load_confounds(str(run.bold_path), strategy=["motion"], motion="basic")[0])
    assert sorted(motion) == sorted(f"{a}_{x}" for a in ("trans", "rot") for x in "xyz")
    assert names == [*motion, "a_comp_cor_00", "a_comp_cor_01", "framewise_displacement"]
    cleaning = CleaningConfig(
        detrend=False, confounds_strategy=strategy, confound_columns=patterns[1:]
    )
    bold = load_bold(run, cleaning=cleaning, confounds=run.confounds_path)
    expected = oracle(run, cleaning, ["motion"], motion="basic", extra=names[len(motion) :])
    np.testing.assert_allclose(bold.data, expected, atol=2e-5)
    # anatomical CompCor per mask reads the table's json: 2 CSF and 2 WM components, not the
    # "combined" ones (a_comp_cor_04, _05)
    separated = ConfoundStrategy(("high_pass", "compcor"), compcor="anat_separated", n_compcor=2)
    chosen = strategy_confounds(run.confounds_path, separated, n)[1]
    assert sorted(chosen) == [f"a_comp_cor_0{k}" for k in range(4)] + [
        "cosine00",
        "cosine01",
        "cosine02",
    ]


def test_censored_volumes_become_spike_regressors(tmp_path):
    table = pd.DataFrame(
        {c: np.random.default_rng(0).standard_normal(20) for c in confound_columns()}
    )
    table["non_steady_state_outlier00"] = np.eye(20)[0]
    table["non_steady_state_outlier01"] = np.eye(20)[1]
    path = tmp_path / "sub-01_task-x_desc-confounds_timeseries.tsv"
    table.to_csv(path, sep="\t", index=False)
    matrix, names = strategy_confounds(path, ConfoundStrategy(("motion",), motion="basic"), 20)
    assert (
        names[-2:] == ["censored_0", "censored_1"]
        and matrix[:, -1].tolist() == np.eye(20)[1].tolist()
    )
    from wav2brain.data.confounds import kept_confounds

    kept, kept_names = kept_confounds(matrix, 1, 20, names)  # volume 0 trimmed: its spike goes
    assert (
        kept_names[-1] == "censored_1" and "censored_0" not in kept_names and kept.shape == (19, 7)
    )
    with pytest.raises(ValueError, match="needs more volumes than regressors"):
        kept_confounds(np.eye(20)[:, :19], 0, 20)
    with pytest.raises(ValueError, match="20 rows but the scan has 21 volumes"):
        strategy_confounds(path, ConfoundStrategy(("motion",)), 21)
    with pytest.raises(
        ValueError, match=r"cannot be applied: Could not find .*test_censored.*timeseries.json"
    ):
        strategy_confounds(
            path, ConfoundStrategy(("high_pass", "compcor")), 20
        )  # no json, no a_comp_cor meta


def test_a_table_under_any_name_is_read_by_the_strategy(tree, tmp_path):
    run = pair_derivatives(
        raw_runs(tree["raw"], subjects="001", runs="1"), tree["raw"], tree["fmriprep"]
    )[0]
    n = nib.load(str(run.bold_path)).shape[3]
    strategy = ConfoundStrategy(("motion", "wm_csf", "high_pass", "compcor"))
    named = strategy_confounds(run.confounds_path, strategy, n)
    other = tmp_path / "my confounds.tsv"  # a mapping table's 'confounds' column, say
    shutil.copyfile(run.confounds_path, other)
    shutil.copyfile(run.confounds_path.with_suffix(".json"), other.with_suffix(".json"))
    renamed = strategy_confounds(other, strategy, n)
    assert renamed[1] == named[1] and np.array_equal(renamed[0], named[0], equal_nan=True)
    pd.read_csv(other, sep="\t").to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(ValueError, match=r"table.csv: a confounds strategy reads .*\.tsv"):
        strategy_confounds(tmp_path / "table.csv", strategy, n)


def test_bad_strategies_are_refused():
    for bad, match in [
        ("motion", "non-empty sequence"),
        ((), "non-empty sequence"),
        (("motion", "tedana"), "unknown confounds strategy component"),
        (("compcor",), "needs 'high_pass'"),
    ]:
        with pytest.raises(ValueError, match=match):
            ConfoundStrategy(bad)
    with pytest.raises(ValueError, match="motion must be one of"):
        ConfoundStrategy(("motion",), motion="all")
    with pytest.raises(ValueError, match="n_compcor must be"):
        ConfoundStrategy(("motion",), n_compcor=0)
    with pytest.raises(ValueError, match="'full' needs"):
        ConfoundStrategy(("ica_aroma",), ica_aroma="full")
    assert CleaningConfig(confounds_strategy=["motion"]).confounds_strategy == ConfoundStrategy(
        ("motion",)
    )
    with pytest.raises(ValueError, match="differs from cleaning.confounds_strategy"):
        prepare_dataset(
            ".",
            "x",
            cleaning=CleaningConfig(confounds_strategy=["motion"]),
            confounds_strategy=["wm_csf"],
        )


def test_header_disagreeing_with_the_sidecar_fails_before_writing(copy, tmp_path):
    raw, fmriprep = copy["raw"], copy["fmriprep"]
    image = next(fmriprep.glob(f"sub-001/func/*pieman_run-2_space-{SPACE}_*preproc_bold.nii.gz"))
    write_volume(image, nib.load(str(image)).shape[3], 2.0, np.random.default_rng(0))
    out = tmp_path / "hf"
    with pytest.raises(
        ValueError,
        match=r"disagree by more than 1%: sidecar .*run-2_bold.*: 1.5, NIfTI header .*run-2_space.*: 2.0",
    ):
        prepare_dataset(
            raw, out, subjects=["001"], tasks=["pieman"], derivatives=fmriprep, progress=False
        )
    assert not out.exists()


def test_without_any_sidecar_the_header_tr_is_used_and_the_card_says_so(tree, tmp_path):
    raw, fmriprep = tree["raw"], tree["fmriprep"]
    runs = raw_runs(raw, subjects="001", tasks="pieman", runs="2")  # run-2: no derivative sidecar
    assert runs[0].key not in tree["sidecars"]
    bare = [
        dataclasses.replace(r, tr=math.nan, tr_sources=()) for r in runs
    ]  # as with no raw sidecar
    paired = pair_derivatives(bare, raw, fmriprep)
    assert math.isnan(paired[0].tr) and paired[0].tr_sources == ()
    out = prepare_dataset(
        raw, tmp_path / "hf", mapping=paired, cleaning=CleaningConfig(), progress=False
    )
    assert load(out, RESPONSES)[0]["tr"] == 1.5
    text = (out / CARD_NAME).read_text()
    assert '"tr_from_image_header"' in text and "sub-001_task-pieman_run-2" in text
    settings = json.loads((out / MANIFEST_NAME).read_text())["settings"]
    assert settings["runs"][0]["tr_sources"] == [[f"NIfTI header {paired[0].bold_path.name}", 1.5]]


def test_cli_prepares_derivatives_and_reports_a_missing_space(tree, tmp_path, capsys):
    raw, fmriprep = tree["raw"], tree["fmriprep"]
    argv = [
        "prepare",
        str(raw),
        "--subjects",
        "001",
        "--tasks",
        "pieman",
        "--quiet",
        "--derivatives",
        str(fmriprep),
    ]
    out = tmp_path / "hf"
    code = run_cli(
        argv
        + ["--out", str(out), "--space", SPACE, "--confounds-strategy", *STRATEGY, "--no-detrend"]
    )
    assert code == 0
    paired = pair_derivatives(raw_runs(raw, subjects="001", tasks="pieman"), raw, fmriprep)
    row = load(out, RESPONSES).with_format("numpy")[0]
    np.testing.assert_allclose(
        row["bold"], oracle(paired[0], CleaningConfig(detrend=False)), atol=2e-5
    )
    capsys.readouterr()
    assert run_cli(argv + ["--out", str(tmp_path / "bad"), "--space", "T1w"]) != 0
    err = capsys.readouterr().err
    assert "no derivative in space 'T1w'" in err and "MNI152NLin2009cAsym" in err
    assert not (tmp_path / "bad").exists()
    assert run_cli(["prepare", str(raw), "--out", str(tmp_path / "bad"), "--space", "T1w"]) != 0
    assert "space apply to derivatives only" in capsys.readouterr().err


def test_narratives_converter_uses_the_derivatives(tree, tmp_path):
    narratives = load_script("narratives")
    raw = tree["raw"]
    # sub-115's milkyway scan (TR 1.52 s) is on none of the authors' exclusion lists
    base = [str(raw), "--subjects", "115", "--tasks", "milkyway", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert narratives.main(base + ["--out", str(tmp_path / "pre")]) == 0
    text = (tmp_path / "pre" / CARD_NAME).read_text()
    # the authors' model: 6 motion, cosines, 5 aCompCor per CSF and WM mask (3 of each exist here)
    assert '"rot_z"' in text and '"cosine00"' in text and '"a_comp_cor_02"' in text
    assert '"trans_x_derivative1"' not in text and '"white_matter"' not in text
    row = load(tmp_path / "pre", RESPONSES)[0]
    assert row["space"] == SPACE
    assert narratives.main(base + ["--out", str(tmp_path / "clean"), "--derivative", "clean"]) == 0
    settings = json.loads((tmp_path / "clean" / MANIFEST_NAME).read_text())["settings"]
    assert settings["runs"][0]["bold_path"].endswith("desc-clean_bold.nii.gz")
    assert "derivatives/fmriprep" in settings["runs"][0]["mask_path"]
    with pytest.raises(ValueError, match="already have the authors' confounds regressed"):
        narratives.main(
            base + ["--out", str(tmp_path / "x"), "--derivative", "clean", "--confounds", "csf"]
        )
    mask = next(tree["fmriprep"].glob("sub-115/func/*milkyway*brain_mask.nii.gz"))
    raw_argv = ["--out", str(tmp_path / "raw"), "--derivative", "none", "--mask", str(mask)]
    assert narratives.main(base + raw_argv) == 0
    settings = json.loads((tmp_path / "raw" / MANIFEST_NAME).read_text())["settings"]
    assert settings["runs"][0]["bold_path"] == str(
        raw / "sub-115/func/sub-115_task-milkyway_bold.nii.gz"
    )
