"""BOLD loading on the real layouts (fabricated images), checked against nilearn's NiftiMasker."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from nilearn.maskers import NiftiMasker
from nilearn.masking import compute_epi_mask

from fabricate import lebel_mapping
from wav2brain.data import (
    CleaningConfig,
    RunSpec,
    compute_mask,
    discover_runs,
    iter_volumes,
    load_bold,
    load_mask,
    mean_image,
)
from wav2brain.data.confounds import read_confounds_table, trim_confounds
from wav2brain.data.fmri import header_tr, resolve_tr

AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])


@pytest.fixture
def full_mask():
    return nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), AFFINE)


def pieman(root: Path) -> RunSpec:
    return discover_runs(root, subjects="001", tasks="pieman", runs="1")[0]


def write_bold(path: Path, data: np.ndarray, tr: float, affine=AFFINE) -> Path:
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_zooms(tuple(np.abs(np.diag(affine)[:3])) + (tr,))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def masker(mask, **kwargs) -> NiftiMasker:
    return NiftiMasker(mask, detrend=True, standardize="zscore_sample", **kwargs).fit()


def legendre(n_trs: int, order: int) -> np.ndarray:
    """Legendre polynomials 1..order on an even grid of [-1, 1] (AFNI's -polort basis)."""
    return np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, n_trs), order)[:, 1:]


def afni_order(n_trs: int, tr: float) -> int:
    """AFNI's -polort A: 1 + floor(duration / 150 s)."""
    return 1 + int(n_trs * tr / 150.0)


def test_narratives_runs_match_nilearn_masker(narratives, full_mask):
    orders = set()
    for run in discover_runs(narratives, tasks=["pieman", "milkyway"]):
        bold = load_bold(run, mask=full_mask)
        order = afni_order(bold.n_scan_trs, run.tr)
        orders.add(order)
        expected = masker(full_mask, t_r=run.tr).transform(
            str(run.bold_path), confounds=legendre(bold.n_scan_trs, order)
        )
        assert bold.data.dtype == np.float32 and bold.data.shape == (bold.n_scan_trs, 48)
        np.testing.assert_allclose(bold.data, expected, atol=1e-5)
        assert bold.tr == run.tr and bold.onset == run.onset and bold.dropped_voxels == 0
        assert bold.n_scan_trs * run.tr >= run.onset + run.duration
    assert {r.tr for r in discover_runs(narratives, subjects="115", tasks="milkyway")} == {1.52}
    assert max(orders) >= 3  # 5-min stories: the automatic order goes beyond a linear detrend


def test_drift_order_removes_polynomial_drift(tmp_path):
    rng = np.random.default_rng(3)
    n_trs, tr = 120, 1.5
    signal = rng.standard_normal((n_trs, 4, 4, 3))
    drift = legendre(n_trs, 3) @ rng.normal(0, 5.0, (3, 48))
    data = 1000.0 + signal + drift.reshape(n_trs, 4, 4, 3)
    path = write_bold(tmp_path / "sub-01_task-x_bold.nii.gz", np.moveaxis(data, 0, -1), tr)
    run = RunSpec(
        subject="01", task="x", run=None, session=None, bold_path=path, stimulus_path=path,
        stimulus_id="x", onset=0.0, tr=tr, duration=None, space="MNI152NLin2009cAsym",
    )  # fmt: skip
    mask = nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), AFFINE)
    for order in (1, 3, 5):
        config = CleaningConfig(drift_order=order, standardize=False)
        bold = load_bold(run, mask=mask, cleaning=config)
        expected = (
            NiftiMasker(mask, detrend=True, standardize=None, t_r=tr)
            .fit()
            .transform(str(path), confounds=legendre(n_trs, order))
        )
        np.testing.assert_allclose(bold.data, expected, atol=1e-3)
        basis = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, n_trs), order)
        flat = signal.reshape(n_trs, 48)
        clean_signal = flat - basis @ np.linalg.lstsq(basis, flat, rcond=None)[0]
        error = np.abs(bold.data - clean_signal).max()
        assert error > 1.0 if order < 3 else error < 1e-2  # the cubic drift is gone from order 3
    auto = load_bold(run, mask=mask, cleaning=CleaningConfig(standardize=False))
    second = load_bold(run, mask=mask, cleaning=CleaningConfig(drift_order=2, standardize=False))
    np.testing.assert_array_equal(auto.data, second.data)  # 180 s: AFNI's 1 + floor(180 / 150)


