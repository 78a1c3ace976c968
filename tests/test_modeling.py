"""Wav2Vec2ForBrainEncoding: shapes, heads, losses, subjects, gradients, training, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2brain import BrainEncodingOutput, Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

RATE = 16000
# short windows keep the tiny model fast: 3 TRs of 0.5 s = 1.5 s of audio (75 frames)
FAST = {"tr": 0.5, "history_trs": 3, "head_kernel_size": 2, "head_hidden_size": 8}
WINDOW = int(FAST["history_trs"] * FAST["tr"] * RATE)


def make_model(tiny_kwargs: dict, seed: int = 0, **overrides) -> Wav2Vec2ForBrainEncoding:
    torch.manual_seed(seed)
    kwargs = {**tiny_kwargs, **FAST, **overrides}
    if "subject_voxels" not in kwargs:
        kwargs.setdefault("num_voxels", 5)
    return Wav2Vec2ForBrainEncoding(Wav2Vec2BrainEncodingConfig(**kwargs)).eval()


def audio(batch: int, samples: int = WINDOW, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def padded_batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    values = audio(len(lengths), max(lengths))
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return values * mask, mask.long()


def test_padded_batch_shapes_and_left_padding(tiny_kwargs):
    model = make_model(tiny_kwargs)
    values, mask = padded_batch([WINDOW, WINDOW + 3000, int(0.5 * RATE)])
    output = model(values, attention_mask=mask, output_hidden_states=True)
    assert isinstance(output, BrainEncodingOutput)
    assert output.predictions.shape == (3, 5)
    assert output.loss is None
    assert len(output.hidden_states) == tiny_kwargs["num_hidden_layers"] + 1
    assert torch.isfinite(output.predictions).all()
    assert list(output.keys()) == ["predictions", "hidden_states"]  # no bool mask among the outputs
    backbone = model.wav2vec2(values, attention_mask=mask, output_hidden_states=True)
    _, valid_bins = model.pool_trs(backbone, mask.sum(dim=-1))
    assert valid_bins.tolist() == [[True] * 3, [True] * 3, [False, False, True]]


def test_padding_does_not_change_an_example(tiny_kwargs):
    # layer-norm front end: padded examples must match running them alone (mask-aware pooling)
    model = make_model(tiny_kwargs, feat_extract_norm="layer")
    lengths = [WINDOW + 4000, WINDOW, int(1.2 * RATE)]
    values, mask = padded_batch(lengths)
    batched = model(values, attention_mask=mask).predictions
    for row, length in enumerate(lengths):
        alone = model(values[row : row + 1, :length]).predictions
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-4, atol=1e-5)


def test_return_tuple_and_attentions(tiny_kwargs):
    model = make_model(tiny_kwargs, attn_implementation="eager")
    output = model(audio(2), output_attentions=True, return_dict=False)
    assert isinstance(output, tuple)
    predictions, attentions = output[0], output[1]
    assert predictions.shape == (2, 5)
    assert len(attentions) == tiny_kwargs["num_hidden_layers"]


@pytest.mark.parametrize("head", ["conv", "linear", "mean"])
@pytest.mark.parametrize("aggregation", ["weighted_sum", "last", 1])
def test_each_head_and_aggregation(tiny_kwargs, head, aggregation):
    model = make_model(tiny_kwargs, head=head, layer_aggregation=aggregation).train()
    output = model(audio(2), labels=torch.randn(2, 5))
    assert output.predictions.shape == (2, 5)
    output.loss.backward()
    for name, param in model.head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    weights = model.layer_weights
    assert weights.shape == (tiny_kwargs["num_hidden_layers"] + 1,)
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    if aggregation == "weighted_sum":
        assert model.layer_weight_logits.grad.abs().sum() > 0
    else:
        assert weights[aggregation if isinstance(aggregation, int) else -1] == 1.0


@pytest.mark.parametrize("head", ["conv", "linear", "mean"])
def test_every_history_length_builds_with_the_default_head(tiny_kwargs, head):
    # the refinement paper sweeps the history from 1 to 12 TRs; the conv kernel (3 TRs by default)
    # is clamped to the history. TR 0.1 s (5 frames per bin) keeps the sweep fast.
    for history in range(1, 13):
        torch.manual_seed(0)
        config = Wav2Vec2BrainEncodingConfig(
            **tiny_kwargs, num_voxels=4, tr=0.1, history_trs=history, head=head, head_hidden_size=8
        )
        assert config.head_kernel_size == min(3, history)
        model = Wav2Vec2ForBrainEncoding(config).train()
        output = model(audio(2, int(history * 0.1 * RATE)), labels=torch.randn(2, 4))
        assert output.predictions.shape == (2, 4)
        assert torch.isfinite(output.loss)
        output.loss.backward()
        assert all(p.grad is not None for p in model.head.parameters())


def test_aggregation_uses_the_named_layer(tiny_kwargs):
    model = make_model(tiny_kwargs, layer_aggregation=0, head="mean")
    values = audio(1)
    first = model(values).predictions
    # changing the last layer's weights must not change a layer-0 readout
    with torch.no_grad():
        model.wav2vec2.encoder.layers[-1].feed_forward.output_dense.weight.mul_(3.0)
    torch.testing.assert_close(model(values).predictions, first)


def test_weighted_sum_matches_manual_pooling(tiny_kwargs):
    model = make_model(tiny_kwargs, head="mean")
    with torch.no_grad():
        model.layer_weight_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    values = audio(1)
    hidden = model.wav2vec2(values, output_hidden_states=True).hidden_states
    mixed = sum(w * h for w, h in zip(model.layer_weights, hidden, strict=True))[0]
    # the mean head averages the 3 bins; with a 1.5 s window every frame whose centre is inside
    # [0, 24000) counts, bins weighted equally
    bins = [
        mixed[[i for i in range(mixed.shape[0]) if k * 8000 <= 320 * i + 200 < (k + 1) * 8000]]
        for k in range(3)
    ]
    pooled = torch.stack([b.mean(0) for b in bins]).mean(0)
    readout = model.head.readouts[0]
    torch.testing.assert_close(model(values).predictions[0], readout(pooled), rtol=1e-5, atol=1e-6)


def test_mse_loss_and_head_l2(tiny_kwargs):
    model = make_model(tiny_kwargs, head_l2=0.0)
    values, labels = audio(3), torch.randn(3, 5)
    output = model(values, labels=labels)
    torch.testing.assert_close(output.loss, ((output.predictions - labels) ** 2).mean())
    penalised = make_model(tiny_kwargs, head_l2=0.01)
    squared = sum((w**2).sum() for n, w in penalised.head.named_parameters() if "weight" in n)
    torch.testing.assert_close(
        penalised(values, labels=labels).loss, output.loss + 0.01 * squared, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("loss", ["correlation", "mse+correlation"])
def test_correlation_losses(tiny_kwargs, loss):
    model = make_model(tiny_kwargs, loss=loss, head_l2=0.0, correlation_loss_weight=0.5)
    values, labels = audio(4), torch.randn(4, 5)
    output = model(values, labels=labels)
    predictions = output.predictions.detach().numpy()
    r = np.mean([np.corrcoef(predictions[:, v], labels[:, v].numpy())[0, 1] for v in range(5)])
    mse = float(((output.predictions.detach() - labels) ** 2).mean())
    expected = 1.0 - r if loss == "correlation" else mse + 0.5 * (1.0 - r)
    assert output.loss.item() == pytest.approx(expected, rel=1e-4)


def test_per_subject_heads_and_mixed_batches(tiny_kwargs):
    model = make_model(tiny_kwargs, subject_voxels={"sub-01": 3, "sub-02": 6}, head_l2=0.0)
    values = audio(4)
    subjects = torch.tensor([1, 0, 1, 0])
    mixed = model(values, subject_ids=subjects).predictions
    assert mixed.shape == (4, 6)
    assert torch.all(mixed[subjects == 0, 3:] == 0)
    alone = model(values[subjects == 0], subject_ids=torch.tensor([0, 0])).predictions
    assert alone.shape == (2, 3)
    torch.testing.assert_close(mixed[subjects == 0, :3], alone)
    # the loss uses each subject's own voxels: padded label entries (even NaN) are ignored
    labels = torch.randn(4, 6)
    labels[subjects == 0, 3:] = float("nan")
    loss = model(values, subject_ids=subjects, labels=labels).loss
    own = torch.cat(
        [
            (mixed[subjects == 1] - labels[subjects == 1]).flatten(),
            (mixed[subjects == 0, :3] - labels[subjects == 0, :3]).flatten(),
        ]
    )
    torch.testing.assert_close(loss, (own**2).mean())


@pytest.mark.parametrize("subjects", [[0, 0, 0], [0, 1, 0]])
def test_labels_padded_to_the_widest_subject(tiny_kwargs, subjects):
    # 5- and 9-voxel heads; labels as wide as the batch's widest subject or padded (NaN) to the
    # model's widest give the same loss: the padding is never scored
    model = make_model(tiny_kwargs, subject_voxels={"small": 5, "large": 9}, head_l2=0.0)
    values, ids = audio(3), torch.tensor(subjects)
    width = 9 if 1 in subjects else 5
    labels = torch.full((3, 9), float("nan"))
    for row, subject in enumerate(subjects):
        count = (5, 9)[subject]
        labels[row, :count] = torch.randn(count, generator=torch.Generator().manual_seed(row))
    padded = model(values, subject_ids=ids, labels=labels)
    exact = model(values, subject_ids=ids, labels=labels[:, :width])
    assert padded.predictions.shape == (3, width)
    assert torch.isfinite(padded.loss)
    torch.testing.assert_close(padded.loss, exact.loss)
    own = torch.cat(
        [
            padded.predictions[r, : (5, 9)[s]] - labels[r, : (5, 9)[s]]
            for r, s in enumerate(subjects)
        ]
    )
    torch.testing.assert_close(padded.loss, (own**2).mean())
    # negative control: a real value in a scored column changes the loss
    changed = labels.clone()
    changed[0, 0] += 1.0
    assert model(values, subject_ids=ids, labels=changed).loss != padded.loss


def backbone_grads(model: Wav2Vec2ForBrainEncoding) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    model(audio(2), labels=torch.randn(2, 5)).loss.backward()
    parts = {
        "feature_encoder": model.wav2vec2.feature_extractor,
        "transformer": model.wav2vec2.encoder,
        "head": model.head,
    }
    return {k: any(p.grad is not None for p in m.parameters()) for k, m in parts.items()}


def test_gradients_reach_the_backbone_only_when_unfrozen(tiny_kwargs):
    model = make_model(tiny_kwargs).train()
    assert backbone_grads(model) == {"feature_encoder": True, "transformer": True, "head": True}
    model.freeze_backbone()
    assert backbone_grads(model) == {"feature_encoder": False, "transformer": False, "head": True}
    model.unfreeze_backbone()
    assert backbone_grads(model) == {"feature_encoder": False, "transformer": True, "head": True}
    model.unfreeze_backbone(feature_encoder=True)
    assert backbone_grads(model)["feature_encoder"]
    model.freeze_feature_encoder()
    assert backbone_grads(model) == {"feature_encoder": False, "transformer": True, "head": True}


def test_backbone_l2_sp(tiny_kwargs):
    model = make_model(tiny_kwargs, head_l2=0.0, backbone_l2_sp=0.5).train()
    values, labels = audio(2), torch.randn(2, 5)
    start = model(values, labels=labels)
    torch.testing.assert_close(start.loss, ((start.predictions - labels) ** 2).mean())
    weight = model.wav2vec2.encoder.layers[0].attention.q_proj.weight
    with torch.no_grad():
        weight.add_(0.1)
    moved = model(values, labels=labels)
    data = ((moved.predictions - labels) ** 2).mean()
    torch.testing.assert_close(moved.loss, data + 0.5 * 0.01 * weight.numel(), rtol=1e-4, atol=1e-6)
    assert not any(k.startswith("l2_sp_reference") for k in model.state_dict())
    model.freeze_backbone()
    frozen = model(values, labels=labels)
    torch.testing.assert_close(frozen.loss, ((frozen.predictions - labels) ** 2).mean())


def test_loss_falls_over_30_steps(tiny_kwargs):
    model = make_model(tiny_kwargs, head_l2=1e-5).train()
    values = audio(4)
    target = torch.randn(4, 5, generator=torch.Generator().manual_seed(7))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = model(values, labels=target).loss
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


class BackboneCalled(AssertionError):
    pass


@pytest.fixture
def guarded_model(tiny_kwargs, monkeypatch):
    """Two-subject model whose backbone raises if called: errors must come before computation."""
    model = make_model(tiny_kwargs, subject_voxels={"sub-01": 3, "sub-02": 4}, loss="correlation")

    def refuse(*args, **kwargs):
        raise BackboneCalled("backbone ran before input validation")

    monkeypatch.setattr(model.wav2vec2, "forward", refuse)
    return model


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("short_audio", r"7999 samples \(0\.4999 s\) long; expected at least one TR: 8000 samples"),
        ("short_padded", r"example 1 is 4000 samples \(0\.2500 s\)"),
        ("labels_voxels", r"labels of shape \(2, 3\) .* expected \(2, 4\)"),
        ("labels_rank", r"labels of shape \(2, 4, 1\)"),
        ("labels_too_wide", r"labels of shape \(2, 5\) .* padded up to \(2, 4\)"),
        ("labels_small_subject", r"labels of shape \(2, 2\) .* expected \(2, 3\)"),
        ("unknown_subject", r"unknown subject_ids \[2\]: expected indices 0\.\.1"),
        ("negative_subject", r"unknown subject_ids \[-1\]"),
        ("missing_subjects", "subject_ids \\[batch\\] is required"),
        ("float_subjects", "subject_ids must be an integer tensor"),
        ("nan_labels", "labels contain 1 NaN/inf values, first at example 1, voxel 2"),
        ("inf_labels", "labels contain 2 NaN/inf"),
        ("audio_rank", r"input_values must be a float tensor \[batch, samples\]"),
        ("audio_int", "input_values must be a float tensor"),
        ("mask_shape", "attention_mask of shape"),
        ("mask_not_prefix", "1 on a prefix of each row"),
        ("one_example_correlation", "needs at least 2 examples of one subject"),
    ],
)
def test_bad_input_raises_before_computation(guarded_model, case, message):
    values, subjects = audio(2), torch.tensor([1, 1])
    labels = torch.randn(2, 4)
    kwargs: dict = {}
    if case == "short_audio":
        values = audio(2, 7999)
    elif case == "short_padded":
        kwargs["attention_mask"] = torch.arange(WINDOW)[None, :] < torch.tensor([[WINDOW], [4000]])
    elif case == "labels_voxels":
        labels = labels[:, :3]
    elif case == "labels_rank":
        labels = labels[..., None]
    elif case == "labels_too_wide":
        labels = torch.randn(2, 5)
    elif case == "labels_small_subject":
        subjects, labels = torch.tensor([0, 0]), labels[:, :2]
    elif case == "unknown_subject":
        subjects = torch.tensor([1, 2])
    elif case == "negative_subject":
        subjects = torch.tensor([-1, 0])
    elif case == "missing_subjects":
        subjects = None
    elif case == "float_subjects":
        subjects = subjects.float()
    elif case == "nan_labels":
        labels[1, 2] = float("nan")
    elif case == "inf_labels":
        labels[0, 0], labels[1, 3] = float("inf"), -float("inf")
    elif case == "audio_rank":
        values = values[0]
    elif case == "audio_int":
        values = (values * 100).long()
    elif case == "mask_shape":
        kwargs["attention_mask"] = torch.ones(2, WINDOW - 1)
    elif case == "mask_not_prefix":
        mask = torch.ones(2, WINDOW)
        mask[0, 100] = 0
        kwargs["attention_mask"] = mask
    elif case == "one_example_correlation":
        values, subjects, labels = values[:2], torch.tensor([0, 1]), labels
    with pytest.raises(ValueError, match=message):
        guarded_model(values, labels=labels, subject_ids=subjects, **kwargs)


def test_nan_beyond_a_subjects_voxels_is_allowed(guarded_model):
    subjects = torch.tensor([0, 1, 0, 1])
    labels = torch.randn(4, 4)
    labels[subjects == 0, 3] = float("nan")  # subject 0 has 3 voxels: column 3 is padding
    with pytest.raises(BackboneCalled):
        guarded_model(audio(4), labels=labels, subject_ids=subjects)
