"""Sharded steps: two CPU processes (torchrun, gloo) write the tables one process writes.

One SIMULATED test-size study (2 subjects, 2 stories) is extracted, encoded, anchored, scored
for selectivity and probed once in this process and once by two torchrun processes; every
table must agree. The two-process extract is launched as the study runner launches it
(:func:`wav2brain.distributed.launch_command`, ``-m wav2brain``); the other steps run in one
launch through ``tests/shard_chain.py`` (the same ``cli.main`` per command line, one start-up
instead of four). Negative controls run here, under one process, with a shard assignment that
loses an item: the merge must refuse it, naming the item.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wav2brain import distributed
from wav2brain.cli import main
from wav2brain.simulation import GROUND_TRUTH_DIR, SimulationConfig, simulate_dataset

HERE = Path(__file__).resolve().parent
SRC = Path(distributed.__file__).resolve().parents[1]
PROBE = ["--seeds", "0", "--epochs", "2", "--ctc-head", "linear"]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _launch(command: list[str], cwd: Path) -> str:
    """Run a launcher; return its standard error (where each process's progress bar goes)."""
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """simulate -> prepare (in its brain mask) -> extract by one and by two processes."""
    from probe_fixtures import make_tasks

    root = tmp_path_factory.mktemp("shard")
    bids = simulate_dataset(root / "bids", SimulationConfig())
    truth = bids / GROUND_TRUTH_DIR
    mask = str(truth / "brain_mask.nii.gz")
    assert main(["prepare", str(bids), "--out", str(root / "ds"), "--mask", mask, "--quiet"]) == 0
    make_tasks(root / "tasks", names=("ks",))
    paths = {"root": root, "ds": root / "ds", "model": truth / "model", "truth": truth}

    def extract(out: str) -> list[str]:
        return [
            "extract",
            str(paths["ds"]),
            "--model",
            str(paths["model"]),
            "--out",
            str(root / out),
        ]

    assert main(extract("f1")) == 0
    paths["log"] = _launch(distributed.launch_command(extract("f2"), 2), root)
    return paths


def _steps(study: dict, suffix: str) -> list[list[str]]:
    """encode, anchor, selectivity and probe command lines (features of the one-process run)."""
    root, ds, model = study["root"], str(study["ds"]), str(study["model"])
    features = str(root / "f1")
    return [
        ["encode", ds, "--features", features, "--out", str(root / f"e{suffix}")],
        ["anchor", ds, "--features", features, "--out", str(root / f"a{suffix}"),
         "--truth", str(study["truth"])],
        ["selectivity", "--dataset", ds, "--model", model, "--out", str(root / f"s{suffix}")],
        ["probe", "--upstream", f"base={model}", "--upstream", "fbank", "--tasks", "ks",
         "--tasks-dir", str(root / "tasks"), "--out", str(root / f"p{suffix}"), *PROBE],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def chained(study) -> dict:
    """Each step by this process (``1``) and by two torchrun processes in one launch (``2``)."""
    for argv in _steps(study, "1"):
        assert main(argv) == 0, argv
    chain = study["root"] / "chain.json"
    chain.write_text(json.dumps(_steps(study, "2")))
    port = ["--master_port", str(_free_port())]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *port]
    _launch([*launcher, str(HERE / "shard_chain.py"), str(chain)], study["root"])
    return study


def _same_tables(one: Path, two: Path, names) -> None:
    for name in names:
        a, b = pd.read_parquet(one / name), pd.read_parquet(two / name)
        assert len(a), f"{one / name} is empty"
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-7, obj=name)


def test_extract_by_two_processes_writes_the_tables_and_entries_of_one(study):
    from wav2brain.features.cache import open_entry

    one, two = study["root"] / "f1", study["root"] / "f2"
    assert "extract [process 1/2]" in study["log"] and "extract [process 2/2]" in study["log"]
    _same_tables(one, two, ["index.parquet", "runs.parquet"])
    index = pd.read_parquet(one / "index.parquet")
    assert sorted(set(index["stimulus_id"])) == ["story01", "story02"]
    for path in sorted(set(index["path"])):
        a, b = open_entry(one / path), open_entry(two / path)
        assert a.metadata == b.metadata
        for layer in a.layers:
            np.testing.assert_allclose(a[layer], b[layer], rtol=1e-6, atol=1e-7)
    assert not list(two.rglob("*.partial"))


def test_encode_by_two_processes_equals_one_and_resumes_from_their_parts(chained, capsys):
    root = chained["root"]
    _same_tables(root / "e1", root / "e2", ["scores.parquet", "profile.parquet"])
    one = sorted(p.name for p in (root / "e1").rglob("*") if p.is_file())
    assert one == sorted(p.name for p in (root / "e2").rglob("*") if p.is_file())
    capsys.readouterr()
    assert main(_steps(chained, "2")[0]) == 0  # one process reuses the parts of two
    assert "0 subjects fitted, 2 reused" in capsys.readouterr().out


def test_anchor_by_two_processes_equals_one_with_its_group_level(chained, capsys):
    root = chained["root"]
    tables = ["units.parquet", "voxels.parquet", "regions.parquet", "group.parquet"]
    _same_tables(root / "a1", root / "a2", tables)
    one = json.loads((root / "a1" / "summary.json").read_text())
    two = json.loads((root / "a2" / "summary.json").read_text())
    assert one == two and sorted(one["subjects"]) == ["001", "002"]
    capsys.readouterr()
    assert main(_steps(chained, "2")[1]) == 0
    assert "0 subjects anchored, 2 reused" in capsys.readouterr().out