def test_smoothing_high_pass_and_trimming_match_nilearn(narratives, full_mask):
    run = dataclasses.replace(pieman(narratives), duration=400.0)  # room for the end trim
    config = CleaningConfig(smoothing_fwhm=5.0, high_pass=0.01, trim_start_trs=5, trim_end_trs=3)
    with pytest.warns(UserWarning, match="trim_start_trs 5 drops 7.50 s .* first 7.50 s have no"):
        bold = load_bold(run, mask=full_mask, cleaning=config)
    img = nib.load(str(run.bold_path))
    trimmed = img.slicer[..., 5 : img.shape[3] - 3]
    n_kept = img.shape[3] - 8
    expected = masker(full_mask, t_r=1.5, smoothing_fwhm=5.0, high_pass=0.01).transform(
        trimmed, confounds=legendre(n_kept, afni_order(n_kept, 1.5))
    )
    np.testing.assert_allclose(bold.data, expected, atol=1e-5)
    assert bold.data.shape[0] == img.shape[3] - 8 and bold.first_tr == 5
    assert run.onset == 0.0 and bold.onset == pytest.approx(-5 * 1.5)


def test_lebel_raw_and_preprocessed(lebel, full_mask):
    raw = discover_runs(lebel, subjects="UTS01", tasks="souls", mapping=lebel_mapping(lebel))[0]
    bold = load_bold(raw, mask=full_mask)
    assert bold.data.shape == (375, 48) and bold.tr == 2.0 and bold.onset == 10.0
    runs = discover_runs(lebel, subjects="UTS02", mapping=lebel_mapping(lebel, preprocessed=True))
    souls = next(r for r in runs if r.task == "souls")
    raw_array = h5py.File(souls.bold_path, "r")["data"][:]
    assert raw_array.dtype == np.float64
    plain = load_bold(souls, cleaning=CleaningConfig(detrend=False, standardize=False))
    assert plain.data.dtype == np.float32 and plain.data.shape == (355, 12)
    np.testing.assert_allclose(plain.data, raw_array, rtol=1e-6)
    assert plain.onset == -10.0 and plain.mask_img is None
    smoke = next(r for r in runs if r.task == "wheretheressmoke")
    with pytest.warns(UserWarning, match="11 repeats"):
        mean = load_bold(smoke, cleaning=CleaningConfig(detrend=False, standardize=False))
    expected = h5py.File(smoke.bold_path, "r")["data"][:].mean(axis=0)
    np.testing.assert_allclose(mean.data, expected, rtol=1e-5, atol=1e-6)
    column_mask = np.zeros(12, bool)
    column_mask[[1, 5]] = True
    subset = load_bold(
        souls, mask=column_mask, cleaning=CleaningConfig(detrend=False, standardize=False)
    )
    np.testing.assert_allclose(subset.data, raw_array[:, [1, 5]], rtol=1e-6)
    with pytest.raises(ValueError, match="mask .* has 3 entries but .*souls.hf5 has 12"):
        load_bold(souls, mask=[1, 0, 1])
    stated = dataclasses.replace(souls, duration=730.0)  # -10 + 730 s > 355 TRs x 2 s
    with pytest.raises(ValueError, match="355 volumes x 2.0 s = 710.00 s.*= 720.00 s"):
        load_bold(stated)


def test_header_tr_disagreeing_with_sidecar_is_an_error_naming_both(
    narratives, tmp_path, full_mask
):
    run = pieman(narratives)
    data = np.asarray(nib.load(str(run.bold_path)).dataobj)
    path = write_bold(tmp_path / "sub-001_task-pieman_run-1_bold.nii.gz", data, tr=2.0)
    run = dataclasses.replace(run, bold_path=path, tr_sources=(("sidecar run-1_bold.json", 1.5),))
    match = r"disagree by more than 1%: sidecar run-1_bold.json: 1.5, NIfTI header sub-001.*: 2.0"
    with pytest.raises(ValueError, match=match):
        load_bold(run, mask=full_mask)
    # negative control: a header within 1 % of the sidecar passes, and the sidecar's TR is kept
    write_bold(path, data, tr=1.51)
    assert load_bold(run, mask=full_mask).tr == 1.5
    with pytest.raises(ValueError, match="run TR: 2.0, sidecar run-1_bold.json: 1.5"):
        load_bold(dataclasses.replace(run, tr=2.0), mask=full_mask)  # a TR set by hand is a source


