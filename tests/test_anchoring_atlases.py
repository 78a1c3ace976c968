"""Regions for anchoring: Parcellation, user atlases, nilearn's offline atlases, simulated clusters."""

from __future__ import annotations

import socket
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wav2brain.anchoring.atlases import (
    Parcellation,
    default_parcellation,
    parcellation_from_atlas,
    read_labels,
    simulated_parcellation,
)

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def grid_mask(shape=(8, 8, 8), affine=AFFINE) -> nib.Nifti1Image:
    """A cube mask (one voxel of margin) on a small grid."""
    data = np.zeros(shape, dtype=np.uint8)
    data[1:-1, 1:-1, 1:-1] = 1
    return nib.Nifti1Image(data, affine)


def halves_atlas(shape=(8, 8, 8), affine=AFFINE) -> nib.Nifti1Image:
    """Label 1 in the left half (i < 4), 2 in the right half."""
    data = np.ones(shape, dtype=np.int16)
    data[shape[0] // 2 :] = 2
    return nib.Nifti1Image(data, affine)


def expected_halves(mask: nib.Nifti1Image) -> np.ndarray:
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    return (ijk[:, 0] >= 4).astype(np.int64)


# Parcellation ------------------------------------------------------------------------------------


def test_parcellation_region_means_and_images():
    labels = np.array([0, 0, 1, -1, 1, 1])
    parcels = Parcellation("roi", ("a", "b"), labels, "test", ("auditory", "other"))
    data = np.arange(12, dtype=np.float32).reshape(2, 6)
    means = parcels.region_means(data)
    assert means.dtype == np.float32 and means.shape == (2, 2)
    np.testing.assert_allclose(means, [[0.5, 11 / 3], [6.5, 6 + 11 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(parcels.counts(), [2, 3])
    np.testing.assert_array_equal(parcels.voxel_values([10, 20], fill=-1), [10, 10, 20, -1, 20, 20])
    assert parcels.stage_of("a") == "auditory"
    assert list(parcels.table()["n_voxels"]) == [2, 3]
    assert not parcels.labels.flags.writeable
    mask = nib.Nifti1Image(np.ones((1, 2, 3), dtype=np.uint8), np.eye(4))
    image = parcels.region_image([10, 20], mask)
    np.testing.assert_array_equal(np.asarray(image.dataobj).ravel(), [10, 10, 20, 0, 20, 20])
    np.testing.assert_array_equal(
        np.asarray(parcels.label_image(mask).dataobj).ravel(), [1, 1, 2, 0, 2, 2]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "voxel"}, "kind must be one of"),
        ({"names": ("a", "a")}, "duplicated names"),
        ({"names": ()}, "no region names"),
        ({"labels": np.array([0, 2])}, "outside -1..1"),
        ({"labels": np.array([0.0, 1.0])}, "1-D integer array"),
        ({"stages": ("auditory",)}, "1 stages for 2 regions"),
        ({"stages": ("auditory", "language")}, "not in"),
    ],
)
def test_parcellation_refuses_bad_fields(kwargs, message):
    fields = {"kind": "roi", "names": ("a", "b"), "labels": np.array([0, 1]), "source": "x"}
    with pytest.raises(ValueError, match=message):
        Parcellation(**{**fields, **kwargs})


def test_region_means_checks_width_and_empty_regions():
    parcels = Parcellation("roi", ("a", "b"), np.array([0, 0, -1]), "test")
    with pytest.raises(ValueError, match="has 2 voxels but the parcellation from test labels 3"):
        parcels.region_means(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"regions \['b'\] of test hold no voxel"):
        parcels.region_means(np.zeros((4, 3)))


# Labels tables -----------------------------------------------------------------------------------


def test_read_labels_forms(tmp_path):
    assert read_labels(["a", "b"]) == {1: "a", 2: "b"}
    assert read_labels(["Background", "a", "b"]) == {0: "Background", 1: "a", 2: "b"}
    assert read_labels({"3": "c", 1: "a"}) == {3: "c", 1: "a"}
    tsv = tmp_path / "dseg.tsv"
    pd.DataFrame({"index": [1, 5], "name": ["a", "e"]}).to_csv(tsv, sep="\t", index=False)
    assert read_labels(tsv) == {1: "a", 5: "e"}
    text = tmp_path / "names.txt"
    text.write_text("a\nb\n\n")
    assert read_labels(text) == {1: "a", 2: "b"}


def test_read_labels_bad_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="atlas labels file not found: .*missing.tsv"):
        read_labels(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1], "y": ["a"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad.csv: a labels table needs an index column"):
        read_labels(bad)
    twice = tmp_path / "twice.tsv"
    pd.DataFrame({"index": [1, 1], "name": ["a", "b"]}).to_csv(twice, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"twice.tsv row 2: index 1 appears twice"):
        read_labels(twice)
    with pytest.raises(ValueError, match="label value 'x' is not an integer"):
        read_labels({"x": "a"})


# User atlases ------------------------------------------------------------------------------------


def test_atlas_on_the_mask_grid():
    mask = grid_mask()
    parcels = parcellation_from_atlas(halves_atlas(), ["left", "right"], mask, "network")
    assert parcels.kind == "network" and parcels.names == ("left", "right")
    np.testing.assert_array_equal(parcels.labels, expected_halves(mask))


def test_atlas_on_another_grid_is_resampled_with_a_warning(tmp_path):
    mask = grid_mask()
    fine = np.ones((16, 16, 16), dtype=np.int16)
    fine[8:] = 2
    path = tmp_path / "fine_atlas.nii.gz"
    nib.save(nib.Nifti1Image(fine, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.warns(UserWarning, match=r"fine_atlas.nii.gz \(shape \(16, 16, 16\).*resampled"):
        parcels = parcellation_from_atlas(path, {1: "left", 2: "right"}, mask)
    np.testing.assert_array_equal(parcels.labels, expected_halves(mask))


def test_atlas_that_does_not_overlap_is_refused(tmp_path):
    path, mask_path = tmp_path / "far_atlas.nii.gz", tmp_path / "mask.nii.gz"
    far = np.diag([4.0, 4.0, 4.0, 1.0])
    far[:3, 3] = 1000.0
    nib.save(halves_atlas(affine=far), path)
    nib.save(grid_mask(), mask_path)
    with pytest.raises(ValueError, match=r"far_atlas.nii.gz .*does not overlap the mask .*mask"):
        parcellation_from_atlas(path, ["left", "right"], mask_path)
    # Overlapping fields of view, but no labelled voxel inside the mask: refused too.
    corner = np.zeros((8, 8, 8), dtype=np.int16)
    corner[0, 0, 0] = 1
    with pytest.raises(ValueError, match="no mask voxel gets a label"):
        parcellation_from_atlas(nib.Nifti1Image(corner, AFFINE), ["c"], grid_mask())


def test_atlas_labels_mismatches_are_named():
    mask = grid_mask()
    with pytest.raises(ValueError, match=r"holds label values \[2\] that its labels table does"):
        parcellation_from_atlas(halves_atlas(), {1: "left"}, mask)
    with pytest.raises(ValueError, match=r"name values absent from the image: \[\(3, 'extra'\)\]"):
        parcellation_from_atlas(halves_atlas(), ["left", "right", "extra"], mask)
    with pytest.raises(ValueError, match="non-integer values"):
        parcellation_from_atlas(nib.Nifti1Image(np.full((8, 8, 8), 0.5), AFFINE), ["a"], mask)
    with pytest.raises(ValueError, match="negative label values"):
        parcellation_from_atlas(nib.Nifti1Image(-np.ones((8, 8, 8)), AFFINE), {-1: "a"}, mask)
    with pytest.raises(ValueError, match="threshold applies to 4-D maps only"):
        parcellation_from_atlas(halves_atlas(), ["left", "right"], mask, threshold=0.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        parcellation_from_atlas(halves_atlas(), ["left", "right"], mask, "voxels")


def test_regions_outside_the_mask_are_dropped_with_a_warning():
    data = np.asarray(halves_atlas().dataobj).copy()
    data[0, 0, 0] = 3  # outside the cube mask (its margin)
    with pytest.warns(UserWarning, match=r"1 regions of atlas .* left out: \['margin'\]"):
        parcels = parcellation_from_atlas(
            nib.Nifti1Image(data, AFFINE), ["left", "right", "margin"], grid_mask()
        )
    assert parcels.names == ("left", "right")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="atlas file not found: .*nope.nii.gz"):
        parcellation_from_atlas(tmp_path / "nope.nii.gz", ["a"], grid_mask())
    with pytest.raises(FileNotFoundError, match="mask file not found: .*nomask.nii.gz"):
        parcellation_from_atlas(halves_atlas(), ["a", "b"], tmp_path / "nomask.nii.gz")


def test_probabilistic_atlas_argmax_with_threshold():
    mask = grid_mask()
    maps = np.zeros((8, 8, 8, 2), dtype=np.float32)
    maps[:4, ..., 0] = 0.6
    maps[4:, ..., 1] = 0.9
    maps[4:, ..., 0] = 0.3
    maps[:, :, :2, :] = 0.1  # below threshold: unlabelled
    parcels = parcellation_from_atlas(
        nib.Nifti1Image(maps, AFFINE), ["a", "b"], mask, threshold=0.25
    )
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    expected = np.where(ijk[:, 2] < 2, -1, (ijk[:, 0] >= 4).astype(int))
    np.testing.assert_array_equal(parcels.labels, expected)
    with pytest.raises(ValueError, match="has 2 maps but its labels name values"):
        parcellation_from_atlas(nib.Nifti1Image(maps, AFFINE), ["a", "b", "c"], mask)
    with pytest.warns(UserWarning, match=r"left out: \['a'\]"):
        only_b = parcellation_from_atlas(
            nib.Nifti1Image(maps, AFFINE), ["a", "b"], mask, threshold=0.7
        )
    assert only_b.names == ("b",)


# nilearn's shipped atlases -----------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: the atlases must come from nilearn's package."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def mni_mask(voxel_mm: float) -> nib.Nifti1Image:
    from nilearn import datasets
    from nilearn.image import resample_img

    mask = datasets.load_mni152_brain_mask(resolution=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resample_img(
            mask,
            target_affine=np.diag([voxel_mm] * 3),
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )


def test_default_parcellation_is_offline_and_places_the_auditory_network(no_network):
    mask = mni_mask(6.0)
    networks = default_parcellation("MNI152NLin2009cAsym", mask)
    assert networks.kind == "network" and "Auditory" in networks.names
    assert networks.stage_of("Auditory") == "auditory"
    assert networks.stage_of("DefaultMode") == "higher-order"
    assert "unassigned" not in networks.names
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    xyz = ijk @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    auditory = xyz[networks.labels == networks.names.index("Auditory")]
    # Superior temporal and insular cortex, both hemispheres: |x| 28-70 mm, z 0-36 mm (operculum).
    assert np.all(np.abs(auditory[:, 0]) > 25) and np.all(
        (auditory[:, 2] >= 0) & (auditory[:, 2] <= 36)
    )
    assert (auditory[:, 0] < 0).any() and (auditory[:, 0] > 0).any()
    rois = default_parcellation("MNI152NLin6Asym", mask, "roi")
    assert rois.n_regions >= 280 and rois.counts().min() >= 1
    assert "6.0" not in rois.source and "at least 5.2 mm" in rois.source
    dosenbach = default_parcellation("MNI", mask, "network", atlas="dosenbach_2010")
    assert "default" in dosenbach.names


def test_default_parcellation_radius_and_refusals(tmp_path):
    mask = mni_mask(6.0)
    small = default_parcellation("MNI", mask, "roi", radius_mm=3.0)
    large = default_parcellation("MNI", mask, "roi")
    assert (small.labels >= 0).sum() < (large.labels >= 0).sum()
    with pytest.raises(ValueError, match="no default atlas for space 'T1w'.*--atlas IMAGE"):
        default_parcellation("T1w", mask)
    with pytest.raises(ValueError, match="unknown default atlas 'aal'"):
        default_parcellation("MNI", mask, atlas="aal")
    with pytest.raises(ValueError, match="radius_mm must be a positive"):
        default_parcellation("MNI", mask, radius_mm=-1.0)
    moved = nib.Nifti1Image(np.asarray(mask.dataobj), mask.affine.copy())
    moved.affine[:3, 3] += 5000.0
    path = tmp_path / "native_mask.nii.gz"
    nib.save(moved, path)
    with pytest.raises(ValueError, match=r"no ROI of seitzman_2018 reaches a voxel of the mask .*"):
        default_parcellation("MNI", path)


# The simulator's clusters ------------------------------------------------------------------------


@pytest.fixture
def truth(tmp_path):
    """A ground-truth folder as ``wav2brain simulate`` writes it (clusters map, table, settings)."""
    from wav2brain.simulation import SimulationConfig
    from wav2brain.simulation.files import (
        GROUND_TRUTH_DIR,
        save_nifti,
        to_volume,
        write_json,
        write_tsv,
    )
    from wav2brain.simulation.signals import assign_clusters, feature_key, make_grid

    config = SimulationConfig()
    grid = make_grid(config.voxel_size_mm, config.baseline)
    labels = assign_clusters(grid.xyz_mm, config.clusters)
    folder = tmp_path / "sim" / GROUND_TRUTH_DIR
    save_nifti(folder / "clusters.nii.gz", to_volume(grid, labels.astype(np.int16), np.int16), grid)
    save_nifti(folder / "brain_mask.nii.gz", grid.mask.astype(np.uint8), grid)
    write_tsv(
        folder / "clusters.tsv",
        [
            {"label": k + 1, "name": c.name, "feature": c.feature, "regressor": feature_key(c),
             "n_units": len(c.units)}
            for k, c in enumerate(config.clusters)
        ],
    )  # fmt: skip
    write_json(folder / "simulation.json", {"config": config.to_dict()})
    return tmp_path / "sim", folder


CHECKED_STAGES = {
    "left_heschl_envelope": "auditory",
    "right_heschl_unit": "higher-order",  # layer 2 of 2: upper half of hidden_states
    "left_anterior_stg_unit": "auditory",  # layer 1 of 2
    "left_precentral_mixed": "higher-order",  # layers 2 and 1: the deepest driver counts
    "right_temporal_pole_mixed": "auditory",  # layers 1 and 1
    "right_posterior_stg_word": "higher-order",
    "left_posterior_stg_sibilant": "auditory",
}


def test_simulated_parcellation_rois_and_networks(truth):
    dataset, folder = truth
    mask = folder / "brain_mask.nii.gz"
    rois = simulated_parcellation(dataset, mask)
    assert rois.kind == "roi" and "SIMULATED" in rois.source
    stages = dict(zip(rois.names, rois.stages, strict=True))
    from wav2brain.simulation import SimulationConfig

    assert set(stages) == {c.name for c in SimulationConfig().clusters}
    assert {name: stages[name] for name in CHECKED_STAGES} == CHECKED_STAGES
    clusters = np.asarray(nib.load(str(folder / "clusters.nii.gz")).dataobj)
    inside = np.asarray(nib.load(str(mask)).dataobj) > 0
    np.testing.assert_array_equal(rois.labels, clusters[inside].astype(int) - 1)
    networks = simulated_parcellation(folder, mask, "network")
    assert networks.names == ("auditory", "higher-order") and networks.stages == networks.names
    word = rois.names.index("right_posterior_stg_word")
    assert np.all(networks.labels[rois.labels == word] == 1)


def test_simulated_parcellation_bad_folders(truth, tmp_path):
    dataset, folder = truth
    with pytest.raises(FileNotFoundError, match=r"elsewhere/clusters.nii.gz not found"):
        simulated_parcellation(tmp_path / "elsewhere", folder / "brain_mask.nii.gz")
    (folder / "simulation.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="simulation.json: no config.model_kwargs"):
        simulated_parcellation(folder, folder / "brain_mask.nii.gz")


def test_the_simulators_clusters_table_is_an_atlas_labels_table(truth):
    from wav2brain.simulation import SimulationConfig

    dataset, folder = truth
    names = {k + 1: c.name for k, c in enumerate(SimulationConfig().clusters)}
    assert read_labels(folder / "clusters.tsv") == names  # an integer label, then name, ...
    mask = folder / "brain_mask.nii.gz"
    atlas = parcellation_from_atlas(folder / "clusters.nii.gz", folder / "clusters.tsv", mask)
    assert atlas.names == simulated_parcellation(dataset, mask).names


def test_a_label_column_is_the_index_only_when_it_holds_integers_beside_a_name(tmp_path):
    def table(file, **columns):
        pd.DataFrame(columns).to_csv(tmp_path / file, sep="\t", index=False)
        return tmp_path / file

    assert read_labels(table("region.tsv", label=[4], region=["r"])) == {4: "r"}
    assert read_labels(table("index.tsv", index=[3], label=[7], name=["n"])) == {3: "n"}
    assert read_labels(table("named.tsv", index=[3], label=["x"])) == {3: "x"}  # label: names
    for bad, columns in (
        ("names.tsv", {"label": ["x"], "name": ["y"]}),  # names in label: no index
        ("alone.tsv", {"label": [1], "feature": ["f"]}),  # an index, but no name column
        ("halves.tsv", {"label": [1.5], "name": ["y"]}),  # not integers
    ):
        header = ", ".join(repr(c) for c in columns)
        with pytest.raises(ValueError, match=rf"{bad}: a labels table needs .*it has \[{header}\]"):
            read_labels(table(bad, **columns))


def test_labels_table_beside_the_atlas(tmp_path):
    atlas = tmp_path / "atlas_dseg.nii.gz"
    nib.save(halves_atlas(), atlas)
    with pytest.raises(FileNotFoundError, match=r"no labels table lies beside it .*atlas_dseg.tsv"):
        parcellation_from_atlas(atlas, None, grid_mask())
    table = pd.DataFrame({"index": [1, 2], "name": ["left", "right"]})
    table.to_csv(tmp_path / "atlas_dseg.tsv", sep="\t", index=False)
    assert parcellation_from_atlas(atlas, None, grid_mask()).names == ("left", "right")
    with pytest.raises(ValueError, match="an atlas given as an image needs its labels"):
        parcellation_from_atlas(halves_atlas(), None, grid_mask())


def test_resolve_parcellation_precedence(tmp_path, truth):
    from wav2brain.anchoring.atlases import resolve_parcellation

    atlas = tmp_path / "atlas.nii.gz"
    nib.save(halves_atlas(), atlas)
    user = resolve_parcellation(grid_mask(), "T1w", atlas=atlas, atlas_labels=["l", "r"])
    assert user.names == ("l", "r") and str(atlas) in user.source
    with pytest.raises(ValueError, match="given without an atlas"):
        resolve_parcellation(grid_mask(), "T1w", atlas_labels=["l", "r"])
    dataset, folder = truth
    simulated = resolve_parcellation(folder / "brain_mask.nii.gz", "native", truth_dir=dataset)
    assert "SIMULATED" in simulated.source
    with pytest.raises(ValueError, match="no default atlas for space 'native'"):
        resolve_parcellation(grid_mask(), "native")
    assert resolve_parcellation(mni_mask(8.0), "MNI", "network").kind == "network"
