"""compare-models: parameter change (Fig. 2), layer weights (Fig. 4), brain accuracy (Fig. 3b),
history sweep (Fig. 3a), the driver's files and the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from test_hf_layout import make_folder
from test_windows import rewrite_responses
from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
from wav2brain.cli import main
from wav2brain.reports.compare import (
    CompareConfig,
    brain_accuracy,
    change_by_type,
    change_summary,
    compare_models,
    history_sweep,
    layer_weights,
    parameter_change,
    parameter_group,
)

SHORT = {"tr": 1.5, "history_trs": 3, "head_kernel_size": 2, "head_hidden_size": 8}
QUERY = "encoder.layers.0.attention.q_proj.weight"


def brain_model(voxels=None) -> Wav2Vec2ForBrainEncoding:
    from conftest import tiny_wav2vec2_kwargs

    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(
        subject_voxels=voxels or {"01": 7, "02": 7}, **tiny_wav2vec2_kwargs(), **SHORT
    )
    return Wav2Vec2ForBrainEncoding(config).eval()


def refine(model: Wav2Vec2ForBrainEncoding) -> Wav2Vec2ForBrainEncoding:
    """Change every other element of one matrix by 1 %, and the layer weights."""
    refined = brain_model(model.config.subject_voxels)
    refined.load_state_dict(model.state_dict())
    with torch.no_grad():
        weight = refined.wav2vec2.encoder.layers[0].attention.q_proj.weight
        weight.view(-1)[::2] *= 1.01
        refined.layer_weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    return refined


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    base = brain_model()
    base.save_pretrained(root / "base")
    refine(base).save_pretrained(root / "refined")
    base.save_backbone(root / "plain")
    return root


def test_parameter_change_counts_exactly_the_changed_elements(checkpoints):
    table = parameter_change(checkpoints / "base", checkpoints / "refined")
    assert set(table["component"]) >= {"feature_encoder", "transformer", "positional_conv"}
    changed = table[table["n_changed"] > 0]
    assert list(changed["tensor"]) == [QUERY]
    row = changed.iloc[0]
    assert (row["layer"], row["parameter_type"]) == (1, "q_proj")
    assert row["n_changed"] == (row["n_params"] + 1) // 2
    assert row["relative_change"] == pytest.approx(0.01 / np.sqrt(2), rel=0.15)  # half of them
    summary = change_by_type(table)
    q = summary[(summary["layer"] == 1) & (summary["parameter_type"] == "q_proj")]
    assert q["share_changed"].item() == pytest.approx(row["n_changed"] / (row["n_params"] + 32))
    shares = change_summary(table)
    assert shares["k_proj"] == 0 and 0 < shares["q_proj"] < 0.5
    assert shares["all"] == row["n_changed"] / table["n_params"].sum()


def test_a_plain_backbone_compares_with_a_brain_model(checkpoints):
    # same weights under another prefix (wav2vec2.) and class: nothing changed
    table = parameter_change(checkpoints / "plain", checkpoints / "base")
    assert len(table) > 20 and table["n_changed"].sum() == 0


def test_the_threshold_decides(checkpoints):
    # negative control: the 1 % change is not a change at a 5 % threshold
    table = parameter_change(checkpoints / "base", checkpoints / "refined", threshold=0.05)
    assert table["n_changed"].sum() == 0
    with pytest.raises(ValueError, match="threshold must be a positive"):
        parameter_change(checkpoints / "base", checkpoints / "refined", threshold=0)


def test_incompatible_checkpoints(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="share no wav2vec2 backbone tensor"):
        parameter_change({"foo.weight": torch.zeros(2)}, checkpoints / "base")
    other = brain_model()
    other.wav2vec2.encoder.layers[0].attention.q_proj.weight = torch.nn.Parameter(
        torch.zeros(16, 32)
    )
    with pytest.raises(ValueError, match=rf"tensor {QUERY} has shape \(32, 32\)"):
        parameter_change(checkpoints / "base", other)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        parameter_change(tmp_path / "missing", checkpoints / "base")
    (tmp_path / "adapter").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        parameter_change(tmp_path / "adapter", checkpoints / "base")


def test_parameter_groups():
    assert parameter_group("encoder.layers.11.feed_forward.output_dense.bias") == (
        "transformer",
        12,
        "feed_forward_out",
    )
    assert parameter_group("feature_extractor.conv_layers.0.layer_norm.weight")[2] == "conv_norm0"
    assert parameter_group("encoder.pos_conv_embed.conv.bias")[0] == "positional_conv"


def test_layer_weights(checkpoints):
    table = layer_weights(
        {
            "base": checkpoints / "base",
            "refined": checkpoints / "refined",
            "plain": checkpoints / "plain",
        }
    )
    assert sorted(set(table["model"])) == ["base", "refined"]  # the plain backbone has none
    refined = table[table["model"] == "refined"]["weight"].to_numpy()
    np.testing.assert_allclose(
        refined, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(table[table["model"] == "base"]["weight"], 1 / 3, rtol=1e-6)


def sweep_folder(root, runs):
    for name, (history, metrics, where) in runs.items():
        run = root / name
        (run / "final").mkdir(parents=True)
        (run / "eval_results.json").write_text(json.dumps(metrics))
        if where == "config":
            (run / "final" / "config.json").write_text(json.dumps({"history_trs": history}))
    return root


def test_history_sweep(tmp_path):
    root = sweep_folder(
        tmp_path,
        {
            "h6": (6, {"eval_mean": 0.30}, "config"),
            "h1": (1, {"eval_mean": 0.10}, "config"),
            "h3": (3, {"eval_mean": 0.25, "history_trs": 3}, "metrics"),
        },
    )
    (tmp_path / "notes").mkdir()  # a folder without metrics is not a run
    table = history_sweep(root)
    assert list(table["history_trs"]) == [1, 3, 6]
    assert list(table["value"]) == [0.10, 0.25, 0.30]
    assert set(table["metric"]) == {"eval_mean"}
    with pytest.raises(ValueError, match=r"no metric test_r; it has \['eval_mean'\]"):
        history_sweep(root, metric="test_r")


def test_bad_sweeps(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no run"):
        history_sweep(tmp_path)
    sweep_folder(
        tmp_path, {"a": (3, {"eval_mean": 0.1}, "config"), "b": (3, {"eval_mean": 0.2}, "config")}
    )
    with pytest.raises(ValueError, match=r"runs \['a', 'b'\] share a history length"):
        history_sweep(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "eval_results.json").write_text(json.dumps({"eval_mean": 0.3}))
    with pytest.raises(FileNotFoundError, match="no history_trs"):
        history_sweep(tmp_path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny prepared folder (one story, 12 TRs, two 7-voxel subjects) with a volume mask."""
    import nibabel as nib
    import pyarrow as pa

    root = tmp_path_factory.mktemp("prepared")
    made = make_folder(root, {"01": 7, "02": 7})
    data = np.zeros((3, 3, 3), np.uint8)
    data.flat[[0, 2, 4, 6, 8, 10, 12]] = 1
    nib.save(nib.Nifti1Image(data, np.eye(4)), root / "mask.nii.gz")
    atlas = np.full((3, 3, 3), 2, np.int16)
    atlas.flat[:9] = 1  # mask voxels 0-8 (five of them) in ROI 1, 10 and 12 in ROI 2
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), root / "atlas.nii.gz")

    def edit(table):
        table = table.set_column(
            table.column_names.index("mask"), "mask", pa.array(["mask.nii.gz"])
        )
        return table.set_column(table.column_names.index("space"), "space", pa.array(["T1w"]))

    rewrite_responses(root, edit)
    return root, made


