"""Model cards: the run record's keys, the template, model-index results, and bad records."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub import ModelCard

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
from wav2brain.publishing.card import CARD_KEYS, build_model_card, check_card, template_path

SHORT = {"tr": 1.5, "history_trs": 3, "head_kernel_size": 2, "head_hidden_size": 8}

RECORD = {
    "base_model": "facebook/wav2vec2-base",
    "dataset": {"name": "Narratives (subset)", "id": "me/narratives-auditory"},
    "subjects": ["01", "02"],
    "voxels": {"01": 5, "02": 7},
    "voxel_selection": "auditory and language ROIs",
    "tr": 1.5,
    "history_trs": 3,
    "splits": {"train": ["pieman", "tunnel"], "test": ["lucy"]},
    "stages": {
        "stage 1": {"learning_rate": 1e-3, "max_steps": 200},
        "stage 2": {"learning_rate": 1e-5, "backbone_learning_rate": 1e-6},
    },
    "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "scores": {
        "mean": 0.123,
        "median": 0.1,
        "top10_mean": 0.4,
        "fraction_significant": 0.3,
        "n_voxels": 12,
        "per_subject": {"01": {"mean": 0.11, "n_voxels": 5}, "02": {"mean": 0.14, "n_voxels": 7}},
    },
    "parameter_change": {"q_proj": 0.5, "all": 0.25},
    "hub_model_id": "me/refined",
}


@pytest.fixture
def model(tiny_kwargs):
    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(subject_voxels={"01": 5, "02": 7}, **tiny_kwargs, **SHORT)
    return Wav2Vec2ForBrainEncoding(config)


def test_card_from_a_full_record(model):
    card = build_model_card(RECORD, model, kind="backbone")
    parsed = ModelCard(str(card))  # what the Hub reads back
    data = parsed.data
    assert data.base_model == "facebook/wav2vec2-base"
    assert data.datasets == ["me/narratives-auditory"]
    assert data.pipeline_tag == "feature-extraction"
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {
        "mean r (held-out stories)": 0.123,
        "median r (held-out stories)": 0.1,
        "top-10 % mean r (held-out stories)": 0.4,
        "fraction significant (held-out stories)": 0.3,
    }
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    types = {r.metric_name: r.metric_type for r in data.eval_results}
    assert types["fraction significant (held-out stories)"] == "fraction"  # a share, not an r
    assert types["mean r (held-out stories)"] == "pearsonr"
    assert {r.dataset_type for r in data.eval_results} == {"me/narratives-auditory"}
    text = parsed.text
    for expected in (
        "Narratives (subset)",
        "| Voxels | 01: 5, 02: 7 (auditory and language ROIs) |",
        "| Test stories | lucy |",
        "`backbone_learning_rate` | 1e-06",
        "r=8, lora_alpha=16, target_modules=q_proj, v_proj",
        "| all subjects | 0.123 | 0.1 | 0.4 | 0.3 | 12 |",
        "| 02 | 0.14 |  |  |  | 7 |",
        "| q_proj | 50.0 % |",
        "me/refined-brain-encoding",
        'Wav2Vec2Model.from_pretrained("me/refined")',
        "li2024refining",
        "zhou2023finegrained",
        "Intended use",
        "Limitations",
    ):
        assert expected in text, expected
    assert "SIMULATED" not in text


def test_full_model_card_and_simulated_label(model):
    card = build_model_card({**RECORD, "simulated": True}, model, kind="brain_encoding")
    assert "simulated" in card.data.tags
    assert "> **SIMULATED.**" in card.text
    assert 'AutoModel.from_pretrained("me/refined-brain-encoding", trust_remote_code=True)' in (
        card.text
    )
    assert card.data.pipeline_tag is None


def test_card_without_a_record(model):
    card = build_model_card(None, model, kind="backbone")
    assert card.data.eval_results is None
    assert "No held-out scores were recorded." in card.text
    assert "path/to/this/folder" in card.text
    assert "2 subjects (01, 02)" in card.text


def test_local_paths_are_not_hub_ids(model, tmp_path):
    record = {"base_model": str(tmp_path), "dataset": {"id": "runs/sim/prepared"}}
    card = build_model_card(record, model, kind="backbone")
    assert card.data.base_model is None and card.data.datasets is None
    assert str(tmp_path) in card.text  # still named in the text


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"scroes": {}}, r"unknown card keys \['scroes'\]"),
        ({"tr": 2.0}, r"card tr=2.0 disagrees with the model's config \(tr=1.5\)"),
        ({"history_trs": 6}, "card history_trs=6 disagrees"),
        ({"subjects": ["01", "03"]}, "disagree with the model's heads"),
        ({"voxels": {"01": 5, "02": 8}}, "card voxels"),
        ({"scores": {"mean": math.nan}}, r"scores\['mean'\] must be a finite number"),
        ({"scores": {"per_subject": {"01": {"mean": "high"}}}}, "must be a finite number"),
        ({"parameter_change": {"q_proj": 50.0}}, r"must be a share in \[0, 1\]"),
        ({"stages": {"stage 1": 3}}, r"stages\['stage 1'\] must be a mapping"),
        ({"splits": {"test": "lucy"}}, "must be a list of strings"),
        ({"tags": 3}, "must be a list of strings"),
        ({"simulated": "yes"}, "simulated must be true or false"),
        ({"dataset": {"name": "x", "url": "y"}}, "expected 'name' and 'id'"),
        ({"parameter_change_threshold": 0}, "must be positive"),
    ],
)
def test_bad_records(model, record, message):
    with pytest.raises(ValueError, match=message):
        check_card(record, model.config)


def test_every_key_is_documented_and_the_template_ships():
    import wav2brain.publishing.card as card_module

    for key in CARD_KEYS:
        assert f"``{key}``" in card_module.__doc__, key
    assert template_path().is_file() and template_path("citations.bib").is_file()
