"""Functional networks (CanICA / DictLearning) as biological neurons: recovery, time courses, inputs."""

from __future__ import annotations

import types
import warnings

import nibabel as nib
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from test_anchoring_atlases import mni_mask, no_network  # noqa: F401 (a fixture)
from wav2brain.anchoring import networks as nets
from wav2brain.anchoring.networks import (
    NetworkConfig,
    NetworkMaps,
    dataset_networks,
    functional_networks,
    parcellation_from_atlas,
)

SHAPE = (10, 10, 10)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
CENTRES = ((3, 3, 3), (6, 6, 6), (3, 6, 5))
FAST = dict(n_components=4, smoothing_fwhm=None, n_init=3)


def cube_mask() -> nib.Nifti1Image:
    data = np.zeros(SHAPE, dtype=np.uint8)
    data[1:-1, 1:-1, 1:-1] = 1
    return nib.Nifti1Image(data, AFFINE)


def blobs(mask: nib.Nifti1Image) -> np.ndarray:
    """Three Gaussian networks ``[3, n_voxels]`` over the mask's voxels."""
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    return np.stack([np.exp(-((ijk - c) ** 2).sum(1) / (2 * 1.2**2)) for c in CENTRES])


def planted_runs(mask, n_subjects=3, n_runs=2, n_trs=80, gain=3.0, seed=0):
    """``({subject: [bold]}, {subject: [planted time courses]})``; gain 0 gives pure noise."""
    rng = np.random.default_rng(seed)
    maps = blobs(mask)
    runs, truth = {}, {}
    for s in range(n_subjects):
        runs[f"{s:02d}"], truth[f"{s:02d}"] = [], []
        for _ in range(n_runs):
            courses = rng.standard_normal((n_trs + 3, len(CENTRES)))
            courses = (courses[3:] + courses[2:-1] + courses[1:-2] + courses[:-3]) / 2
            noise = rng.standard_normal((n_trs, maps.shape[1]))
            runs[f"{s:02d}"].append((gain * courses @ maps + noise + 100).astype(np.float32))
            truth[f"{s:02d}"].append(courses)
    return runs, truth


def best_match(found: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """For each planted map, the largest |spatial correlation| with a found one."""
    corr = np.corrcoef(np.vstack([planted, found]))[: len(planted), len(planted) :]
    return np.abs(corr).max(axis=1)


@pytest.fixture(autouse=True)
def quiet_fastica():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        yield


def test_canica_recovers_planted_networks_and_their_time_courses():
    mask = cube_mask()
    runs, truth = planted_runs(mask)
    networks, courses = functional_networks(runs, mask, NetworkConfig(**FAST), space="native")
    assert networks.n_networks == 4 and networks.names[0] == "net01"
    maps = networks.maps()
    assert maps.shape == (4, int(np.asarray(mask.dataobj).sum()))
    assert np.all(best_match(maps, blobs(mask)) > 0.85)
    # Each planted time course is carried by one network's time course in every run.
    for subject, own in courses.items():
        assert [c.shape for c in own] == [(80, 4), (80, 4)]
        for course, planted in zip(own, truth[subject], strict=True):
            corr = np.corrcoef(planted.T, course.T)[:3, 3:]
            assert np.all(np.abs(corr).max(axis=1) > 0.8)
    parcels = networks.parcellation(mask)
    assert parcels.kind == "network" and parcels.n_voxels == maps.shape[1]
    centre_voxels = [
        int(np.flatnonzero((np.argwhere(np.asarray(mask.dataobj) > 0) == c).all(1))[0])
        for c in CENTRES
    ]
    assert len({int(parcels.labels[v]) for v in centre_voxels}) == 3  # three distinct networks
    assert -1 not in {int(parcels.labels[v]) for v in centre_voxels}


def test_pure_noise_recovers_no_network():
    """Negative control: the same decomposition on noise finds nothing like the planted maps."""
    mask = cube_mask()
    runs, _ = planted_runs(mask, gain=0.0)
    networks, _ = functional_networks(runs, mask, NetworkConfig(**FAST), space="native")
    assert np.all(best_match(networks.maps(), blobs(mask)) < 0.4)


def test_dictlearning_recovers_planted_networks():
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=2)
    config = NetworkConfig(method="dictlearning", n_components=4, smoothing_fwhm=None, alpha=1.0)
    networks, courses = functional_networks(runs, mask, config, space="native")
    assert np.all(best_match(networks.maps(), blobs(mask)) > 0.8)
    assert courses["00"][0].shape == (80, 4)


