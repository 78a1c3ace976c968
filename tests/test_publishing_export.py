"""export_run: backbone + full model (+ LoRA merged or as an adapter), checked reloads, atomicity,
and the full model's generated modeling code loading where wav2brain cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
from wav2brain.publishing import export as export_module
from wav2brain.publishing.export import ExportVerificationError, export_run, read_export
from wav2brain.publishing.remote_code import _rewrite, auto_map, remote_code_sources

SHORT = {"tr": 0.5, "history_trs": 3, "head_kernel_size": 2, "head_hidden_size": 8}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def brain_model(tiny_kwargs) -> Wav2Vec2ForBrainEncoding:
    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(subject_voxels={"01": 5, "02": 7}, **tiny_kwargs, **SHORT)
    model = Wav2Vec2ForBrainEncoding(config)
    with torch.no_grad():
        model.layer_weight_logits.copy_(torch.tensor([0.5, -0.2, 1.0]))
    return model


def lora_model(tiny_kwargs):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        brain_model(tiny_kwargs),
        LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, modules_to_save=["head"]),
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def audio(batch: int = 2, samples: int = 12000) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(3))


def predict(model, values=None, ids=(0, 1)):
    with torch.no_grad():
        return model.eval()(
            audio() if values is None else values, subject_ids=torch.tensor(ids)
        ).predictions


def states(backbone, values):
    with torch.no_grad():
        return backbone.eval()(values, output_hidden_states=True).hidden_states


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from conftest import tiny_wav2vec2_kwargs

    model = brain_model(tiny_wav2vec2_kwargs())
    model.train()
    out = tmp_path_factory.mktemp("export")
    card = {"scores": {"mean": 0.21}, "hub_model_id": "me/refined"}
    paths = export_run(model, out, feature_extractor=None, card=card)
    return model, out, paths


def test_export_layout_and_round_trips(exported):
    model, out, paths = exported
    assert paths == {
        "backbone": out / "backbone",
        "model": out / "model",
        "manifest": out / "export.json",
    }
    assert read_export(out) == paths
    assert sorted(p.name for p in out.iterdir()) == ["backbone", "export.json", "model"]
    assert sorted(p.name for p in paths["backbone"].iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} | {
        *remote_code_sources()
    } == {p.name for p in paths["model"].iterdir()}
    assert model.training  # put back in training mode after the checks
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["backbone_max_abs_difference"] == 0.0
    assert manifest["model_max_abs_difference"] < 1e-6
    values = audio()
    plain = Wav2Vec2Model.from_pretrained(paths["backbone"])
    for ours, theirs in zip(states(model.wav2vec2, values), states(plain, values), strict=True):
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(paths["backbone"])
    assert extractor.do_normalize is False and extractor.sampling_rate == 16000
    # wav2brain is imported here: AutoModel uses its registered class, no trust_remote_code
    full = AutoModel.from_pretrained(paths["model"])
    assert type(full) is Wav2Vec2ForBrainEncoding
    torch.testing.assert_close(predict(full, values), predict(model, values), rtol=1e-6, atol=1e-6)
    config = json.loads((paths["model"] / "config.json").read_text())
    assert config["auto_map"] == auto_map()
    assert config["model_type"] == "wav2vec2-brain-encoding"


def test_do_normalize_is_kept(tiny_kwargs, tmp_path):
    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(num_voxels=3, do_normalize=True, **tiny_kwargs, **SHORT)
    model = Wav2Vec2ForBrainEncoding(config)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000)
    paths = export_run(model, tmp_path, feature_extractor=extractor)
    for folder in ("backbone", "model"):
        assert Wav2Vec2FeatureExtractor.from_pretrained(paths[folder]).do_normalize is True


def test_lora_is_merged_on_a_copy(tiny_kwargs, tmp_path):
    from peft import PeftModel

    model = lora_model(tiny_kwargs)
    before = predict(model)
    paths = export_run(model, tmp_path, feature_extractor=None)
    assert isinstance(model, PeftModel) and "lora_A" in str(model)  # the caller's model unmerged
    torch.testing.assert_close(predict(model), before, rtol=0, atol=0)
    reloaded = Wav2Vec2ForBrainEncoding.from_pretrained(paths["model"])
    assert not any("lora" in name for name in reloaded.state_dict())
    torch.testing.assert_close(predict(reloaded), before, rtol=1e-5, atol=1e-6)
    # the refined backbone carries the adapters' change: it is not the base weights
    base = brain_model(tiny_kwargs).wav2vec2
    plain = Wav2Vec2Model.from_pretrained(paths["backbone"])
    query = "encoder.layers.0.attention.q_proj.weight"
    assert not torch.equal(plain.state_dict()[query], base.state_dict()[query])
    assert json.loads(paths["manifest"].read_text())["merge_max_abs_difference"] < 1e-5


def test_lora_injected_by_add_lora_is_merged_on_a_copy(tiny_kwargs, tmp_path):
    """The recipe's own LoRA (adapters injected into the backbone, no PeftModel) exports merged;
    kept apart it is refused, before anything is written."""
    from wav2brain.training.lora import add_lora, has_lora

    model = add_lora(
        brain_model(tiny_kwargs), rank=4, alpha=8.0, dropout=0.0, target_modules=LORA_TARGETS
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    before = predict(model)
    assert not torch.allclose(before, predict(brain_model(tiny_kwargs)))  # the adapters act
    with pytest.raises(ValueError, match="injected by add_lora"):
        export_run(model, tmp_path / "apart", feature_extractor=None, merge_lora=False)
    assert not (tmp_path / "apart").exists() or not any((tmp_path / "apart").iterdir())
    paths = export_run(model, tmp_path / "merged", feature_extractor=None)
    assert has_lora(model)  # the caller's model keeps its adapters
    reloaded = Wav2Vec2ForBrainEncoding.from_pretrained(paths["model"])
    assert not any("lora" in name for name in reloaded.state_dict())
    torch.testing.assert_close(predict(reloaded), before, rtol=1e-5, atol=1e-6)
    assert json.loads(paths["manifest"].read_text())["merge_max_abs_difference"] < 1e-5


def test_lora_kept_apart(tiny_kwargs, tmp_path):
    from peft import PeftModel

    model = lora_model(tiny_kwargs)
    with torch.no_grad():  # trained outside the adapters: the head (modules_to_save), layer weights
        model.base_model.model.head.modules_to_save["default"].readouts[0].bias.add_(0.5)
        model.base_model.model.layer_weight_logits.add_(torch.tensor([1.0, 0.0, -1.0]))
    paths = export_run(model, tmp_path, feature_extractor=None, merge_lora=False)
    assert set(paths) == {"backbone", "model", "adapter", "manifest"}
    assert (paths["adapter"] / "adapter_config.json").is_file()
    assert (paths["model"] / "modeling_brain_encoding.py").is_file()
    readme = (paths["model"] / "README.md").read_text()
    assert "kept apart in\n`adapter/`" in readme and 'subfolder="adapter"' in readme
    base = Wav2Vec2ForBrainEncoding.from_pretrained(paths["model"])
    trained = model.base_model.model
    torch.testing.assert_close(base.layer_weight_logits, trained.layer_weight_logits)
    head = trained.head.modules_to_save["default"].readouts[0].bias
    torch.testing.assert_close(base.head.readouts[0].bias, head)
    query = "encoder.layers.0.attention.q_proj.weight"
    plain = brain_model(tiny_kwargs).wav2vec2.state_dict()[query]
    assert torch.equal(base.wav2vec2.state_dict()[query], plain)  # no LoRA delta in model/
    reloaded = PeftModel.from_pretrained(base, paths["adapter"])
    torch.testing.assert_close(predict(reloaded), predict(model), rtol=1e-6, atol=1e-6)
    merged = Wav2Vec2Model.from_pretrained(paths["backbone"]).state_dict()[query]
    assert not torch.equal(merged, plain)  # the backbone export is merged
    # a merged export afterwards leaves no adapter that would contradict it
    export_run(model, tmp_path, feature_extractor=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "export.json", "model"]


def test_bad_inputs_fail_before_writing(tiny_kwargs, tmp_path):
    model = brain_model(tiny_kwargs)
    with pytest.raises(ValueError, match="Wav2Vec2ForBrainEncoding or a peft PeftModel"):
        export_run(model.wav2vec2, tmp_path / "a", feature_extractor=None)
    wrong = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000)
    with pytest.raises(ValueError, match="do_normalize=True disagrees"):
        export_run(model, tmp_path / "b", feature_extractor=wrong)
    assert not (tmp_path / "b" / "backbone").exists()
    assert not [p for p in (tmp_path / "b").iterdir()]  # no staging folder left
    with pytest.raises(ValueError, match=r"unknown card keys \['scroes'\]"):
        export_run(model, tmp_path / "c", feature_extractor=None, card={"scroes": {}})
    assert not (tmp_path / "c").exists()


def test_a_bad_reload_is_caught_and_the_old_export_kept(tiny_kwargs, tmp_path, monkeypatch):
    model = brain_model(tiny_kwargs)
    export_run(model, tmp_path, feature_extractor=None)
    old = (tmp_path / "backbone" / "model.safetensors").read_bytes()
    real = Wav2Vec2Model.from_pretrained.__func__

    def corrupted(cls, *args, **kwargs):  # negative control: a reload 1 % off in one matrix
        loaded = real(cls, *args, **kwargs)
        with torch.no_grad():
            loaded.encoder.layers[0].feed_forward.output_dense.weight.mul_(1.01)
        return loaded

    monkeypatch.setattr(Wav2Vec2Model, "from_pretrained", classmethod(corrupted))
    with torch.no_grad():
        model.wav2vec2.encoder.layers[1].feed_forward.output_dense.weight.mul_(2.0)
    with pytest.raises(ExportVerificationError, match="hidden state 1 differs"):
        export_run(model, tmp_path, feature_extractor=None)
    assert (tmp_path / "backbone" / "model.safetensors").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "export.json", "model"]


def test_interrupted_export_leaves_the_previous_one(tiny_kwargs, tmp_path, monkeypatch):
    model = brain_model(tiny_kwargs)
    export_run(model, tmp_path, feature_extractor=None)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_save_full_model", killed)
    with torch.no_grad():
        model.layer_weight_logits.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        export_run(model, tmp_path, feature_extractor=None)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # the previous export, manifest included, and nothing else
    stale = tmp_path / ".model.partial-killed"
    stale.mkdir()  # as a kill -9 would leave it
    export_run(model, tmp_path, feature_extractor=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "export.json", "model"]


def test_rewrite_makes_package_imports_relative_and_refuses_others():
    text, siblings = _rewrite("x", "from wav2brain.modeling.heads import BrainEncodingHead\n")
    assert text == "from .heads import BrainEncodingHead\n" and siblings == {"heads"}
    for bad in (
        "from wav2brain.data.windows import BrainWindows\n",
        "import wav2brain\n",
        "from wav2brain.modeling import Wav2Vec2ForBrainEncoding\n",
    ):
        with pytest.raises(ValueError, match="line 1"):
            _rewrite("x", bad)
    for name, source in remote_code_sources().items():
        assert "wav2brain." not in "".join(
            line for line in source.splitlines() if line.startswith(("import", "from"))
        ), name


BLOCKED_LOAD = """
import importlib.abc, os, sys
# no folder holding a wav2brain package on the path (the editable install's src/ included) ...
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "wav2brain"))]
# ... and an import hook refusing it, whatever finder would find it
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "wav2brain" or name.startswith("wav2brain."):
            raise ImportError("wav2brain is blocked in this test: " + name)
