"""Low-rank readout (``readout_rank``): structure, equivalence to a full readout, training, save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

RATE = 16000
FAST = {"tr": 0.5, "history_trs": 3, "head_hidden_size": 8}
SUBJECTS = {"sub-01": 5, "sub-02": 9}


def make_model(tiny_kwargs: dict, seed: int = 0, **overrides) -> Wav2Vec2ForBrainEncoding:
    torch.manual_seed(seed)
    kwargs = {**tiny_kwargs, **FAST, "subject_voxels": SUBJECTS, **overrides}
    return Wav2Vec2ForBrainEncoding(Wav2Vec2BrainEncodingConfig(**kwargs)).eval()


def audio(batch: int) -> torch.Tensor:
    return torch.randn(batch, int(1.5 * RATE), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["conv", "linear", "mean"])
def test_structure_and_parameter_count(tiny_kwargs, head):
    model = make_model(tiny_kwargs, head=head, readout_rank=4)
    features = model.config.head_features
    assert model.head.low_rank.weight.shape == (4, features)
    assert model.head.low_rank.bias is None
    assert [tuple(r.weight.shape) for r in model.head.readouts] == [(5, 4), (9, 4)]
    readout_params = sum(p.numel() for n, p in model.head.named_parameters() if "body" not in n)
    assert readout_params == features * 4 + (4 * 5 + 5) + (4 * 9 + 9)
    full = make_model(tiny_kwargs, head=head)
    assert full.head.low_rank is None
    assert [tuple(r.weight.shape) for r in full.head.readouts] == [(5, features), (9, features)]


def test_low_rank_equals_the_full_readout_of_the_product(tiny_kwargs):
    low = make_model(tiny_kwargs, readout_rank=3)
    full = make_model(tiny_kwargs)
    shared = {k: v for k, v in low.state_dict().items() if not k.startswith("head.readouts.")}
    full.load_state_dict(shared, strict=False)  # same backbone, layer weights and body
    with torch.no_grad():
        for ours, theirs in zip(low.head.readouts, full.head.readouts, strict=True):
            theirs.weight.copy_(ours.weight @ low.head.low_rank.weight)
            theirs.bias.copy_(ours.bias)
    values, ids = audio(4), torch.tensor([0, 1, 1, 0])
    expected = full(values, subject_ids=ids).predictions
    torch.testing.assert_close(low(values, subject_ids=ids).predictions, expected)
    # negative control: another shared projection gives other predictions
    with torch.no_grad():
        low.head.low_rank.weight.mul_(1.5)
    assert not torch.allclose(low(values, subject_ids=ids).predictions, expected)


def test_training_reaches_the_shared_projection_and_head_l2_covers_it(tiny_kwargs):
    model = make_model(tiny_kwargs, readout_rank=3, head_l2=0.0).train()
    values, ids = audio(4), torch.tensor([0, 1, 1, 0])
    labels = torch.randn(4, 9)
    output = model(values, subject_ids=ids, labels=labels)
    output.loss.backward()
    assert model.head.low_rank.weight.grad.abs().sum() > 0
    assert all(r.weight.grad.abs().sum() > 0 for r in model.head.readouts)
    penalised = make_model(tiny_kwargs, readout_rank=3, head_l2=0.01).train()
    squares = sum((w**2).sum() for w in penalised.head.weight_matrices())
    low_rank_square = (penalised.head.low_rank.weight**2).sum()
    assert any(w is penalised.head.low_rank.weight for w in penalised.head.weight_matrices())
    torch.testing.assert_close(
        penalised(values, subject_ids=ids, labels=labels).loss,
        output.loss + 0.01 * squares,
        rtol=1e-5,
        atol=1e-6,
    )
    assert low_rank_square > 0


def test_save_and_load_round_trip(tiny_kwargs, tmp_path):
    model = make_model(tiny_kwargs, readout_rank=3)
    values, ids = audio(2), torch.tensor([1, 0])
    before = model(values, subject_ids=ids).predictions
    model.save_pretrained(tmp_path / "brain")
    reloaded = AutoModel.from_pretrained(tmp_path / "brain")
    assert reloaded.config.readout_rank == 3
    assert "head.low_rank.weight" in reloaded.state_dict()
    torch.testing.assert_close(reloaded(values, subject_ids=ids).predictions, before)
    # negative control: the checkpoint does not load into a full-readout model
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        Wav2Vec2ForBrainEncoding.from_pretrained(tmp_path / "brain", readout_rank=None)
