"""The recipe's parts: options, splits, metrics, the pooled-state cache, LoRA (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training_data import planted_columns, simulated_study
from wav2brain.metrics import voxelwise_scores
from wav2brain.training.arguments import parse_recipe_args, read_recipe
from wav2brain.training.splits import choose_splits, record_splits


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- options -----------------------------------------------------------------------------


def test_recipe_yaml_fills_all_three_dataclasses_and_the_command_line_wins(tmp_path):
    recipe = write_yaml(
        tmp_path / "r.yaml",
        "model_name_or_path: m\ndataset: d\noutput_dir: o\nhead: linear\n"
        "learning_rate: 1e-3\nstage2_max_steps: 7\nlora: true\ntest_units: [a, b]\n",
    )
    model, data, training = parse_recipe_args(
        ["--config", str(recipe), "--stage2_max_steps", "3", "--lora_rank", "4"]
    )
    assert (model.model_name_or_path, model.head, model.lora, model.lora_rank) == (
        "m",
        "linear",
        True,
        4,
    )
    assert data.dataset == "d" and data.test_units == ["a", "b"]
    assert training.learning_rate == pytest.approx(1e-3)  # YAML's "1e-3" string typed by argparse
    assert training.stage2_max_steps == 3  # CLI over YAML
    assert training.has_stage2


def test_every_shipped_recipe_parses(tmp_path):
    root = Path(__file__).resolve().parents[1] / "hf_configs"
    for recipe in ("refine_narratives", "refine_lebel", "refine_sim"):
        assert read_recipe(root / f"{recipe}.yaml")["history_trs"] >= 1


def test_a_hidden_state_index_is_a_layer_aggregation(tmp_path):
    from wav2brain.training.recipe import _aggregation

    assert _aggregation("-1") == -1 and _aggregation("3") == 3 and _aggregation("last") == "last"


def test_unknown_recipe_key_fails_naming_it(tmp_path):
    recipe = write_yaml(
        tmp_path / "r.yaml", "model_name_or_path: m\ndataset: d\nleraning_rate: 1\n"
    )
    with pytest.raises(ValueError, match="leraning_rate"):
        parse_recipe_args(["--config", str(recipe)])


def test_unknown_command_line_option_fails_naming_it():
    with pytest.raises(ValueError, match="--no_such_option"):
        parse_recipe_args(["--model_name_or_path", "m", "--dataset", "d", "--no_such_option", "1"])


def test_recipe_options_are_taken_by_their_full_names_only(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", "model_name_or_path: m\ndataset: d\n")
    assert parse_recipe_args(["--config", str(recipe), "--max_steps", "5"])[2].max_steps == 5
    with pytest.raises(ValueError, match="unrecognized arguments: --max_step 5: expected"):
        parse_recipe_args(["--config", str(recipe), "--max_step", "5"])
    with pytest.raises(ValueError, match=f"unrecognized arguments: --conf {recipe}"):
        parse_recipe_args(["--conf", str(recipe)])  # not read as --config either


def test_missing_required_options_fail():
    with pytest.raises(ValueError, match="dataset"):
        parse_recipe_args(["--model_name_or_path", "m"])


# --- splits ------------------------------------------------------------------------------


def test_seeded_splits_are_disjoint_cover_every_story_and_are_reproducible():
    stories = [f"s{i}" for i in range(6)]
    a = choose_splits(stories, n_validation=1, n_test=2, seed=3)
    b = choose_splits(stories, n_validation=1, n_test=2, seed=3)
    assert a == b
    assert sorted(a.train + a.validation + a.test) == stories
    assert (len(a.validation), len(a.test)) == (1, 2)
    assert choose_splits(stories, n_test=2, seed=4) != a  # another seed, another draw


def test_named_splits_win_and_bad_names_fail():
    splits = choose_splits(["a", "b", "c"], test=["b"], n_validation=0)
    assert splits.test == ("b",) and splits.train == ("a", "c") and splits.validation == ()
    with pytest.raises(ValueError, match="'z'"):
        choose_splits(["a", "b"], test=["z"])
    with pytest.raises(ValueError, match="both"):
        choose_splits(["a", "b", "c"], train=["a"], test=["a"])
    with pytest.raises(ValueError, match="no stimulus left for the train split"):
        choose_splits(["a", "b"], n_validation=1, n_test=1)


def test_splits_file_is_written_and_another_runs_splits_are_refused(tmp_path):
    record_splits(choose_splits(["a", "b", "c"], seed=0), tmp_path)
    assert json.loads((tmp_path / "splits.json").read_text())["split_by"] == "stimulus"
    record_splits(choose_splits(["a", "b", "c"], seed=0), tmp_path)  # same: accepted
    with pytest.raises(ValueError, match="another run"):
        record_splits(choose_splits(["a", "b", "c"], test=["a"], seed=0), tmp_path)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return simulated_study(tmp_path_factory.getbasetemp())


def recipe_data(study: Path, **options):
    from wav2brain.data.windows import WindowConfig
    from wav2brain.training.data import RecipeData

    return RecipeData(
        study / "dataset",
        WindowConfig(tr=1.5, history_trs=6),
        {"split_by": options.pop("split_by", "stimulus"), "seed": 0},
        **options,
    )


def test_items_are_split_by_story_never_by_window(study):
    data = recipe_data(study)
    stories = {
        split: {data.windows.responses[i.row]["stimulus_id"] for i in items}
        for split, items in data.items.items()
    }
    assert stories["train"] and stories["test"] and stories["validation"]
    assert not (stories["train"] & stories["test"]) and not (
        stories["train"] & stories["validation"]
    )
    by_run = recipe_data(study, split_by="run")
    assert all(":run-" in unit for unit in by_run.splits.train)


def test_voxel_selection_from_roi_and_from_columns(study, tmp_path):
    planted = planted_columns(study)
    roi = study / "bids" / "derivatives" / "ground_truth" / "clusters.nii.gz"
    data = recipe_data(study, voxel_selection=roi)
    np.testing.assert_array_equal(data.columns["001"], planted)
    np.savetxt(tmp_path / "cols.txt", planted[:3], fmt="%d")
    data = recipe_data(study, voxel_selection=tmp_path / "cols.txt")
    assert data.subject_voxels == {"001": 3, "002": 3}
    assert data.labels(data.items["train"][0]).shape == (3,)
    per_subject = tmp_path / "per_subject"
    per_subject.mkdir()
    np.savetxt(per_subject / "sub-001.txt", planted[:2], fmt="%d")
    np.save(per_subject / "sub-002.npy", planted[:4])
    data = recipe_data(study, voxel_selection=per_subject)
    assert data.subject_voxels == {"001": 2, "002": 4}
    (per_subject / "sub-002.npy").unlink()
    with pytest.raises(FileNotFoundError, match="sub-002"):
        recipe_data(study, voxel_selection=per_subject)
    np.savetxt(tmp_path / "bad.txt", [10**6], fmt="%d")
    with pytest.raises(ValueError, match="outside"):
        recipe_data(study, voxel_selection=tmp_path / "bad.txt")


def test_unknown_subject_fails_naming_it(study):
    with pytest.raises(ValueError, match="'099'"):
        recipe_data(study, subjects=["099"])


def test_shuffled_stories_pair_training_bold_with_other_audio(study):
    plain, control = recipe_data(study), recipe_data(study, shuffle_train_stories=True)
    own = {(i.row, i.t): i.stimulus for i in plain.items["train"]}
    assert all(own[(i.row, i.t)] != i.stimulus for i in control.items["train"])
    assert [i.stimulus for i in control.items["test"]] == [i.stimulus for i in plain.items["test"]]


# --- metrics -----------------------------------------------------------------------------


def test_voxelwise_scores_recover_planted_correlations_and_a_shuffled_control_does_not():
    rng = np.random.default_rng(0)
    n, v = 400, 50
    truth = rng.standard_normal((n, v))
    signal = np.linspace(0.0, 0.9, v)
    references = signal * truth + np.sqrt(1 - signal**2) * rng.standard_normal((n, v))
    scores = voxelwise_scores(truth, references)
    assert scores["mean"] == pytest.approx(signal.mean(), abs=0.03)
    assert 0.7 < scores["fraction_significant"] < 1.0
    assert scores["top10_mean"] > 0.8
    shuffled = voxelwise_scores(truth[rng.permutation(n)], references)
    assert abs(shuffled["mean"]) < 0.03 and shuffled["fraction_significant"] < 0.05


def test_voxelwise_scores_per_subject_and_a_smaller_n_eff_is_stricter():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 20))
    y = 0.3 * x + rng.standard_normal((60, 20))
    subjects = np.repeat(["a", "b"], 30)
    scores = voxelwise_scores(x, y, subjects=subjects)
    assert set(scores["per_subject"]) == {"a", "b"}
    strict = voxelwise_scores(x, y, subjects=subjects, n_eff={"a": 5.0, "b": 5.0})
    assert strict["fraction_significant"] <= scores["fraction_significant"]
    assert strict["mean"] == scores["mean"]


def test_voxelwise_scores_refuse_bad_input():
    with pytest.raises(ValueError, match="n_samples, n_voxels"):
        voxelwise_scores(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        voxelwise_scores(np.full((5, 2), np.nan), np.zeros((5, 2)))


def test_constant_padding_columns_have_no_r():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((10, 3)), np.zeros((10, 2))], axis=1)
    assert voxelwise_scores(x, x)["n_voxels"] == 3


# --- cached stage 1 ----------------------------------------------------------------------


def brain_model(study: Path, data, **overrides):
    from wav2brain import Wav2Vec2ForBrainEncoding

    torch.manual_seed(0)
    model = Wav2Vec2ForBrainEncoding.from_pretrained(
        study / "bids" / "derivatives" / "ground_truth" / "model",
        subject_voxels=data.subject_voxels,
        tr=1.5,
        head="conv",
        head_hidden_size=8,
        **overrides,
    )
    model.freeze_backbone()
    return model


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cached_stage1_equals_the_end_to_end_model_in_losses_and_gradients(study, tmp_path, dtype):
    """float32 cache: 1e-4 on losses and gradients; float16 storage rounds the states (about
    1e-3 relative), so its check is 2e-3 (documented in training/cache.py)."""
    from wav2brain.training.cache import build_pooled_cache
    from wav2brain.training.data import AudioItems, PooledItems, RecipeCollator

    data = recipe_data(
        study, voxel_selection=study / "bids/derivatives/ground_truth/clusters.nii.gz"
    )
    model = brain_model(study, data)
    subjects = model.config.subjects
    items = data.items["train"]
    cache = build_pooled_cache(model, data, items, tmp_path / "cache", dtype=dtype)
    assert len(cache.row_of) < len(items)  # subjects who heard the same story share rows
    # equal-length windows: the audio path needs no padding (exact for a group-norm front end)
    chosen = [k for k, i in enumerate(items) if i.end - i.start == items[-1].end - items[-1].start][
        :6
    ]
    collate = RecipeCollator(label_width=model.config.num_voxels)
    audio = collate([AudioItems(data, "train", subjects)[k] for k in chosen])
    pooled = collate([PooledItems(data, "train", subjects, cache)[k] for k in chosen])
    tolerance = 1e-4 if dtype == "float32" else 2e-3
    model.wav2vec2.eval()

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    loss_a, grads_a = loss_and_grads(audio)
    loss_p, grads_p = loss_and_grads(pooled)
    assert set(grads_a) == set(grads_p) and not any(n.startswith("wav2vec2.") for n in grads_a)
    torch.testing.assert_close(loss_p, loss_a, atol=tolerance, rtol=tolerance)
    for name in grads_a:
        torch.testing.assert_close(grads_p[name], grads_a[name], atol=tolerance, rtol=tolerance)
    # negative control: the cached states of other windows (no shared audio) give other gradients
    items = PooledItems(data, "train", subjects, cache)
    shifted = collate([items[(k + len(items) // 2) % len(items)] for k in chosen])
    shifted["labels"] = pooled["labels"]
    _, grads_s = loss_and_grads(shifted)
    shared = set(grads_s) & set(grads_a)  # the layer weights and the head's shared layers
    assert max(float((grads_s[n] - grads_a[n]).abs().max()) for n in shared) > 5 * tolerance


def test_cache_is_reused_and_recomputed_for_another_backbone(study, tmp_path):
    from wav2brain.training.cache import build_pooled_cache

    data = recipe_data(study)
    model = brain_model(study, data)
    items = data.items["test"]
    first = build_pooled_cache(model, data, items, tmp_path, dtype="float32")
    stamp = (tmp_path / "states.npy").stat().st_mtime_ns
    assert (
        build_pooled_cache(model, data, items, tmp_path, dtype="float32").fingerprint
        == first.fingerprint
    )
    assert (tmp_path / "states.npy").stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.wav2vec2.encoder.layers[0].attention.q_proj.weight.add_(0.1)
    assert (
        build_pooled_cache(model, data, items, tmp_path, dtype="float32").fingerprint
        != first.fingerprint
    )
    with pytest.raises(ValueError, match="cache_dtype"):
        build_pooled_cache(model, data, items, tmp_path, dtype="int8")


def test_pooled_inputs_are_validated(study):
    data = recipe_data(study)
    model = brain_model(study, data)
    with pytest.raises(ValueError, match="pooled_hidden_states must be"):
        model(
            pooled_hidden_states=torch.zeros(2, 1, 6, 32),
            valid_bins=torch.ones(2, 6, dtype=torch.bool),
            subject_ids=torch.tensor([0, 1]),
        )
    with pytest.raises(ValueError, match="valid_bins"):
        model(pooled_hidden_states=torch.zeros(2, 3, 6, 32), subject_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not both"):
        model(
            torch.zeros(2, 24000),
            pooled_hidden_states=torch.zeros(2, 3, 6, 32),
            valid_bins=torch.ones(2, 6, dtype=torch.bool),
        )


# --- LoRA --------------------------------------------------------------------------------


def test_lora_trains_only_adapters_in_the_backbone_and_merges_exactly(study):
    from wav2brain.training.lora import add_lora, has_lora, merge_lora

    data = recipe_data(study)
    model = brain_model(study, data)
    model.unfreeze_backbone()
    add_lora(
        model,
        rank=2,
        alpha=4.0,
        dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    backbone = [n for n in trainable if n.startswith("wav2vec2.")]
    assert backbone and all("lora_" in n for n in backbone)
    assert any(n.startswith("head.") for n in trainable) and "layer_weight_logits" in trainable
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)  # LoRA starts at B = 0: make the adapters matter
    model.eval()
    audio = torch.randn(2, 24000)
    subject_ids = torch.tensor([0, 1])
    with torch.no_grad():
        before = model(audio, subject_ids=subject_ids).predictions
        merge_lora(model)
        after = model(audio, subject_ids=subject_ids).predictions
    assert not has_lora(model)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="qkv"):
        add_lora(model, rank=2, alpha=4.0, dropout=0.0, target_modules=["qkv"])


def test_held_out_dataloaders_keep_the_last_partial_batch_whatever_drop_last_says(study, tmp_path):
    from transformers import TrainingArguments

    from wav2brain.training.data import AudioItems, RecipeCollator
    from wav2brain.training.trainer import BrainTrainer

    data = recipe_data(study)
    model = brain_model(study, data)
    test = AudioItems(data, "test", model.config.subjects)
    batch = 7
    assert len(test) % batch  # a partial last batch exists
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=batch, dataloader_drop_last=True,
        per_device_train_batch_size=batch, use_cpu=True, report_to="none",
    )  # fmt: skip
    trainer = BrainTrainer(
        model=model,
        args=args,
        train_dataset=test,
        data_collator=RecipeCollator(label_width=model.config.num_voxels),
    )
    counted = sum(len(b["labels"]) for b in trainer.get_test_dataloader(test))
    assert counted == len(test)
    assert sum(len(b["labels"]) for b in trainer.get_eval_dataloader(test)) == len(test)
    # negative control: training batches do drop it, as asked
    assert sum(len(b["labels"]) for b in trainer.get_train_dataloader()) < len(test)
    assert trainer.args.dataloader_drop_last
