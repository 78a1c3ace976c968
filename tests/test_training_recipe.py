"""The whole two-stage recipe on the SIMULATED study (tiny model, CPU): scores, stages, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training_data import simulated_study
from wav2brain.reports.ground_truth import (
    TRAIN_STAGE2_TOLERANCE,
    simulation_inputs,
    training_checks,
    training_rows,
)
from wav2brain.simulation import GROUND_TRUTH_DIR
from wav2brain.training.arguments import parse_recipe_args
from wav2brain.training.recipe import run_recipe

TEST_STORY = "story03"
VALIDATION_STORY = "story04"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return simulated_study(tmp_path_factory.getbasetemp())


def recipe_argv(study: Path, out: Path, *extra: str) -> list[str]:
    truth = study / "bids" / "derivatives" / "ground_truth"
    return [
        "--model_name_or_path", str(truth / "model"),
        "--dataset", str(study / "dataset"),
        "--voxel_selection", str(truth / "clusters.nii.gz"),
        "--test_units", TEST_STORY,
        "--validation_units", VALIDATION_STORY,
        "--output_dir", str(out),
        "--head", "conv", "--head_hidden_size", "16",
        "--backbone_l2_sp", "1e-4",
        "--max_steps", "300", "--learning_rate", "1e-2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--stage2_max_steps", "4",
        "--stage2_learning_rate", "1e-4", "--stage2_backbone_learning_rate", "1e-5",
        "--save_strategy", "steps", "--save_steps", "300", "--stage2_save_steps", "2",
        "--logging_steps", "100", "--report_to", "none", "--use_cpu", "true",
        "--seed", "0", "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def run(argv: list[str], **kwargs) -> dict:
    return run_recipe(*parse_recipe_args(argv), **kwargs)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.fixture(scope="module")
def full_run(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, run(recipe_argv(study, out))


def test_stage1_scores_planted_voxels_above_ground_truth_threshold_and_a_shuffled_control(
    study, full_run, tmp_path
):
    """SIMULATED: held-out r on the planted voxels after stage 1 reaches a share of what the
    architecture can reach (a readout of the same inputs fit to the noise-free planted signals),
    clearly beats the same model trained on shuffled stories, and stage 2 keeps it (issue 10's
    checks, :func:`wav2brain.reports.ground_truth.training_checks`)."""
    out, scores = full_run
    control = tmp_path / "control"
    run(recipe_argv(study, control, "--shuffle_train_stories", "true", "--stage2_max_steps", "0"))
    simulation = simulation_inputs(study / "bids" / GROUND_TRUTH_DIR, study / "dataset")
    part = training_checks(simulation, out, control)
    # the shuffled control is not at chance (r about 0.12): every simulated story opens with a
    # lead-in and speech onset at the same time, which it can still learn; the stories' own
    # content adds about 0.08 (measured 0.20 against 0.125 on the 8-unit simulator)
    assert part.passed, [(c.name, c.value, c.op, c.threshold) for c in part.checks]
    assert all(c.passed and c.required for c in part.checks)
    # negative control: the shuffled-stories model's own stage 1 misses the ceiling's share
    # (measured 0.125 against 0.5 x 0.274)
    ceiling = part.details["architecture_ceiling"]["mean"]
    (shuffled_row,) = training_rows(part.details["control_stage1"]["mean"], None, ceiling, None)
    assert not shuffled_row.passed
    assert [c.name for c in part.checks] == [
        "training.stage1_vs_ceiling",
        "training.stage1_vs_control",
        "training.stage2_vs_stage1",
    ]
    assert part.details["stage1"]["mean"] == scores["stage1"]["mean"]
    assert scores["splits"]["test"] == [TEST_STORY]
    # negative control: the shuffled-stories model passed off as the refined one fails
    disguised = tmp_path / "disguised"
    disguised.mkdir()
    shutil.copy(control / "metrics.json", disguised / "metrics.json")
    options = json.loads((control / "run.json").read_text())
    options["data"]["shuffle_train_stories"] = False
    (disguised / "run.json").write_text(json.dumps(options))
    failed = training_checks(simulation, disguised, control)
    assert not failed.passed
    assert "training.stage1_vs_control" in [c.name for c in failed.checks if not c.passed]


def test_each_stage_changes_only_its_parameters_and_the_run_is_recorded(study, full_run):
    out, _ = full_run
    start = weights(out / "stage1" / "checkpoint-300")  # after stage 1 == stage1/final
    final1 = weights(out / "stage1" / "final")
    final = weights(out / "final")
    assert changed(start, final1) == set()
    from wav2brain import Wav2Vec2ForBrainEncoding

    pretrained = Wav2Vec2ForBrainEncoding.from_pretrained(
        study / "bids/derivatives/ground_truth/model", num_voxels=1
    ).state_dict()
    stage1 = {
        n for n in final1 if n.startswith("wav2vec2.") and not torch.equal(final1[n], pretrained[n])
    }
    assert stage1 == set()  # backbone frozen in stage 1
    stage2 = changed(final1, final)
    assert any(n.startswith("wav2vec2.encoder.") for n in stage2)
    assert not any(n.startswith("wav2vec2.feature_extractor.") for n in stage2)
    assert any(n.startswith("head.") for n in stage2)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["test"] == [TEST_STORY] and TEST_STORY not in splits["train"]
    assert (out / "l2_sp_reference.safetensors").is_file()
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["stage2"]["per_subject"]) == {"001", "002"}


def test_lora_recipe_changes_only_attention_projections_head_and_layer_weights(study, tmp_path):
    scores = run(
        recipe_argv(study, tmp_path, "--lora", "true", "--lora_rank", "2", "--save_strategy", "no")
    )
    final1, final = weights(tmp_path / "stage1" / "final"), weights(tmp_path / "final")
    assert set(final) == set(final1)  # merged: plain parameter names
    backbone = {n for n in changed(final1, final) if n.startswith("wav2vec2.")}
    assert backbone and all(
        n.rsplit(".", 2)[-2] in {"q_proj", "k_proj", "v_proj", "out_proj"} for n in backbone
    )
    assert all(n.endswith(".weight") for n in backbone)
    assert scores["stage2"]["mean"] >= scores["stage1"]["mean"] - TRAIN_STAGE2_TOLERANCE


KILLER = textwrap.dedent(
    """
    import os, sys
    from transformers import TrainerCallback
    from wav2brain.training.arguments import parse_recipe_args
    from wav2brain.training.recipe import run_recipe

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if args.output_dir.endswith("stage2") and state.global_step == 2:
                os._exit(17)

    run_recipe(*parse_recipe_args(sys.argv[1:]), callbacks=[Kill()])
    """
)


def test_a_run_killed_in_stage2_resumes_to_the_uninterrupted_result(study, tmp_path):
    short = ("--max_steps", "20", "--save_steps", "10", "--cache_dir", str(tmp_path / "cache"))
    reference = run(recipe_argv(study, tmp_path / "reference", *short))
    argv = recipe_argv(study, tmp_path / "killed", *short)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *argv], env=dict(os.environ), capture_output=True, text=True
    )
    assert killed.returncode == 17, killed.stderr[-2000:]
    stage2 = tmp_path / "killed" / "stage2"
    assert (stage2 / "checkpoint-2").is_dir() and not (tmp_path / "killed" / "final").exists()
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        run(argv)  # a fresh start into a used folder is refused
    resumed = run(argv + ["--resume_from_checkpoint", "true"])
    assert resumed["stage2"]["mean"] == pytest.approx(reference["stage2"]["mean"], abs=1e-5)
    ref, got = weights(tmp_path / "reference" / "final"), weights(tmp_path / "killed" / "final")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-5)
    # negative control: the state at the kill is not the final state
    early = weights(stage2 / "checkpoint-2")
    assert any(not torch.equal(early[n], ref[n]) for n in ref if n in early)


def test_nan_loss_stops_naming_the_step_and_last_good_checkpoint(study, tmp_path):
    from wav2brain.training.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"step \d+.*last good checkpoint"):
        run(
            recipe_argv(
                study, tmp_path, "--learning_rate", "1e30", "--max_steps", "50", "--save_steps", "1"
            )
        )


def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint(study, tmp_path, monkeypatch):
    from transformers import Trainer

    from wav2brain.training.trainer import COMPLETE_MARKER, last_complete_checkpoint

    calls = {"n": 0}
    original = Trainer._save_optimizer_and_scheduler

    def failing(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", failing)
    with pytest.raises(OSError, match="No space"):
        run(
            recipe_argv(
                study, tmp_path, "--max_steps", "4", "--save_steps", "2", "--stage2_max_steps", "0"
            )
        )
    stage1 = tmp_path / "stage1"
    assert (stage1 / "checkpoint-2" / COMPLETE_MARKER).is_file()
    assert not (stage1 / "checkpoint-4").exists()
    assert last_complete_checkpoint(stage1) == stage1 / "checkpoint-2"


def test_bad_inputs_fail_at_start_naming_them(study, tmp_path, full_run):
    out, _ = full_run
    with pytest.raises(ValueError, match="story99"):
        run(recipe_argv(study, tmp_path / "a", "--test_units", "story99"))
    # a saved brain model whose heads do not match the selected voxels
    with pytest.raises(ValueError, match="voxels in the data"):
        run(
            recipe_argv(
                study,
                tmp_path / "b",
                "--voxel_selection",
                str(tmp_path / "cols.txt"),
                "--model_name_or_path",
                str(out / "final"),
            )
            if (tmp_path / "cols.txt").write_text("0\n1\n")
            else []
        )
    from wav2brain import Wav2Vec2ForBrainEncoding

    model = Wav2Vec2ForBrainEncoding.from_pretrained(out / "final")
    model.config.tr = 2.0
    model.save_pretrained(tmp_path / "tr2")
    with pytest.raises(ValueError, match="TR 2.0 s"):
        run(recipe_argv(study, tmp_path / "c", "--model_name_or_path", str(tmp_path / "tr2")))
    assert not (tmp_path / "c" / "stage1").exists()  # nothing trained


def test_the_run_ends_with_a_checked_export_and_its_cards(full_run):
    out, scores = full_run
    backbone, model = out / "export" / "backbone", out / "export" / "model"
    assert (backbone / "model.safetensors").is_file() and (model / "config.json").is_file()
    card = (backbone / "README.md").read_text()
    assert "SIMULATED" in card and TEST_STORY in card
    assert f"{scores['stage2']['mean']:.3f}"[:4] in card  # the held-out score, as model-index
    manifest = json.loads((out / "export" / "export.json").read_text())
    assert set(manifest) >= {"backbone", "model"}


def push_run(argv: list[str], endpoint: str, **env) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[1] / "train.py"
    environment = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, str(script), *argv], env=environment, capture_output=True, text=True
    )


def test_push_to_hub_sends_the_backbone_export_last_and_fails_in_one_line_offline(study, tmp_path):
    from hub_server import FakeHub

    out = tmp_path / "pushed"
    argv = recipe_argv(
        study, out, "--max_steps", "20", "--save_steps", "20", "--stage2_max_steps", "2",
        "--push_to_hub", "true", "--hub_model_id", "me/sim-refined",
    )  # fmt: skip
    with FakeHub() as hub:
        done = push_run(argv, hub.url)
    assert done.returncode == 0, done.stderr[-3000:]
    backbone = out / "export" / "backbone"
    sent = hub.repos["me/sim-refined"]["files"]
    assert sent == {p.name: p.read_bytes() for p in backbone.iterdir() if p.is_file()}
    # offline: every local output is there, the push fails with one line naming the repo
    failed = push_run([*argv, "--resume_from_checkpoint", "true"], hub.url, HF_HUB_OFFLINE="1")
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("train: error")]
    assert len(errors) == 1 and "me/sim-refined" in errors[0]
    assert (backbone / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    with pytest.raises(ValueError, match="hub_model_id"):
        parse_recipe_args(recipe_argv(study, tmp_path / "x", "--push_to_hub", "true"))


def test_train_py_runs_as_a_script_and_reports_bad_options(study, tmp_path):
    script = Path(__file__).resolve().parents[1] / "train.py"
    bad = subprocess.run(
        [sys.executable, str(script), "--dataset", "x", "--model_name_or_path", "y", "--bogus", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "--bogus" in bad.stderr


@pytest.mark.slow
def test_two_cpu_processes_ddp_match_one_process(study, tmp_path):
    """DDP over 2 CPU processes x batch 4 gives one process's batch-8 scores (sequential order,
    so both see the same global batches; the last partial batch of an epoch is dropped, since
    accelerate fills it from the epoch's start on 2 processes). Launched with torchrun:
    ``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.15."""
    root = Path(__file__).resolve().parents[1]
    common = recipe_argv(study, tmp_path / "x")
    out = common.index("--output_dir")
    del common[out : out + 2]
    common += ["--max_steps", "40", "--stage2_max_steps", "2", "--save_strategy", "no"]
    common += ["--train_sampling_strategy", "sequential", "--dataloader_drop_last", "true"]
    single = run(
        common + ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"]
    )
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         str(root / "train.py"), *common, "--output_dir", str(tmp_path / "two"),
         "--per_device_train_batch_size", "4"],
        capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for stage in ("stage1", "stage2"):
        assert two[stage]["mean"] == pytest.approx(single[stage]["mean"], abs=2e-3)


def test_history_sweep_runs_each_value_and_writes_the_curve(study, tmp_path):
    from wav2brain.training.sweep import is_sweep, read_sweep, run_sweep

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("head: conv\nhead_hidden_size: 8\n", encoding="utf-8")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"recipe: {recipe}\noption: history_trs\nvalues: [2, 3]\noutput_dir: {tmp_path / 'out'}\n",
        encoding="utf-8",
    )
    assert is_sweep(sweep) and not is_sweep(recipe)
    argv = recipe_argv(study, tmp_path / "unused")
    out = argv.index("--output_dir")
    del argv[out : out + 2]
    argv += ["--max_steps", "2", "--stage2_max_steps", "0", "--save_strategy", "no"]
    result = run_sweep(sweep, argv)
    assert [point["history_trs"] for point in result["curve"]] == [2, 3]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == result
    record = json.loads((tmp_path / "out" / "history_trs-3" / "run.json").read_text())
    assert record["model"]["history_trs"] == 3
    from wav2brain.reports.compare import history_sweep

    figure = history_sweep(tmp_path / "out")  # compare-models --sweep reads the recipe's runs
    assert list(figure["history_trs"]) == [2, 3] and set(figure["metric"]) == {"stage1_mean"}
    assert list(figure["value"]) == [p["stage1_mean"] for p in result["curve"]]
    sweep.write_text("recipe: r.yaml\noption: no_such_option\nvalues: [1]\noutput_dir: o\n")
    with pytest.raises(ValueError, match="no_such_option"):
        read_sweep(sweep)


def test_compare_models_on_the_run_scores_what_its_metrics_say(study, full_run, tmp_path, capsys):
    """compare-models --recipe-run scores the run's test stories on its voxel selection: the mean
    held-out r of stage1/final and final are the run's own stage-1 and stage-2 scores."""
    import pandas as pd

    from wav2brain.cli import main
    from wav2brain.reports.compare import CompareConfig, compare_models

    out, scores = full_run
    models = [str(out / "stage1" / "final"), str(out / "final"), "--labels", "base", "refined"]
    cmp = tmp_path / "cmp"
    assert main(["compare-models", *models, "--recipe-run", str(out), "--out", str(cmp)]) == 0
    headline = json.loads((cmp / "compare.json").read_text())["headline"]
    # stage 1 was scored on float16 cached states, compare-models runs the audio end to end
    assert headline["mean_r"]["base"] == pytest.approx(scores["stage1"]["mean"], abs=2e-3)
    assert headline["mean_r"]["refined"] == pytest.approx(scores["stage2"]["mean"], abs=1e-5)
    truth = study / "bids" / GROUND_TRUTH_DIR
    planted = sorted(pd.read_csv(truth / "voxels.tsv", sep="\t")["voxel"])
    voxels = pd.read_parquet(cmp / "voxel_scores.parquet")
    assert sorted(voxels.loc[voxels["subject"] == "001", "voxel"]) == planted
    assert (cmp / "maps" / "sub-001_delta.nii.gz").is_file()
    # negative controls: another selection than the heads', and --recipe-run with --dataset
    other = ["--dataset", str(study / "dataset"), "--test-stories", TEST_STORY]
    brain = ["--voxel-selection", str(truth / "brain_mask.nii.gz")]
    config = CompareConfig(
        labels=("base", "refined"),
        dataset=study / "dataset",
        test_stories=(TEST_STORY,),
        voxel_selection=truth / "brain_mask.nii.gz",
    )
    with pytest.raises(ValueError, match="selected voxels, 53 in the model's head"):
        compare_models(models[0], models[1], tmp_path / "bad", config)
    assert main(["compare-models", *models, *other, *brain, "--out", str(tmp_path / "b2")]) == 2
    assert not (tmp_path / "bad").exists()
    # a run whose dataset has moved: named with where it came from; --dataset gives its new place
    moved = tmp_path / "moved_run"
    moved.mkdir()
    shutil.copy(out / "splits.json", moved / "splits.json")
    record = json.loads((out / "run.json").read_text())
    record["data"]["dataset"] = str(tmp_path / "old_place")
    (moved / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    run_moved = ["--recipe-run", str(moved), "--out", str(tmp_path / "b3")]
    assert main(["compare-models", *models, *run_moved]) == 2
    assert "its dataset " + str(tmp_path / "old_place") in capsys.readouterr().err
    assert main(["compare-models", *models, *run_moved, "--dataset", str(study / "dataset")]) == 0
    again = json.loads((tmp_path / "b3" / "compare.json").read_text())["headline"]["mean_r"]
    assert again == pytest.approx(headline["mean_r"])