def direct_r(model, root, subject: str) -> np.ndarray:
    """Per-voxel r computed item by item, without batching (an independent path)."""
    from wav2brain.data.windows import BrainWindows
    from wav2brain.encoding.scores import pearson_r

    windows = BrainWindows.for_model(root, model, load_kwargs={"cache_dir": str(root / ".cache")})
    names = windows.responses["subject"]
    predictions, labels = [], []
    for i in range(len(windows)):
        if names[windows.locate(i)[0]] != subject:
            continue
        item = windows[i]
        with torch.no_grad():
            out = model(
                torch.as_tensor(item["input_values"])[None],
                subject_ids=torch.tensor([item["subject_ids"]]),
            ).predictions[0]
        predictions.append(out.numpy())
        labels.append(item["labels"])
    return pearson_r(np.asarray(labels, np.float64), np.asarray(predictions, np.float64))


def test_brain_accuracy_per_voxel_and_roi(dataset, checkpoints):
    root, _ = dataset
    models = {
        "base": Wav2Vec2ForBrainEncoding.from_pretrained(checkpoints / "base"),
        "refined": Wav2Vec2ForBrainEncoding.from_pretrained(checkpoints / "refined"),
    }
    labels = np.array([1, 1, 2, 2, 2, 0, 0])
    voxels, rois = brain_accuracy(
        models,
        root,
        ["story"],
        roi_labels={"01": labels},
        roi_names={1: "left", 2: "right"},
        batch_size=3,
        cache_dir=root / ".cache",
    )
    assert list(voxels.columns) == ["subject", "voxel", "r_base", "r_refined", "roi"]
    assert len(voxels) == 14
    for subject in ("01", "02"):
        part = voxels[voxels["subject"] == subject].sort_values("voxel")
        np.testing.assert_allclose(
            part["r_refined"], direct_r(models["refined"], root, subject), atol=1e-5
        )
    first = voxels[voxels["subject"] == "01"].sort_values("voxel")
    assert list(first["roi"]) == list(labels)
    assert list(rois["roi_name"]) == ["left", "right"] and list(rois["n_voxels"]) == [2, 3]
    np.testing.assert_allclose(rois["r_base"].iloc[0], first["r_base"].iloc[:2].mean())
    with pytest.raises(ValueError, match=r"held-out stories \['lucy'\] are not in the dataset"):
        brain_accuracy(models, root, ["lucy"], cache_dir=root / ".cache")
    with pytest.raises(ValueError, match="roi labels of subject '01' have shape"):
        brain_accuracy(
            models, root, ["story"], roi_labels={"01": labels[:3]}, cache_dir=root / ".cache"
        )