def test_header_tr_units_placeholders_and_no_sidecar(tmp_path):
    data = np.zeros((2, 2, 2, 3), np.float32)
    path = tmp_path / "sub-01_task-x_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    for zoom, unit, expected in [
        (1.5, "sec", 1.5),
        (1500.0, "msec", 1.5),
        (2.0e6, "usec", 2.0),
        (2.0, "unknown", 2.0),
        (1.0, "unknown", None),  # nibabel's default: a placeholder, not a TR
        (1.0, "sec", 1.0),
        (0.0, "sec", None),
    ]:
        img = nib.Nifti1Image(data, AFFINE)
        img.header.set_zooms((3.0, 3.0, 4.0, zoom))
        img.header.set_xyzt_units("mm", unit)
        nib.save(img, str(path))
        assert header_tr(path) == expected, (zoom, unit)
    write_bold(path, np.zeros((2, 2, 2, 3)), tr=1.5)
    run = RunSpec("01", "x", None, None, path, path, "x", 0.0, float("nan"))
    resolved = resolve_tr(run)
    assert resolved.tr == 1.5 and resolved.tr_sources == ((f"NIfTI header {path.name}", 1.5),)
    write_bold(path, np.zeros((2, 2, 2, 3)), tr=1500.0)  # ms written as s
    with pytest.raises(ValueError, match="TR 1500.0 from NIfTI header .*milliseconds"):
        resolve_tr(run)
    img = nib.Nifti1Image(data, AFFINE)
    nib.save(img, str(path))  # pixdim[4] = 1, no unit: no TR anywhere
    with pytest.raises(ValueError, match="no TR found"):
        resolve_tr(run)


def test_gifti_time_step_is_read_in_milliseconds(tmp_path):
    from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiMetaData

    path = tmp_path / "sub-01_task-x_space-fsaverage6_hemi-L.func.gii"
    arrays = [
        GiftiDataArray(np.zeros(5, np.float32), meta=GiftiMetaData({"TimeStep": "1500.000000"}))
        for _ in range(3)
    ]
    nib.save(GiftiImage(darrays=arrays), str(path))
    assert header_tr(path) == 1.5
    nib.save(GiftiImage(darrays=[GiftiDataArray(np.zeros(5, np.float32))]), str(path))
    assert header_tr(path) is None


def test_volume_coverage(narratives, tmp_path, full_mask):
    run = pieman(narratives)  # WAV from 0 s, story 15 s + 422 s = 437 s at TR 1.5: 292 volumes
    data = np.asarray(nib.load(str(run.bold_path)).dataobj)
    short = write_bold(tmp_path / "short.nii.gz", data[..., :290], tr=1.5)
    with pytest.raises(
        ValueError, match=r"290 volumes x 1.5 s = 435.00 s.* = 437.00 s \(292 volumes"
    ):
        load_bold(dataclasses.replace(run, bold_path=short), mask=full_mask)
    almost = write_bold(tmp_path / "almost.nii.gz", data[..., :291], tr=1.5)
    with pytest.warns(UserWarning, match="0.50 s \\(<= 1 TR\\) short"):
        bold = load_bold(dataclasses.replace(run, bold_path=almost), mask=full_mask)
    assert bold.data.shape[0] == 291
    with pytest.raises(ValueError, match="leaves 1; need at least 2 TRs"):
        load_bold(run, mask=full_mask, cleaning=CleaningConfig(trim_start_trs=200, trim_end_trs=91))


def test_trimming_into_the_stimulus_is_caught(narratives, full_mask):
    run = pieman(narratives)  # 292 volumes x 1.5 s = 438 s; the stimulus ends at 437 s
    with pytest.raises(
        ValueError,
        match=r"pieman_run-1_bold.nii.gz: 289 volumes x 1.5 s = 433.50 s after trimming 0 \+ 3 "
        r"TRs of 292, but the stimulus ends at onset 0.00 s .* = 437.00 s",
    ):
        load_bold(run, mask=full_mask, cleaning=CleaningConfig(trim_end_trs=3))
    with (
        pytest.warns(UserWarning, match="trim_start_trs 4 drops 6.00 s"),
        pytest.raises(ValueError, match=r"286 volumes .* = 429.00 s after trimming 4 \+ 2 TRs"),
    ):
        load_bold(run, mask=full_mask, cleaning=CleaningConfig(trim_start_trs=4, trim_end_trs=2))
    with pytest.warns(UserWarning, match=r"291 volumes after trimming 0 \+ 1 TRs of 292 cover"):
        bold = load_bold(run, mask=full_mask, cleaning=CleaningConfig(trim_end_trs=1))
    assert bold.data.shape[0] == 291
    late = dataclasses.replace(run, onset=9.0, duration=420.0)  # 9 s of scan before the story
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bold = load_bold(late, mask=full_mask, cleaning=CleaningConfig(trim_start_trs=6))
    assert bold.onset == pytest.approx(0.0) and bold.first_tr == 6


