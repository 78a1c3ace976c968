"""transformers conformance of Wav2Vec2ForBrainEncoding: config-level flags, tuple/dict outputs, Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

RATE = 16000
FAST = {"tr": 0.5, "history_trs": 3, "head_hidden_size": 8, "attn_implementation": "eager"}
WINDOW = int(FAST["history_trs"] * FAST["tr"] * RATE)


def make_model(tiny_kwargs: dict, **overrides) -> Wav2Vec2ForBrainEncoding:
    torch.manual_seed(0)
    kwargs = {**tiny_kwargs, **FAST, "num_voxels": 5, **overrides}
    return Wav2Vec2ForBrainEncoding(Wav2Vec2BrainEncodingConfig(**kwargs)).eval()


def audio(batch: int = 2, samples: int = WINDOW) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(1))


def assert_equivalent(tuple_output, dict_output) -> None:
    """transformers' output-equivalence check (``test_model_outputs_equivalence``): same structure,
    NaN set to 0, ``allclose`` leaf by leaf with the largest difference in the message."""
    if isinstance(tuple_output, (list, tuple)):
        assert isinstance(dict_output, (list, tuple)) and len(tuple_output) == len(dict_output)
        for left, right in zip(tuple_output, dict_output, strict=True):
            assert_equivalent(left, right)
        return
    if tuple_output is None:
        assert dict_output is None
        return
    left, right = (torch.nan_to_num(t, nan=0.0) for t in (tuple_output, dict_output))
    difference = torch.max(torch.abs(left - right))  # a bool tensor fails here, as in transformers
    assert torch.allclose(left, right, atol=1e-5), f"tuple and dict outputs differ by {difference}"


def leaves(output) -> list[torch.Tensor]:
    if isinstance(output, (list, tuple)):
        return [leaf for item in output for leaf in leaves(item)]
    return [] if output is None else [output]


@pytest.mark.parametrize("where", ["config", "argument"])
def test_output_hidden_states_from_config_or_argument(tiny_kwargs, where):
    n_states = tiny_kwargs["num_hidden_layers"] + 1
    if where == "config":
        model = make_model(tiny_kwargs, output_hidden_states=True)
        output = model(audio())
    else:
        model = make_model(tiny_kwargs)
        output = model(audio(), output_hidden_states=True)
    assert len(output.hidden_states) == n_states
    # the keyword wins over the config, both ways
    assert (
        make_model(tiny_kwargs, output_hidden_states=True)(
            audio(), output_hidden_states=False
        ).hidden_states
        is None
    )
    assert make_model(tiny_kwargs)(audio()).hidden_states is None


@pytest.mark.parametrize("aggregation", ["weighted_sum", "last", 1])
def test_hidden_states_never_leak_from_the_aggregation(tiny_kwargs, aggregation):
    # the weighted sum needs every hidden state from the backbone; they are returned only on request
    output = make_model(tiny_kwargs, layer_aggregation=aggregation)(audio())
    assert list(output.keys()) == ["predictions"]


@pytest.mark.parametrize("where", ["config", "argument"])
def test_output_attentions_from_config_or_argument(tiny_kwargs, where):
    if where == "config":
        model = make_model(tiny_kwargs, output_attentions=True)
        output = model(audio())
    else:
        model = make_model(tiny_kwargs)
        output = model(audio(), output_attentions=True)
    assert len(output.attentions) == tiny_kwargs["num_hidden_layers"]
    assert output.attentions[0].shape[:2] == (2, tiny_kwargs["num_attention_heads"])
    overridden = make_model(tiny_kwargs, output_attentions=True)(audio(), output_attentions=False)
    assert overridden.attentions is None


@pytest.mark.parametrize("where", ["config", "argument"])
def test_return_dict_from_config_or_argument(tiny_kwargs, where):
    labels = torch.randn(2, 5)
    if where == "config":
        model = make_model(tiny_kwargs, return_dict=False)
        assert model.config.use_return_dict is False  # the deprecated alias reads return_dict
        output = model(audio(), labels=labels)
    else:
        model = make_model(tiny_kwargs)
        output = model(audio(), labels=labels, return_dict=False)
    assert isinstance(output, tuple) and len(output) == 2
    loss, predictions = output
    assert loss.ndim == 0 and predictions.shape == (2, 5)
    as_dict = make_model(tiny_kwargs, return_dict=False)(audio(), return_dict=True)
    assert list(as_dict.keys()) == ["predictions"]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("attentions", [False, True])
@pytest.mark.parametrize("with_labels", [False, True])
def test_tuple_and_dict_outputs_are_equivalent(tiny_kwargs, hidden, attentions, with_labels):
    model = make_model(tiny_kwargs)
    values, labels = audio(3), torch.randn(3, 5) if with_labels else None
    flags = {"output_hidden_states": hidden, "output_attentions": attentions}
    tuple_output = model(values, labels=labels, return_dict=False, **flags)
    dict_output = model(values, labels=labels, return_dict=True, **flags)
    assert_equivalent(tuple_output, dict_output.to_tuple())
    assert len(tuple_output) == 1 + with_labels + hidden + attentions
    assert all(leaf.is_floating_point() for leaf in leaves(tuple_output))


def test_equivalence_check_fails_on_bool_tensors_and_different_values():
    # negative controls: a bool mask among the outputs (as valid_bins was) cannot be compared, and
    # different values are caught
    floats = (torch.ones(2, 3),)
    with pytest.raises(RuntimeError, match="bool tensors is not supported"):
        assert_equivalent(
            (torch.ones(2, 3, dtype=torch.bool),), (torch.ones(2, 3, dtype=torch.bool),)
        )
    with pytest.raises(AssertionError, match="differ"):
        assert_equivalent(floats, (torch.ones(2, 3) + 1e-3,))
    with pytest.raises(AssertionError):
        assert_equivalent(floats, floats + (torch.ones(1),))


def test_the_trainer_never_passes_num_items_in_batch(tiny_kwargs):
    model = make_model(tiny_kwargs)
    assert model.accepts_loss_kwargs is False
    with pytest.raises(ValueError, match="num_items_in_batch is not supported"):
        model(audio(), labels=torch.randn(2, 5), num_items_in_batch=torch.tensor(10))


class Windows(torch.utils.data.Dataset):
    """A few fixed windows: audio, labels padded to ``width`` columns, subject ids."""

    def __init__(self, subjects: list[int], counts: list[int], width: int) -> None:
        self.values = audio(len(subjects))
        self.labels = torch.full((len(subjects), width), float("nan"))
        generator = torch.Generator().manual_seed(2)
        for row, subject in enumerate(subjects):
            self.labels[row, : counts[subject]] = torch.randn(counts[subject], generator=generator)
        self.subjects = torch.tensor(subjects)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_values": self.values[index],
            "labels": self.labels[index],
            "subject_ids": self.subjects[index],
        }


def trainer_for(model, tmp_path):
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_eval_batch_size=2,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    return Trainer(model=model, args=arguments)


def test_trainer_predict_returns_the_predictions_alone(tiny_kwargs, tmp_path):
    # hidden states and attentions switched on in the config must still stay out of predict()
    model = make_model(tiny_kwargs, output_hidden_states=True, output_attentions=True)
    windows = Windows([0, 0, 0, 0], [5], width=5)
    result = trainer_for(model, tmp_path).predict(windows)
    assert isinstance(result.predictions, np.ndarray)
    assert result.predictions.shape == (4, 5)
    with torch.no_grad():
        expected = model(windows.values, output_hidden_states=False).predictions
    np.testing.assert_allclose(result.predictions, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(result.metrics["test_loss"])
    # negative control: without the config's keys_to_ignore_at_inference the tuples come along
    everything = trainer_for(model, tmp_path).predict(windows, ignore_keys=[])
    assert isinstance(everything.predictions, tuple) and len(everything.predictions) == 3


def test_trainer_predict_with_subjects_of_different_sizes(tiny_kwargs, tmp_path):
    # labels padded to the widest subject of the model (9); the first batch holds only the
    # 5-voxel subject, so its predictions are 5 wide and its labels 9 wide
    model = make_model(tiny_kwargs, num_voxels=None, subject_voxels={"small": 5, "large": 9})
    windows = Windows([0, 0, 1, 0], [5, 9], width=9)
    result = trainer_for(model, tmp_path).predict(windows)
    assert result.predictions.shape == (4, 9)
    assert np.isfinite(result.metrics["test_loss"])
    with torch.no_grad():
        small = model(windows.values[:2], subject_ids=windows.subjects[:2]).predictions
    np.testing.assert_allclose(result.predictions[:2, :5], small.numpy(), rtol=1e-5, atol=1e-6)
    # the Trainer pads the narrower batch's predictions with its padding index, -100
    assert np.all(result.predictions[:2, 5:] == -100)


def accumulating_trainer(model, windows, tmp_path):
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=0.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    return Trainer(model=model, args=arguments, train_dataset=windows)


def test_trainer_training_loss_is_the_models_mean_loss_under_accumulation(tiny_kwargs, tmp_path):
    # accepts_loss_kwargs=False: the Trainer scales the loss for gradient accumulation itself, so
    # the logged loss over two accumulated batches of 2 is the model's loss on all 4 windows
    model = make_model(tiny_kwargs)
    windows = Windows([0, 0, 0, 0], [5], width=5)
    result = accumulating_trainer(model, windows, tmp_path).train()
    with torch.no_grad():
        expected = model.train()(windows.values, labels=windows.labels).loss
    assert result.training_loss == pytest.approx(float(expected), rel=1e-5)


def test_without_accepts_loss_kwargs_the_trainer_would_pass_a_token_count(
    tiny_kwargs, tmp_path, monkeypatch
):
    # negative control: what the Trainer infers from **kwargs in forward when the flag is absent
    monkeypatch.setattr(Wav2Vec2ForBrainEncoding, "accepts_loss_kwargs", True)
    model = make_model(tiny_kwargs)
    trainer = accumulating_trainer(model, Windows([0, 0, 0, 0], [5], width=5), tmp_path)
    with pytest.raises(ValueError, match="num_items_in_batch is not supported"):
        trainer.train()