def test_compare_models_writes_every_figure_and_table(dataset, checkpoints, tmp_path):
    root, _ = dataset
    sweep = sweep_folder(
        tmp_path / "sweep",
        {"h1": (1, {"test_mean": 0.1}, "config"), "h3": (3, {"test_mean": 0.2}, "config")},
    )
    config = CompareConfig(
        labels=("base", "refined"),
        dataset=root,
        test_stories=("story",),
        sweep=sweep,
        atlas=root / "atlas.nii.gz",
        atlas_names={1: "front", 2: "back"},
        cache_dir=root / ".cache",
    )
    out = tmp_path / "out"
    written = compare_models(checkpoints / "base", checkpoints / "refined", out, config)
    expected = {
        "parameter_change.parquet",
        "change_by_type.parquet",
        "parameter_change.png",
        "layer_weights.parquet",
        "layer_weights.png",
        "voxel_scores.parquet",
        "roi_scores.parquet",
        "brain_accuracy.png",
        "history_sweep.parquet",
        "history_sweep.png",
        "compare.json",
    }
    assert expected <= {p.name for p in out.iterdir()}
    maps = sorted(p.name for p in (out / "maps").iterdir())
    assert "sub-01_delta.nii.gz" in maps and "sub-02_r-refined.png" in maps and len(maps) == 12
    assert not list(out.rglob("*.partial*"))
    for path in out.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    record = json.loads(written["summary"].read_text())
    assert record["headline"]["best_history_trs"] == 3
    assert set(record["headline"]["mean_r"]) == {"base", "refined"}
    assert set(record["files"]) == set(written) - {"summary"}
    voxels = pd.read_parquet(out / "voxel_scores.parquet")
    assert record["headline"]["mean_r"]["base"] == pytest.approx(voxels["r_base"].mean())
    rois = pd.read_parquet(out / "roi_scores.parquet")
    assert list(rois["roi_name"]) == ["front", "back"] * 2
    assert list(rois["n_voxels"]) == [5, 2] * 2
    assert list(voxels[voxels["subject"] == "01"]["roi"]) == [1] * 5 + [2] * 2


def test_compare_config_refuses_what_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="two different names"):
        CompareConfig(labels=("a", "a"))
    with pytest.raises(ValueError, match="both a prepared dataset and its held-out test stories"):
        CompareConfig(dataset=tmp_path)
    with pytest.raises(ValueError, match="atlas is used only with a dataset"):
        CompareConfig(atlas=tmp_path / "atlas.nii.gz")
    with pytest.raises(ValueError, match="letters, digits"):
        CompareConfig(labels=("a b", "c"))