def test_selectivity_by_two_processes_merges_the_sums_of_one(chained):
    root = chained["root"]
    tables = ["units.parquet", "phonemes.parquet", "layers.parquet"]
    _same_tables(root / "s1", root / "s2", tables)
    summary = [json.loads((root / s / "summary.json").read_text()) for s in ("s1", "s2")]
    assert summary[0] == summary[1]
    assert sorted(p.name for p in (root / "s2" / "partial").iterdir()) == [
        "story01.npz",
        "story02.npz",
    ]


def test_probe_features_by_two_processes_give_the_results_of_one(chained):
    root = chained["root"]
    _same_tables(root / "p1", root / "p2", ["results.parquet", "layer_weights.parquet"])
    one = sorted(p.name for p in (root / "p1" / "features").iterdir())
    assert one == sorted(p.name for p in (root / "p2" / "features").iterdir()) and len(one) == 6


@pytest.mark.slow
def test_accelerate_launch_multi_gpu_flag_runs_two_cpu_processes(study):
    """``accelerate launch --multi_gpu --num_processes 2`` starts torchrun's two workers (gloo
    without CUDA); ``--cpu --num_processes 2`` would start one process (accelerate's CPU launcher
    needs MPI for more)."""
    root = study["root"]
    argv = ["extract", str(study["ds"]), "--model", str(study["model"]), "--out", str(root / "fa")]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    port = ["--num_processes", "2", "--main_process_port", str(_free_port())]
    log = _launch([*accelerate, *port, "-m", "wav2brain", *argv], root)
    assert "extract [process 2/2]" in log
    _same_tables(root / "f1", root / "fa", ["index.parquet", "runs.parquet"])


@pytest.fixture
def lossy(monkeypatch):
    """A shard assignment that loses the first item (as a broken split would)."""
    monkeypatch.setattr(distributed, "shard", lambda items: list(items)[1:])


def test_extract_refuses_a_merge_that_lost_a_stimulus(study, lossy, tmp_path, capsys):
    argv = ["extract", str(study["ds"]), "--model", str(study["model"]), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "no process did stimulus 'story01'" in capsys.readouterr().err
    assert not (tmp_path / "index.parquet").exists()


def test_encode_and_anchor_refuse_a_merge_that_lost_a_subject(study, lossy, tmp_path):
    from wav2brain.anchoring import AnchorConfig, anchor
    from wav2brain.encoding.dataset import EncodeConfig, encode_dataset

    features = study["root"] / "f1"
    with pytest.raises(ValueError, match="no process did subject '001'"):
        encode_dataset(study["ds"], features, tmp_path / "e", EncodeConfig(maps=False))
    assert not (tmp_path / "e" / "scores.parquet").exists()
    with pytest.raises(ValueError, match="no process did subject '001'"):
        anchor(study["ds"], features, tmp_path / "a", AnchorConfig(maps=False))
    assert not (tmp_path / "a" / "units.parquet").exists()


def test_selectivity_refuses_a_merge_that_lost_a_stimulus(study, lossy, tmp_path):
    from transformers import AutoModel

    from wav2brain.anchoring.selectivity import selectivity

    model = AutoModel.from_pretrained(study["model"])
    with pytest.raises(ValueError, match="no process did stimulus 'story01'"):
        selectivity(study["ds"], model, tmp_path, progress=False)
    assert not (tmp_path / "units.parquet").exists()


def test_probe_features_refuse_a_merge_that_lost_a_task(study, lossy, tmp_path):
    from wav2brain.probing.features import ProbeFeatureCache, fill_task_features, load_upstream
    from wav2brain.probing.harness import load_task

    upstream = load_upstream("fbank")
    task = load_task("ks", study["root"] / "tasks")
    pairs = [("fbank", upstream, task), ("fbank-2", upstream, task)]
    with pytest.raises(ValueError, match="no process did upstream and task 'fbank on ks'"):
        fill_task_features(pairs, ProbeFeatureCache(tmp_path))


def test_merge_refuses_items_done_twice_or_not_asked(monkeypatch):
    monkeypatch.setattr(distributed, "gather", lambda value: [{"a": 1, "b": 2}, {"b": 2, "z": 0}])
    with pytest.raises(ValueError, match=r"subject 'b' done by two processes.*subject 'z' not in"):
        distributed.merge({}, ["a", "b"], "subject")
    monkeypatch.setattr(distributed, "gather", lambda value: [{"b": 2}, {"a": 1}])
    assert list(distributed.merge({}, ["a", "b"], "subject").items()) == [("a", 1), ("b", 2)]


def test_one_process_needs_no_process_group_nor_accelerate():
    code = (
        "import sys; from wav2brain import distributed as d; "
        "assert d.shard(range(3)) == [0, 1, 2] and d.is_main(); d.wait(); "
        "assert d.merge({'x': 1}, ['x'], 'stimulus') == {'x': 1}; "
        "assert 'accelerate' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, timeout=60)


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_world_size_is_refused(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(ValueError, match=f"WORLD_SIZE={value!r}"):
        distributed.world_size()


def test_launch_command():
    assert distributed.launch_command(["extract", "D"], 1) == [
        sys.executable, "-m", "wav2brain", "extract", "D"
    ]  # fmt: skip
    assert distributed.launch_command(["extract", "D"], 3) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
        "-m", "wav2brain", "extract", "D",
    ]  # fmt: skip
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="processes must be a positive integer"):
            distributed.launch_command(["extract"], bad)


def test_more_processes_than_gpus_on_a_node_is_refused(monkeypatch):
    import torch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    distributed.process_state.cache_clear()
    with pytest.raises(ValueError, match="2 processes on this node but 1 GPU"):
        distributed.process_state()