sys.meta_path.insert(0, Block())
try:
    import wav2brain
except ImportError:
    pass
else:
    raise SystemExit("the block does not work")
import torch
from transformers import AutoModel
folder, reference = sys.argv[1], torch.load(sys.argv[2])
try:  # negative control: without wav2brain and without trust, transformers refuses the code
    AutoModel.from_pretrained(folder)
except ValueError as error:
    assert "trust_remote_code" in str(error), error
else:
    raise SystemExit("loaded custom code without trust_remote_code")
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == "Wav2Vec2ForBrainEncoding", type(model)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    out = model(reference["values"], subject_ids=reference["ids"]).predictions
torch.testing.assert_close(out, reference["predictions"], rtol=1e-6, atol=1e-6)
print("loaded", type(model).__module__)
"""


def test_full_model_loads_without_wav2brain(exported, tmp_path):
    model, _, paths = exported
    values, ids = audio(), torch.tensor([0, 1])
    torch.save(
        {"values": values, "ids": ids, "predictions": predict(model, values)},
        tmp_path / "ref.pt",
    )
    script = tmp_path / "load.py"
    script.write_text(BLOCKED_LOAD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONSAFEPATH="1")
    result = subprocess.run(
        [sys.executable, str(script), str(paths["model"]), str(tmp_path / "ref.pt")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded transformers_modules." in result.stdout
