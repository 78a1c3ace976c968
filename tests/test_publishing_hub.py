"""push_export against a local stand-in of the Hub API (tests/hub_server.py), and without network.

Each push runs in a subprocess: huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when
it is imported, and this test session is offline (conftest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_server import FakeHub
from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
from wav2brain.publishing.export import export_run
from wav2brain.publishing.hub import full_model_repo_id, push_export

PUSH = """
import json, sys
from wav2brain.publishing.hub import push_export
try:
    result = push_export(sys.argv[1], sys.argv[2], include_full=sys.argv[3] == "full",
                         private=sys.argv[4] == "private")
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
    raise SystemExit(1)
print(json.dumps({"commits": result}))
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from conftest import tiny_wav2vec2_kwargs

    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(
        num_voxels=4, tr=0.5, history_trs=3, head_hidden_size=8, **tiny_wav2vec2_kwargs()
    )
    model = Wav2Vec2ForBrainEncoding(config)
    root = tmp_path_factory.mktemp("exports")
    named = export_run(
        model, root / "named", feature_extractor=None, card={"hub_model_id": "me/refined"}
    )
    export_run(model, root / "anonymous", feature_extractor=None)
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["head"])
    )
    export_run(lora, root / "unmerged", feature_extractor=None, merge_lora=False)
    return root, named


def fresh_copy(exports, name: str, tmp_path: Path) -> Path:
    root, _ = exports
    return Path(shutil.copytree(root / name, tmp_path / name))


def push(folder: Path, repo: str, endpoint: str, *, full=False, private=False, **env):
    environment = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **env,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PUSH,
            str(folder),
            repo,
            "full" if full else "-",
            "private" if private else "-",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stderr[-3000:]
    return result.returncode, json.loads(lines[-1])


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_push_backbone(exports, tmp_path):
    folder = fresh_copy(exports, "named", tmp_path)
    with FakeHub() as hub:
        code, answer = push(folder, "me/refined", hub.url, private=True)
    assert code == 0, answer
    assert list(answer["commits"]) == ["me/refined"]
    assert answer["commits"]["me/refined"].startswith(f"{hub.url}/me/refined/commit/")
    assert set(hub.repos) == {"me/refined"}
    assert hub.repos["me/refined"]["visibility"] == "private"
    # the files that arrived are the backbone export, byte for byte, and nothing else
    assert hub.repos["me/refined"]["files"] == local_files(folder / "backbone")
    assert set(hub.upload_modes.values()) == {"regular"}
    assert not hub.unknown


def test_push_full_model_with_lfs(exports, tmp_path):
    folder = fresh_copy(exports, "named", tmp_path)
    with FakeHub(lfs_threshold=50_000) as hub:  # weights go through LFS, code and JSON inline
        code, answer = push(folder, "me/refined", hub.url, full=True, HF_HUB_DISABLE_XET="1")
    assert code == 0, answer
    full = full_model_repo_id("me/refined")
    assert list(answer["commits"]) == ["me/refined", full]
    assert hub.repos[full]["files"] == local_files(folder / "model")
    assert "modeling_brain_encoding.py" in hub.repos[full]["files"]
    assert hub.repos["me/refined"]["files"] == local_files(folder / "backbone")
    assert hub.upload_modes["model.safetensors"] == "lfs"
    assert hub.upload_modes["config.json"] == "regular"
    assert len(hub.objects) == 2  # one weights file per repository
    assert not hub.unknown


def test_repository_that_exists_is_reused(exports, tmp_path):
    folder = fresh_copy(exports, "named", tmp_path)
    with FakeHub() as hub:
        assert push(folder, "me/refined", hub.url)[0] == 0
        code, answer = push(folder, "me/refined", hub.url)  # create_repo answers 409
    assert code == 0, answer


def test_cards_get_the_repository_name(exports, tmp_path):
    folder = fresh_copy(exports, "anonymous", tmp_path)
    with FakeHub() as hub:
        code, answer = push(folder, "me/other", hub.url, full=True)
    assert code == 0, answer
    readme = hub.repos["me/other"]["files"]["README.md"].decode()
    assert 'Wav2Vec2Model.from_pretrained("me/other")' in readme
    assert "path/to/this/folder" not in readme
    assert (folder / "backbone" / "README.md").read_text() == readme  # local copy matches
    full = hub.repos["me/other-brain-encoding"]["files"]["README.md"].decode()
    assert 'AutoModel.from_pretrained("me/other-brain-encoding"' in full


def test_cards_made_for_another_repository_are_refused(exports, tmp_path):
    folder = fresh_copy(exports, "named", tmp_path)
    with pytest.raises(ValueError, match="written for 'me/refined', not 'me/elsewhere'"):
        push_export(folder, "me/elsewhere")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline", [False, True])
def test_no_network_fails_with_one_message_and_keeps_the_export(exports, tmp_path, offline):
    folder = fresh_copy(exports, "named", tmp_path)
    before = digest(folder)
    env = {"HF_HUB_OFFLINE": "1"} if offline else {}
    code, answer = push(folder, "me/refined", f"http://127.0.0.1:{closed_port()}", **env)
    assert code == 1
    assert answer["error"] == "HubPushError"
    message = answer["message"]
    assert "\n" not in message
    assert message.startswith("could not push the backbone to me/refined at http://127.0.0.1:")
    assert f"The export is complete on disk ({folder / 'backbone'}, {folder / 'model'})" in message
    assert digest(folder) == before


def test_bad_arguments(exports, tmp_path):
    _, named = exports
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_export(named, "me/re fined")
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_export(named, "me/../x")
    with pytest.raises(FileNotFoundError, match="is not a finished export"):
        push_export(tmp_path, "me/refined")
    with pytest.raises(FileNotFoundError, match="full model export to push"):
        push_export({"backbone": named["backbone"]}, "me/refined", include_full=True)


def test_push_an_unmerged_export(exports, tmp_path):
    folder = fresh_copy(exports, "unmerged", tmp_path)
    with FakeHub() as hub:
        code, answer = push(folder, "me/lora", hub.url, full=True)
    assert code == 0, answer
    files = hub.repos["me/lora-brain-encoding"]["files"]
    adapter = {k[len("adapter/") :]: v for k, v in files.items() if k.startswith("adapter/")}
    assert adapter == local_files(folder / "adapter")
    assert {k: v for k, v in files.items() if "/" not in k} == local_files(folder / "model")
    assert 'subfolder="adapter"' in files["README.md"].decode()
