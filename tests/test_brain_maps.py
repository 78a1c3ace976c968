"""Brain maps (NIfTI, GIfTI, PNG) and the ``wav2brain encode`` command that writes them.

The command runs on a fixture-built prepared dataset (``responses`` Parquet + card + mask) and a
feature cache written with :class:`~wav2brain.features.cache.FeatureCache`: SIMULATED data where
layer_01 carries the planted features of the first voxels and layer_02 is noise.
"""

from __future__ import annotations

import argparse
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from encoding_data import fixture_key
from wav2brain.commands import encode as encode_command
from wav2brain.encoding.dataset import SCORE_COLUMNS
from wav2brain.reports.brain_maps import (
    save_gifti,
    save_nifti,
    split_hemispheres,
    volume_image,
    write_map,
)

TR = 1.5
N_TRS = 80
STORIES = ("story-a", "story-b", "story-c")
SUBJECTS = ("01", "02")
N_DRIVEN = 12


def run_encode(argv: list[str]) -> int:
    """Parse ``wav2brain encode`` arguments with the command's own parser and run it."""
    parser = argparse.ArgumentParser(prog="wav2brain")
    encode_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["encode", *argv])
    return args.func(args)


def mask_image(shape=(5, 6, 4)) -> nib.Nifti1Image:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:4, 1:5, 1:3] = 1
    return nib.Nifti1Image(mask, np.diag([3.0, 3.0, 3.0, 1.0]))


def test_volume_maps_round_trip_through_the_mask(tmp_path):
    mask = mask_image()
    values = np.arange(int(mask.get_fdata().sum()), dtype=np.float32)
    path = save_nifti(values, mask, tmp_path / "r.nii.gz")
    image = nib.load(path)
    assert image.shape == mask.shape
    np.testing.assert_array_equal(image.get_fdata()[mask.get_fdata() > 0], values)
    np.testing.assert_array_equal(image.affine, mask.affine)
    assert not list(tmp_path.glob("*partial*"))
    with pytest.raises(ValueError, match="map has 3 values but the mask has 24 voxels"):
        volume_image(values[:3], mask)
    with pytest.raises(ValueError, match=r"needs a \.nii or \.nii\.gz name"):
        save_nifti(values, mask, tmp_path / "r.png")


def test_surface_maps_write_gifti_and_split_hemispheres(tmp_path):
    values = np.linspace(-1, 1, 20484, dtype=np.float32)
    path = save_gifti(values, tmp_path / "r.gii")
    np.testing.assert_array_equal(nib.load(path).darrays[0].data, values)
    parts = split_hemispheres(values)
    assert parts["left"].shape == (10242,) and parts["right"][0] == values[10242]
    with pytest.raises(ValueError, match="map has 5 values"):
        split_hemispheres(values[:5])
    written = write_map(values[:100], tmp_path / "small", "fsaverage6")
    assert [p.name for p in written] == ["small.gii"]  # no bundled mesh of that size: no PNG
    with pytest.raises(ValueError, match="needs a mask image"):
        write_map(values, tmp_path / "x", "MNI152NLin2009cAsym")