def test_nan_and_constant_voxels_are_dropped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    data = 100 + rng.standard_normal((4, 4, 3, 30))
    data[0, 0, 0, 7] = np.nan
    data[1, 1, 1] = 5.0
    path = write_bold(tmp_path / "bold.nii.gz", data, tr=2.0)
    run = RunSpec("01", "x", None, None, path, tmp_path / "x.wav", "x", 0.0, 2.0, 50.0)
    mask = nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), AFFINE)
    with pytest.warns(UserWarning, match="dropped 2 NaN/inf or constant"):
        bold = load_bold(run, mask=mask)
    assert bold.dropped_voxels == 2 and bold.data.shape == (30, 46)
    assert np.isfinite(bold.data).all()
    kept = bold.mask_img.get_fdata().astype(bool)
    assert not kept[0, 0, 0] and not kept[1, 1, 1] and kept.sum() == 46 and bold.kept.sum() == 46
    expected = masker(bold.mask_img, t_r=2.0).transform(nib.load(str(path)))
    np.testing.assert_allclose(bold.data, expected, atol=1e-5)
    with pytest.raises(ValueError, match="2 voxel\\(s\\) are NaN/inf or constant"):
        load_bold(run, mask=mask, cleaning=CleaningConfig(drop_invalid_voxels=False))


def test_confounds_are_regressed_out(tmp_path):
    rng = np.random.default_rng(1)
    confound = rng.standard_normal(60)
    data = 100 + rng.standard_normal((4, 4, 3, 60)) + 3 * confound
    path = write_bold(tmp_path / "bold.nii.gz", data, tr=2.0)
    run = RunSpec("01", "x", None, None, path, tmp_path / "x.wav", "x", 0.0, 2.0, 100.0)
    table = tmp_path / "confounds.tsv"
    table.write_text(
        "motion\tother\n" + "\n".join(f"{c}\t{rng.standard_normal()}" for c in confound)
    )
    cleaning = CleaningConfig(confound_columns=("motion",))
    bold = load_bold(
        run, mask=nib.Nifti1Image(np.ones((4, 4, 3)), AFFINE), cleaning=cleaning, confounds=table
    )
    correlation = (bold.data * ((confound - confound.mean()) / confound.std())[:, None]).mean(
        axis=0
    )
    assert np.abs(correlation).max() < 1e-4
    with pytest.raises(ValueError, match="expected \\[60 volumes, k\\]"):
        load_bold(
            run, confounds=np.zeros((59, 2)), mask=nib.Nifti1Image(np.ones((4, 4, 3)), AFFINE)
        )
    with pytest.raises(
        ValueError, match=r"no column matches \['csf'\]; available columns: \['motion', 'other'\]"
    ):
        load_bold(run, confounds=table, cleaning=CleaningConfig(confound_columns=("csf",)))


def test_confound_columns_by_name_and_pattern(tmp_path):
    table = tmp_path / "sub-01_task-x_desc-confounds_timeseries.tsv"
    table.write_text(
        "csf\trot_x\ttrans_x\ta_comp_cor_00\ta_comp_cor_06\tframewise_displacement\tnote\n"
        "1\t2\t3\t4\t5\tn/a\tok\n"
        "6\t7\t8\t9\t10\t0.5\tok\n"
    )
    matrix, names = read_confounds_table(
        table, ("trans_*", "a_comp_cor_0[0-5]", "rot_*", "trans_x", "framewise_displacement")
    )
    assert names == ["trans_x", "a_comp_cor_00", "rot_x", "framewise_displacement"]
    np.testing.assert_array_equal(matrix, [[3, 4, 2, np.nan], [8, 9, 7, 0.5]])
    with pytest.raises(ValueError, match=r"column\(s\) \['note'\] are not numeric"):
        read_confounds_table(table, ("csf", "note"))
    with pytest.raises(ValueError, match=r"no column matches \['Trans_\*'\]; available.*'note'"):
        read_confounds_table(table, ("Trans_*",))
    for bad in ("trans_x", (), ("trans_x", "")):
        with pytest.raises(ValueError, match="confound_columns"):
            CleaningConfig(confound_columns=bad)
    assert CleaningConfig(confound_columns=["trans_x"]).confound_columns == ("trans_x",)