def test_time_courses_are_stage_one_dual_regression():
    """The time courses equal a least-squares fit of each TR's (run-z-scored) volume on the maps."""
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=2, n_runs=1)
    networks, courses = functional_networks(runs, mask, NetworkConfig(**FAST), space="native")
    bold = runs["01"][0]
    z = (bold - bold.mean(0)) / bold.std(0)
    expected = np.linalg.lstsq(networks.maps().T.astype(np.float64), z.T, rcond=None)[0].T
    np.testing.assert_allclose(courses["01"][0], expected, atol=1e-4)
    np.testing.assert_allclose(networks.time_courses(bold, mask), expected, atol=1e-4)
    with pytest.raises(ValueError, match="does not have the mask's 512 voxel columns"):
        networks.time_courses(bold[:, :10], mask)


def test_one_subject_bold_allocated_at_a_time(monkeypatch):
    """nilearn receives the subjects lazily, each 4-D image a view of one buffer (n_jobs=1)."""
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=4, n_runs=1, n_trs=40)
    runs["03"] = [runs["03"][0][:30]]
    seen = []
    build = nets._SubjectImages.__getitem__

    def tracked(self, index):
        image = build(self, index)
        seen.append(np.asarray(image.dataobj))
        return image

    monkeypatch.setattr(nets._SubjectImages, "__getitem__", tracked)
    functional_networks(runs, mask, NetworkConfig(**FAST), space="native")
    assert [a.shape[3] for a in seen] == [40, 40, 40, 30]
    assert all(np.shares_memory(seen[0], a) for a in seen[1:])
    # The last image holds the last subject's data (its run z-scored), nothing of the others.
    inside = np.asarray(mask.dataobj) > 0
    last = runs["03"][0]
    np.testing.assert_allclose(seen[3][inside].T, (last - last.mean(0)) / last.std(0), atol=1e-4)
    assert not seen[3][~inside].any()
    # With parallel jobs (several images in flight) each image gets its own array.
    fresh = nets._SubjectImages(runs, nets._Masks.build(list(runs), mask), reuse=False)
    assert not np.shares_memory(np.asarray(fresh[0].dataobj), np.asarray(fresh[1].dataobj))


def test_networks_named_against_a_reference_with_stages():
    mask = cube_mask()
    runs, _ = planted_runs(mask)
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    regions = np.zeros(SHAPE, dtype=np.int16)
    for label, centre in enumerate(CENTRES[:2], start=1):
        near = ijk[((ijk - centre) ** 2).sum(1) <= 2]
        regions[tuple(near.T)] = label

    def reference(mask_img):
        return parcellation_from_atlas(
            nib.Nifti1Image(regions, AFFINE),
            ["heschl", "angular"],
            mask_img,
            "network",
            stages={"heschl": "auditory", "angular": "higher-order"},
        )

    networks, _ = functional_networks(
        runs, mask, NetworkConfig(**FAST), space="native", reference=reference
    )
    table = networks.table()
    assert set(table["matched"]) >= {"heschl", "angular"}
    heschl = table[table["matched"] == "heschl"].iloc[0]
    assert heschl["name"].endswith("_heschl") and heschl["stage"] == "auditory"
    assert heschl["matched_share"] > 0.5
    assert "named against atlas" in networks.source
    # Unmatched networks keep bare names and stage "other".
    assert all(n.startswith("net") for n in table["name"])
    assert set(table.loc[table["matched"] == "", "stage"]) <= {"other"}


def test_mni_runs_are_named_against_the_default_atlas(monkeypatch):
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=2, n_runs=1)
    seen = []

    def fake_default(space, mask_img, kind="network", **kwargs):
        seen.append((space, kind))
        n = int(np.asarray(mask_img.dataobj).sum())
        return nets.Parcellation("network", ("Auditory",), np.zeros(n, int), "fake", ("auditory",))

    monkeypatch.setattr(nets, "default_parcellation", fake_default)
    networks, _ = functional_networks(runs, mask, NetworkConfig(**FAST), space="MNI152NLin6Asym")
    assert seen == [("MNI152NLin6Asym", "network")]
    assert "space MNI152NLin6Asym" in networks.source