def test_command_line(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "compare-models",
            str(checkpoints / "base"),
            str(checkpoints / "refined"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "% of backbone parameters changed" in printed
    assert (out / "compare.json").is_file() and not (out / "voxel_scores.parquet").exists()
    # bad input: one clear message, exit status 2, before anything is written
    code = main(
        [
            "compare-models",
            str(checkpoints / "base"),
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a"]}))
    code = main(
        [
            "compare-models",
            str(checkpoints / "base"),
            str(checkpoints / "refined"),
            "--out",
            str(tmp_path / "y"),
            "--dataset",
            str(tmp_path),
            "--split",
            str(split),
        ]
    )
    assert code == 2 and "expected a list of story ids under 'test'" in capsys.readouterr().err


def test_an_export_folder_is_compared_through_its_full_model(checkpoints, tmp_path):
    import shutil

    from wav2brain.reports.compare import resolve_checkpoint

    export = tmp_path / "export"
    shutil.copytree(checkpoints / "plain", export / "backbone")
    (export / "export.json").write_text("{}")
    assert resolve_checkpoint(export) == export / "backbone"  # an export without model/
    shutil.copytree(checkpoints / "refined", export / "model")
    assert resolve_checkpoint(export) == export / "model"
    assert layer_weights({"r": export})["weight"].size == 3


def test_a_rerun_replaces_the_whole_folder(checkpoints, tmp_path, monkeypatch):
    from wav2brain.reports import compare

    out = tmp_path / "out"
    compare_models(checkpoints / "base", checkpoints / "refined", out)
    (out / "voxel_scores.parquet").write_text("from an earlier comparison with a dataset")
    written = compare_models(checkpoints / "refined", checkpoints / "base", out)
    assert not (out / "voxel_scores.parquet").exists()  # never mixed with an older comparison
    assert set(written) == {
        "parameter_change",
        "change_by_type",
        "parameter_change_png",
        "layer_weights",
        "layer_weights_png",
        "summary",
    }
    before = (out / "compare.json").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "plot_layer_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        compare_models(checkpoints / "base", checkpoints / "refined", out)
    assert (out / "compare.json").read_text() == before  # the previous comparison is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_brain_accuracy_needs_brain_models(dataset, checkpoints, tmp_path):
    root, _ = dataset
    config = CompareConfig(dataset=root, test_stories=("story",), cache_dir=root / ".cache")
    with pytest.raises(ValueError, match="brain accuracy needs two brain-encoding models"):
        compare_models(checkpoints / "plain", checkpoints / "base", tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_a_hub_id_is_compared_through_its_snapshot_and_named_when_it_cannot_be_had(
    checkpoints, tmp_path, monkeypatch, capsys
):
    """A base model given by Hub id (as the paper compares facebook/wav2vec2-base with its
    refinement): fetched as a snapshot of configs and weights; offline without a cached copy,
    one line naming it (the real Hub client with HF_HUB_OFFLINE, no network)."""
    import huggingface_hub

    from wav2brain.reports.compare import HUB_FILES

    asked = {}

    def snapshot(repo_id, revision=None, allow_patterns=None):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(checkpoints / "plain")

    with monkeypatch.context() as patch:
        patch.setattr(huggingface_hub, "snapshot_download", snapshot)
        hub = ["compare-models", "owner/base-model", str(checkpoints / "refined")]
        assert main([*hub, "--out", str(tmp_path / "hub")]) == 0
    assert asked == {"repo_id": "owner/base-model", "allow_patterns": list(HUB_FILES)}
    local = ["compare-models", str(checkpoints / "plain"), str(checkpoints / "refined")]
    assert main([*local, "--out", str(tmp_path / "local")]) == 0
    tables = [pd.read_parquet(tmp_path / n / "parameter_change.parquet") for n in ("hub", "local")]
    pd.testing.assert_frame_equal(*tables)
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py: no test reaches the Hub
    capsys.readouterr()
    missing = ["compare-models", "owner/not-cached", str(checkpoints / "refined")]
    assert main([*missing, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint owner/not-cached is not a folder here" in err[0]