def test_trim_confounds_fills_leading_na_with_the_first_value():
    matrix = np.array([[np.nan, 1.0], [np.nan, 2.0], [3.0, 3.0], [5.0, 4.0], [7.0, 9.0]])
    np.testing.assert_array_equal(
        trim_confounds(matrix, 0, 4), [[3.0, 1.0], [3.0, 2.0], [3.0, 3.0], [5.0, 4.0]]
    )
    np.testing.assert_array_equal(trim_confounds(matrix, 2, 5), matrix[2:])
    holes = matrix.copy()
    holes[3, 1] = np.nan
    with pytest.raises(ValueError, match="confound 'rot_x' is n/a or infinite at row 3"):
        trim_confounds(holes, 1, 5, ["fd", "rot_x"], "table.tsv")
    holes[3, 1] = np.inf
    with pytest.raises(ValueError, match="'column 1' is n/a or infinite at row 3"):
        trim_confounds(holes, 0, 5)
    with pytest.raises(ValueError, match=r"\['fd'\] have no value in volumes 0-1"):
        trim_confounds(matrix, 0, 2, ["fd", "rot_x"])


def brain_image(tmp_path: Path, n_volumes: int = 12, seed: int = 0) -> Path:
    """A 12x12x10 EPI-like image: a bright ellipsoid 'brain' in dark noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in (12, 12, 10)), indexing="ij")
    brain = ((i - 5.5) / 4.5) ** 2 + ((j - 5.5) / 4.5) ** 2 + ((k - 4.5) / 3.5) ** 2 <= 1
    data = np.where(brain[..., None], 500.0, 20.0) + 5 * rng.standard_normal(
        (12, 12, 10, n_volumes)
    )
    return write_bold(tmp_path / f"brain{seed}.nii.gz", data, tr=2.0)


def test_computed_mask_matches_nilearn(tmp_path):
    path = brain_image(tmp_path)
    img = nib.load(str(path))
    np.testing.assert_allclose(mean_image(img).get_fdata(), img.get_fdata().mean(axis=3), rtol=1e-5)
    ours = compute_mask([path]).get_fdata()
    assert np.array_equal(ours, compute_epi_mask(img).get_fdata()) and 100 < ours.sum() < 800
    run = RunSpec("01", "x", None, None, path, tmp_path / "x.wav", "x", 0.0, 2.0, 20.0)
    bold = load_bold(run)
    assert bold.data.shape == (12, int(ours.sum()))
    common = compute_mask([path, brain_image(tmp_path, seed=1)])
    assert common.shape == (12, 12, 10) and common.get_fdata().sum() > 100


def test_mask_on_another_grid_is_resampled_or_refused(tmp_path):
    path = brain_image(tmp_path)
    run = RunSpec("01", "x", None, None, path, tmp_path / "x.wav", "x", 0.0, 2.0, 20.0)
    fine = nib.Nifti1Image(np.ones((24, 24, 20), np.uint8), np.diag([1.5, 1.5, 2.0, 1.0]))
    with pytest.warns(UserWarning, match="another grid .* resampled with nearest"):
        bold = load_bold(run, mask=fine)
    assert bold.mask_img.shape == (12, 12, 10) and bold.data.shape == (12, 1440)
    far = nib.Nifti1Image(np.ones((12, 12, 10), np.uint8), AFFINE @ _shift(500.0))
    far_path = tmp_path / "far_mask.nii.gz"
    nib.save(far, str(far_path))
    with pytest.raises(ValueError, match="far_mask.nii.gz .* cover different parts of space: 0%"):
        load_bold(run, mask=far_path)
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        load_bold(run, mask=tmp_path / "nope.nii.gz")
    with pytest.raises(ValueError, match="is empty"):
        load_mask(nib.Nifti1Image(np.zeros((12, 12, 10)), AFFINE), nib.load(str(path)))
    with pytest.raises(ValueError, match="must be 3D"):
        load_mask(nib.Nifti1Image(np.ones((12, 12, 10, 2)), AFFINE), nib.load(str(path)))


def _shift(mm: float) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = mm
    return shift


def test_gifti_hemispheres_are_concatenated(tmp_path):
    rng = np.random.default_rng(2)
    func = tmp_path / "bids" / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "bids" / "stimuli").mkdir()
    import soundfile as sf

    sf.write(tmp_path / "bids" / "stimuli" / "story.wav", np.zeros(8000 * 20, np.float32), 8000)
    (tmp_path / "bids" / "task-story_bold.json").write_text('{"RepetitionTime": 2.0}')
    (func / "sub-01_task-story_events.tsv").write_text(
        "onset\tduration\ttrial_type\tstim_file\n2.0\t20.0\tstory\tstory.wav\n"
    )
    series = {}
    for hemi, n_vertices in (("L", 7), ("R", 5)):
        series[hemi] = rng.standard_normal((12, n_vertices)).astype(np.float32)
        gii = nib.gifti.GiftiImage(
            darrays=[
                nib.gifti.GiftiDataArray(v, intent="NIFTI_INTENT_TIME_SERIES") for v in series[hemi]
            ]
        )
        nib.save(gii, str(func / f"sub-01_task-story_hemi-{hemi}_space-fsaverage5_bold.func.gii"))
    (run,) = discover_runs(tmp_path / "bids")
    assert run.space == "fsaverage5" and "hemi-L" in run.bold_path.name
    plain = CleaningConfig(detrend=False, standardize=False, smoothing_fwhm=4.0)
    with pytest.warns(UserWarning, match="smoothing_fwhm applies to NIfTI volumes only"):
        bold = load_bold(run, cleaning=plain)
    np.testing.assert_allclose(bold.data, np.concatenate([series["L"], series["R"]], axis=1))
    assert bold.space == "fsaverage5" and bold.kept.size == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = load_bold(run)
    np.testing.assert_allclose(clean.data.std(axis=0, ddof=1), 1.0, rtol=1e-4)


def test_bad_cleaning_config_and_file():
    with pytest.raises(ValueError, match="trim_start_trs/trim_end_trs must be >= 0"):
        CleaningConfig(trim_start_trs=-1)
    with pytest.raises(ValueError, match="high_pass must be > 0"):
        CleaningConfig(high_pass=0.0)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="drift_order"):
            CleaningConfig(drift_order=bad)
    run = RunSpec(
        "01", "x", None, None, Path("/nonexistent/bold.nii.gz"), Path("x.wav"), "x", 0, 2.0
    )
    with pytest.raises(FileNotFoundError, match="/nonexistent/bold.nii.gz"):
        load_bold(run)


@pytest.mark.parametrize("name", ["scaled.nii.gz", "scaled.nii", None])
def test_iter_volumes_matches_nibabel(tmp_path, name):
    rng = np.random.default_rng(3)
    img = nib.Nifti1Image(rng.integers(-300, 300, (5, 4, 3, 23)).astype(np.int16), AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    if name is not None:
        nib.save(img, str(tmp_path / name))
        img = nib.load(str(tmp_path / name))
    expected = img.get_fdata()
    blocks = list(iter_volumes(img, start=3, stop=20, chunk_volumes=5))
    assert [first for first, _ in blocks] == [3, 8, 13, 18]
    got = np.concatenate([block for _, block in blocks], axis=3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected[..., 3:20], rtol=1e-6)


def test_truncated_nifti_is_named(tmp_path):
    path = write_bold(tmp_path / "cut.nii", np.ones((4, 4, 3, 10)), tr=2.0)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="cut.nii is truncated: volumes 8-9 of 10"):
        list(iter_volumes(nib.load(str(path)), chunk_volumes=4))
    noise = np.random.default_rng(4).standard_normal((4, 4, 3, 10))
    gz = write_bold(tmp_path / "cut.nii.gz", noise, tr=2.0)
    gz.write_bytes(gz.read_bytes()[:-300])
    with pytest.raises(ValueError, match="cut.nii.gz is (corrupt or )?truncated"):
        list(iter_volumes(nib.load(str(gz)), chunk_volumes=4))
    garbage = tmp_path / "garbage_bold.nii.gz"
    garbage.write_bytes(b"not a nifti at all")
    run = RunSpec("01", "x", None, None, garbage, tmp_path / "x.wav", "x", 0.0, 2.0)
    with pytest.raises(ValueError, match="cannot read BOLD image .*garbage_bold.nii.gz"):
        load_bold(run)
    hf5 = tmp_path / "garbage.hf5"
    hf5.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot read response array .*garbage.hf5"):
        load_bold(dataclasses.replace(run, bold_path=hf5))