def test_save_and_load_round_trip(tmp_path):
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=2, n_runs=1, n_trs=40)
    networks, _ = functional_networks(runs, mask, NetworkConfig(**FAST), space="native")
    folder = networks.save(tmp_path / "networks")
    assert not list(folder.glob("*partial*"))
    loaded = NetworkMaps.load(folder)
    assert loaded.names == networks.names and loaded.config == networks.config
    np.testing.assert_allclose(loaded.maps(), networks.maps())
    np.testing.assert_array_equal(loaded.parcellation().labels, networks.parcellation().labels)
    (folder / "networks.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="networks.tsv not found"):
        NetworkMaps.load(folder)


def test_network_config_spec():
    assert NetworkConfig.from_spec("canica:20") == NetworkConfig(n_components=20)
    assert NetworkConfig.from_spec("DictLearning").method == "dictlearning"
    assert NetworkConfig.from_spec("canica:8", random_state=3).spec == "canica:8"
    with pytest.raises(ValueError, match="--networks 'ica:20': expected METHOD"):
        NetworkConfig.from_spec("ica:20")
    with pytest.raises(ValueError, match="N must be a positive integer"):
        NetworkConfig.from_spec("canica:zero")
    for bad in ({"n_components": 0}, {"smoothing_fwhm": -1.0}, {"canica_threshold": "high"},
                {"alpha": 0.0}, {"memory_limit_gb": 0.0}, {"n_jobs": True}):  # fmt: skip
        with pytest.raises(ValueError):
            NetworkConfig(**bad)


def record(subject, space, n_trs=20, n_voxels=512):
    """A stand-in for a RunRecord (metadata only: loading it would fail)."""
    return types.SimpleNamespace(
        subject=subject, space=space, n_trs=n_trs, n_voxels=n_voxels, shard=None, key=subject
    )


def test_bad_inputs_are_refused_before_any_bold_is_read(monkeypatch, tmp_path):
    def never(run):
        raise AssertionError("BOLD read before the inputs were checked")

    monkeypatch.setattr(nets, "_load_run", never)
    mask = cube_mask()
    with pytest.raises(ValueError, match=r"different spaces \{'MNI152NLin6Asym': 'a', 'T1w': 'b'"):
        functional_networks(
            {"a": [record("a", "MNI152NLin6Asym")], "b": [record("b", "T1w")]}, mask
        )
    with pytest.raises(ValueError, match="b: BOLD has 100 voxel columns but the subject's mask"):
        functional_networks({"a": [record("a", "x")], "b": [record("b", "x", n_voxels=100)]}, mask)
    with pytest.raises(ValueError, match="would need about .* GB, above the limit of 0.0 GB"):
        functional_networks(
            {"a": [record("a", "x")]}, mask, NetworkConfig(memory_limit_gb=1e-6, **FAST)
        )
    with pytest.raises(ValueError, match="600 networks requested from a group mask of 512"):
        functional_networks({"a": [record("a", "x")]}, mask, NetworkConfig(n_components=600))
    other = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), AFFINE), other)
    with pytest.raises(ValueError, match=r"sub b's mask .*other_grid.nii.gz .*another grid"):
        functional_networks(
            {"a": [record("a", "x")], "b": [record("b", "x", n_voxels=125)]},
            {"a": mask, "b": other},
        )
    with pytest.raises(ValueError, match=r"no mask given for subjects \['b'\]"):
        functional_networks({"a": [record("a", "x")], "b": [record("b", "x")]}, {"a": mask})
    with pytest.raises(ValueError, match="sub a: no runs"):
        functional_networks({"a": []}, mask)
    with pytest.raises(ValueError, match="space 'MNI' given but the runs are in space 'x'"):
        functional_networks({"a": [record("a", "x")]}, mask, space="MNI")


def test_different_masks_on_one_grid_use_their_common_voxels():
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=2, n_runs=1)
    smaller = np.asarray(mask.dataobj).copy()
    smaller[1] = 0
    small_mask = nib.Nifti1Image(smaller, AFFINE)
    inside = np.asarray(mask.dataobj)[smaller > 0] > 0
    keep = (np.asarray(mask.dataobj) > 0)[np.asarray(mask.dataobj) > 0]
    keep = smaller[np.asarray(mask.dataobj) > 0] > 0
    runs["01"] = [runs["01"][0][:, keep]]
    networks, courses = functional_networks(
        runs, {"00": mask, "01": small_mask}, NetworkConfig(**FAST), space="native"
    )
    assert int(np.asarray(networks.mask_img.dataobj).sum()) == int(inside.sum())
    assert courses["00"][0].shape == courses["01"][0].shape == (80, 4)
    assert networks.parcellation(mask).n_voxels == 512


def test_dataset_networks_reads_runs_and_masks(tmp_path):
    from encoding_data import design, write_prepared

    dataset, _ = write_prepared(tmp_path, design(["01", "02"], ["a", "b"]), n_voxels=24)
    config = NetworkConfig(n_components=2, smoothing_fwhm=None, n_init=2)
    networks, courses = dataset_networks(dataset, config)
    assert list(courses) == ["01", "02"]
    assert [c.shape for c in courses["01"]] == [(60, 2), (60, 2)]
    assert "space native" in networks.source and networks.names == ("net01", "net02")
    only, _ = dataset_networks(dataset, config, subjects=["02"])
    assert "over 1 subjects" in only.source