def test_volume_map_png(tmp_path):
    mask = mask_image()
    written = write_map(np.ones(24), tmp_path / "best_r", "native", mask, title="r")
    assert [p.name for p in written] == ["best_r.nii.gz", "best_r.png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def build_dataset(root):
    """A prepared dataset folder and a feature cache (SIMULATED); returns (dataset, cache)."""
    from wav2brain.data.hf_layout import response_table, write_shard
    from wav2brain.features.cache import FeatureCache
    from wav2brain.features.resample import TRGrid

    rng = np.random.default_rng(0)
    dataset, cache_dir = root / "dataset", root / "cache"
    mask = mask_image()
    n_voxels = int(mask.get_fdata().sum())
    dataset.mkdir()
    nib.save(mask, dataset / "mask.nii.gz")
    (dataset / "README.md").write_text(
        "---\nconfigs:\n- config_name: responses\n  data_files:\n  - split: train\n"
        "    path: responses/*.parquet\n---\n# fixture (simulated)\n"
    )
    weights = rng.standard_normal((6, N_DRIVEN))
    cache, run_rows = FeatureCache(cache_dir), []
    for story in STORIES:
        planted = rng.standard_normal((N_TRS, 6)).astype(np.float32)
        key = fixture_key(story, TR)
        features = {
            "layer_01": planted,
            "layer_02": rng.standard_normal((N_TRS, 6)).astype(np.float32),
        }
        entry = cache.put(key, TRGrid(TR, 0.0, N_TRS), features)
        for subject in SUBJECTS:
            bold = rng.standard_normal((N_TRS, n_voxels)).astype(np.float32)
            bold[:, :N_DRIVEN] += 2 * planted @ weights / np.sqrt(6)
            meta = dict(
                subject=subject,
                session=None,
                task="listen",
                run=None,
                stimulus_id=story,
                onset=0.0,
                tr=TR,
                space="native",
                mask="mask.nii.gz",
            )
            write_shard(
                response_table(meta, bold, np.array([], int)),
                dataset / "responses" / f"sub-{subject}_{story}.parquet",
            )
            run_rows.append(
                dict(
                    subject=subject,
                    session=None,
                    task="listen",
                    run=None,
                    stimulus_id=story,
                    onset=0.0,
                    tr=TR,
                    n_trs=N_TRS,
                    path=str(entry.path.relative_to(cache_dir)),
                    row_offset=0,
                )
            )
    pd.DataFrame(run_rows).to_parquet(cache_dir / "runs.parquet")
    return dataset, cache_dir


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    dataset, cache = build_dataset(root)
    out = root / "out"
    args = [
        str(dataset),
        "--features",
        str(cache),
        "--out",
        str(out),
        "--alphas",
        "0.1",
        "10",
        "1000",
    ]
    assert run_encode(args) == 0
    return dataset, cache, out, args


def test_encode_writes_scores_that_find_the_planted_voxels(encoded):
    _, _, out, _ = encoded
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert set(scores["ceiling_method"]) == {"loso"} and set(scores["cv_kind"]) == {"stories"}
    assert set(scores["n_trs"]) == {len(STORIES) * N_TRS} and set(scores["ceiling_n"]) == {1}
    assert len(scores) == len(SUBJECTS) * 2 * 24
    signal = scores[scores["layer"] == "layer_01"]
    driven = signal[signal["voxel"] < N_DRIVEN]
    assert driven["r"].min() > 0.55
    assert signal[signal["voxel"] >= N_DRIVEN]["r"].abs().max() < 0.3
    assert scores[scores["layer"] == "layer_02"]["r"].abs().max() < 0.3
    # leave-one-subject-out ceilings (conservative with two subjects): clear where driven only
    assert driven["ceiling"].min() > 0.3
    assert signal[signal["voxel"] >= N_DRIVEN]["ceiling"].abs().max() < 0.3
    assert np.isfinite(driven["r_normalized"]).all() and driven["ceiling_significant"].all()
    profile = pd.read_parquet(out / "profile.parquet")
    assert set(profile[profile["voxel"] < N_DRIVEN]["best_layer"]) == {"layer_01"}
    preferred = profile["preferred_layer"].dropna()  # model layer numbers, layer_01 is 1
    assert preferred.between(1, 2).all()
    assert profile[profile["voxel"] < N_DRIVEN]["preferred_layer"].between(1, 1.3).all()


def test_encode_writes_maps_and_resumes(encoded, caplog):
    dataset, _, out, args = encoded
    image = nib.load(out / "maps" / "sub-01_layer_01_r.nii.gz")
    assert image.shape == (5, 6, 4)
    assert (out / "maps" / "sub-02_best_r.png").is_file()
    assert (out / "maps" / "sub-01_preferred_layer.nii.gz").is_file()
    before = pd.read_parquet(out / "scores.parquet")
    with caplog.at_level("INFO"):
        assert run_encode(args) == 0
    assert "reusing" in caplog.text
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), before)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d, c: [str(d.parent), "--features", str(c)], "no README.md"),
        (lambda d, c: [str(d), "--features", str(d)], "runs.parquet not found"),
        (lambda d, c: [str(d), "--features", str(c), "--layers", "7"], "--layers '7' not in"),
        (
            lambda d, c: [str(d), "--features", str(c), "--subjects", "09"],
            "--subjects ['09'] not in",
        ),
        (
            lambda d, c: [str(d), "--features", str(c), "--alphas", "-1"],
            "--alphas must be positive",
        ),
        (lambda d, c: [str(d), "--features", str(d / "nope")], "no such feature cache"),
    ],
)
def test_encode_bad_input(encoded, tmp_path, change, message):
    dataset, cache, _, _ = encoded
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        run_encode([*change(dataset, cache), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "scores.parquet").exists()


def test_a_selection_keeps_ceilings_and_layer_numbers_and_reuses_no_part(encoded, tmp_path, caplog):
    """--subjects 01 --layers 2: LOSO still uses subject 02; the preferred layer is 2, not 1 or 0."""
    import shutil

    dataset, cache, out, _ = encoded
    full = pd.read_parquet(out / "scores.parquet")
    subset = tmp_path / "subset"
    shutil.copytree(out / "parts", subset / "parts")  # the full run's parts must not be served
    with caplog.at_level("INFO"):
        args = [str(dataset), "--features", str(cache), "--out", str(subset), "--alphas", "10"]
        assert run_encode([*args, "--subjects", "01", "--layers", "2"]) == 0
    assert "reusing" not in caplog.text
    scores = pd.read_parquet(subset / "scores.parquet")
    assert set(scores["subject"]) == {"01"} and set(scores["layer"]) == {"layer_02"}
    expected = full[(full["subject"] == "01") & (full["layer"] == "layer_02")]
    np.testing.assert_allclose(scores["ceiling"], expected["ceiling"], rtol=1e-6)
    np.testing.assert_allclose(scores["ceiling"], loso_oracle(dataset, "01"), atol=1e-6)
    assert set(scores["ceiling_method"]) == {"loso"}
    profile = pd.read_parquet(subset / "profile.parquet")
    assert set(profile["preferred_layer"].dropna()) == {2.0}
    preferred = nib.load(subset / "maps" / "sub-01_preferred_layer.nii.gz").get_fdata()
    assert set(np.unique(preferred[np.isfinite(preferred) & (preferred != 0)])) == {2.0}


def loso_oracle(dataset, subject):
    """Oracle: loso_ceiling on the stacked subjects of each story, mean over stories."""
    from datasets import load_dataset

    from wav2brain.encoding.noise_ceiling import loso_ceiling

    responses = load_dataset(str(dataset), "responses", split="train").with_format("numpy")
    per_story = []
    for story in STORIES:
        rows = [row for row in responses if row["stimulus_id"] == story]
        stack = np.stack([np.stack(row["bold"]) for row in rows])
        position = [row["subject"] for row in rows].index(subject)
        per_story.append(loso_ceiling(stack)[0][position])
    return np.mean(per_story, axis=0)  # stories of equal length: equal weights


def test_cli_defaults_follow_the_config(monkeypatch):
    """Unset options take EncodeConfig's values (read after parsing, without torch at --help)."""
    import dataclasses

    from wav2brain.encoding import dataset, layers

    @dataclasses.dataclass
    class Ridge(layers.EncodingConfig):
        inner_cv: int = 3
        criterion: str = "r"

    @dataclasses.dataclass
    class Other(dataset.EncodeConfig):
        encoding: layers.EncodingConfig = dataclasses.field(default_factory=Ridge)
        ceiling_alpha: float = 0.01

    monkeypatch.setattr(dataset, "EncodeConfig", Other)
    parser = argparse.ArgumentParser()
    encode_command.add_parser(parser.add_subparsers())
    base = ["encode", "d", "--features", "f", "--out", "o"]
    config = encode_command.config_from_args(parser.parse_args(base))
    assert (config.encoding.inner_cv, config.encoding.criterion) == (3, "r")
    assert config.ceiling_alpha == 0.01 and config.encoding.alphas == layers.DEFAULT_ALPHAS
    assert config.maps and config.normalize_features and not config.allow_run_folds
    chosen = encode_command.config_from_args(
        parser.parse_args([*base, "--inner-cv", "4", "--allow-run-folds", "--no-maps"])
    )
    assert chosen.encoding.inner_cv == 4 and chosen.allow_run_folds and not chosen.maps
    for option, message in (
        (["--ceiling-alpha", "1"], "--ceiling-alpha must be in"),
        (["--inner-cv", "1"], "--inner-cv must be at least 2"),
    ):
        with pytest.raises(ValueError, match=message):
            encode_command.config_from_args(parser.parse_args([*base, *option]))