def test_dataset_networks_refuses_runs_without_one_mask(tmp_path):
    from encoding_data import design, write_prepared

    dataset, _ = write_prepared(tmp_path / "a", design(["01"], ["a"]), mask=None)
    with pytest.raises(ValueError, match="sub 01's runs name no mask"):
        dataset_networks(dataset)
    runs = [
        {"subject": "01", "story": "a", "mask": "masks/grid-0.nii.gz"},
        {"subject": "01", "story": "b", "mask": "masks/grid-1.nii.gz"},
    ]
    dataset, _ = write_prepared(tmp_path / "b", runs)
    with pytest.raises(ValueError, match=r"sub 01's runs name several masks \['masks/grid-0"):
        dataset_networks(dataset)


def mni_networks(gain: float, seed: int = 1):
    """Networks (2 components) of 2 subjects on an 8-mm MNI grid with two planted networks:
    both Heschl's gyri, and the posterior cingulate / precuneus (12-mm spheres)."""
    mask = mni_mask(8.0)
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    xyz = ijk @ mask.affine[:3, :3].T + mask.affine[:3, 3]

    def sphere(*centres):
        return np.max([np.linalg.norm(xyz - c, axis=1) <= 12 for c in centres], axis=0)

    planted = np.stack([sphere((-46, -20, 8), (48, -20, 8)), sphere((0, -52, 26))]).astype(float)
    rng = np.random.default_rng(seed)
    runs = {
        s: [gain * rng.standard_normal((150, 2)) @ planted + rng.standard_normal((150, len(xyz)))]
        for s in ("a", "b")
    }
    config = NetworkConfig(n_components=2, smoothing_fwhm=None, n_init=3)
    networks, _ = functional_networks(runs, mask, config, space="MNI")
    return networks, planted


@pytest.mark.usefixtures("no_network")
def test_planted_mni_networks_are_named_auditory_and_default_mode():
    """A network planted in both Heschl's gyri is named after Seitzman's auditory network (stage
    auditory), one in the posterior cingulate / precuneus after its default-mode network (stage
    higher-order)."""
    networks, planted = mni_networks(gain=3.0)
    table = networks.table()
    best = [int(np.argmax(np.corrcoef(np.vstack([p, networks.maps()]))[0, 1:])) for p in planted]
    assert table.loc[best[0], "matched"] == "Auditory" and table.loc[best[0], "stage"] == "auditory"
    assert table.loc[best[1], "matched"] == "DefaultMode"
    assert table.loc[best[1], "stage"] == "higher-order"
    assert "nilearn seitzman_2018" in networks.source


def test_noise_networks_are_not_named():
    """Negative control: networks of pure noise match no atlas network by a majority."""
    networks, _ = mni_networks(gain=0.0)
    assert networks.names == ("net01", "net02") and networks.stages == ("other", "other")
    assert max(networks.matched_share) < 0.5


def test_saved_networks_are_reused_when_the_inputs_match(tmp_path, monkeypatch):
    mask = cube_mask()
    runs, _ = planted_runs(mask, n_subjects=2, n_runs=1, n_trs=40)
    out = tmp_path / "networks"
    first, courses = functional_networks(
        runs, mask, NetworkConfig(**FAST), space="native", out_dir=out
    )
    assert (out / "networks.json").is_file() and (out / "networks.nii.gz").is_file()
    fits = []
    monkeypatch.setattr(
        nets.NetworkConfig, "estimator", lambda self, m: fits.append(1) or pytest.fail("refit")
    )
    again, courses_again = functional_networks(
        runs, mask, NetworkConfig(**FAST, name_min_share=0.9), space="native", out_dir=out
    )
    assert not fits and again.config.name_min_share == 0.9
    np.testing.assert_allclose(again.maps(), first.maps(), atol=1e-6)
    np.testing.assert_allclose(courses_again["00"][0], courses["00"][0], atol=1e-5)
    # Negative control: other data (or decomposition settings) refit.
    runs["00"][0] = runs["00"][0] + 1e-3
    with pytest.raises(pytest.fail.Exception, match="refit"):
        functional_networks(runs, mask, NetworkConfig(**FAST), space="native", out_dir=out)
    monkeypatch.undo()
    functional_networks(
        runs, mask, NetworkConfig(**{**FAST, "n_components": 3}), space="native", out_dir=out
    )
    assert NetworkMaps.load(out).n_networks == 3
